"""Tasks the integration tests run, in-process and under `amqpworker serve`.

`create_app()` builds a fresh App (the tests give each one its own queue); the
module-level `app` is what `amqpworker serve -A tests.integration.sample_app` finds, and
it takes its broker and queue from AMQPWORKER_* environment variables.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from amqpworker import App, Task
from amqpworker.exceptions import SoftTimeLimitExceeded


class CustomError(Exception):
    """An importable exception: the caller gets this very type back."""


class Recorder(Task):
    """A base class whose hooks leave a trace the test can read."""

    def after_return(self, status, retval, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        marker = kwargs.get("marker")
        if marker:
            Path(marker).with_suffix(".after_return").write_text(status)


class FailureRecorder(Task):
    """Writes `<marker>.on_failure` with the exception's type when the task fails."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        marker = kwargs.get("marker")
        if marker:
            Path(marker).with_suffix(".on_failure").write_text(type(exc).__name__)


def _touch_run(marker_dir: str, name: str) -> int:
    """Record one run in marker_dir; returns how many runs there have been."""
    folder = Path(marker_dir)
    runs = len(list(folder.glob(f"{name}.run*"))) + 1
    (folder / f"{name}.run{runs}").write_text(str(os.getpid()))
    return runs


def create_app(**settings: Any) -> App:
    app = App("sample", **settings)

    @app.task
    def add(x, y):  # type: ignore[no-untyped-def]
        return x + y

    @app.task
    def div(x, y):  # type: ignore[no-untyped-def]
        return x / y

    @app.task
    def raise_custom(message):  # type: ignore[no-untyped-def]
        raise CustomError(message)

    class LocalError(Exception):
        pass

    @app.task
    def raise_local():  # type: ignore[no-untyped-def]
        raise LocalError("cannot be imported by the caller")

    @app.task(bind=True)
    def progress(self, steps):  # type: ignore[no-untyped-def]
        for step in range(1, steps + 1):
            self.update_state(state="PROGRESS", meta={"step": step, "of": steps})
        return steps

    @app.task(bind=True)
    async def aprogress(self, steps):  # type: ignore[no-untyped-def]
        for step in range(1, steps + 1):
            self.update_state(state="PROGRESS", meta={"step": step})
            await asyncio.sleep(0)
        return steps

    @app.task(track_started=True)
    def tracked():  # type: ignore[no-untyped-def]
        return "done"

    @app.task(bind=True)
    def whoami(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        request = self.request
        return {
            "id": request.id,
            "args": list(request.args),
            "kwargs": dict(request.kwargs),
            "retries": request.retries,
            "queue": request.delivery_info.get("queue"),
            "headers": dict(request.headers),
            "thread": threading.current_thread().name,
            "parent_id": request.parent_id,
            "root_id": request.root_id,
        }

    @app.task
    async def ahello(name):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.01)
        return f"hello {name}"

    @app.task(ignore_result=True)
    def touch(path):  # type: ignore[no-untyped-def]
        Path(path).write_text("ran")

    @app.task(base=Recorder)
    def recorded(value, marker=None):  # type: ignore[no-untyped-def]
        return value * 2

    @app.task
    def record_and_wait(marker_dir, name, release_after=None):  # type: ignore[no-untyped-def]
        """Leave a run marker, then wait until the test drops `<name>.release` (bounded)."""
        runs = _touch_run(marker_dir, name)
        release = Path(marker_dir) / f"{name}.release"
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            if release_after is not None and runs >= release_after:
                break
            time.sleep(0.02)
        return runs

    @app.task
    def sleep_then_return(marker_dir, name, seconds):  # type: ignore[no-untyped-def]
        _touch_run(marker_dir, name)
        time.sleep(seconds)
        return name

    @app.task
    def label(name):  # type: ignore[no-untyped-def]
        return name

    @app.task
    def clock():  # type: ignore[no-untyped-def]
        """When the task ran, by the worker's clock."""
        return time.time()

    @app.task(bind=True, retry_backoff=0.2, autoretry_for=(ConnectionError,), max_retries=5)
    def flaky(self, failures):  # type: ignore[no-untyped-def]
        """Fails `failures` times with ConnectionError, then succeeds."""
        if self.request.retries < failures:
            raise ConnectionError(f"attempt {self.request.retries + 1} failed")
        return self.request.retries

    @app.task(bind=True, max_retries=2)
    def always_retry(self):  # type: ignore[no-untyped-def]
        raise self.retry(countdown=0.2)

    @app.task
    def crash_unless(path):  # type: ignore[no-untyped-def]
        """Kill the worker process unless `path` exists (the bug is "fixed" by creating it)."""
        if not Path(path).exists():
            os._exit(1)
        return "ran"

    @app.task
    def tsum(values):  # type: ignore[no-untyped-def]
        return sum(values)

    @app.task
    def flatten(parts):  # type: ignore[no-untyped-def]
        return [value for part in parts for value in part]

    @app.task
    def echo(*args):  # type: ignore[no-untyped-def]
        return list(args)

    @app.task
    def slow_add(x, y, seconds=0.01):  # type: ignore[no-untyped-def]
        time.sleep(seconds)
        return x + y

    @app.task
    def sum_once(values, marker):  # type: ignore[no-untyped-def]
        """A chord body that leaves one line per run in `marker`."""
        with open(marker, "a") as runs:
            runs.write(f"{os.getpid()}\n")
        return sum(values)

    @app.task
    def record_error(request, exc, traceback, marker):  # type: ignore[no-untyped-def]
        """An errback: (request, exc, traceback) from the failed task, then its own args."""
        Path(marker).write_text(f"{request.id} {type(exc).__name__}: {exc}")

    @app.task
    def busy(marker_dir, name, seconds):  # type: ignore[no-untyped-def]
        """Python work for `seconds` (short sleeps), so a raised exception lands soon."""
        _touch_run(marker_dir, name)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return name

    @app.task
    async def abusy(marker_dir, name, seconds):  # type: ignore[no-untyped-def]
        _touch_run(marker_dir, name)
        await asyncio.sleep(seconds)
        return name

    @app.task
    def nap(seconds, step=None):  # type: ignore[no-untyped-def]
        """Sleep `seconds` (in `step`s if given); a soft time limit ends it early."""
        started = time.monotonic()
        try:
            if step is None:
                time.sleep(seconds)
            else:
                while time.monotonic() - started < seconds:
                    time.sleep(step)
        except SoftTimeLimitExceeded:
            return {"cleaned_up_after": time.monotonic() - started, "pid": os.getpid()}
        return {"cleaned_up_after": None, "pid": os.getpid()}

    @app.task
    async def anap(seconds):  # type: ignore[no-untyped-def]
        started = time.monotonic()
        try:
            await asyncio.sleep(seconds)
        except SoftTimeLimitExceeded:
            return {"cleaned_up_after": time.monotonic() - started, "pid": os.getpid()}
        return {"cleaned_up_after": None, "pid": os.getpid()}

    @app.task(base=FailureRecorder)
    def stuck(marker_dir, name, seconds, marker=None):  # type: ignore[no-untyped-def]
        """One long C call (time.sleep): nothing in the thread can interrupt it."""
        _touch_run(marker_dir, name)
        time.sleep(seconds)
        return name

    @app.task(base=FailureRecorder)
    async def astuck(marker_dir, name, seconds, marker=None):  # type: ignore[no-untyped-def]
        _touch_run(marker_dir, name)
        await asyncio.sleep(seconds)
        return name

    @app.task
    def pid():  # type: ignore[no-untyped-def]
        return os.getpid()

    @app.task
    def spin(seconds):  # type: ignore[no-untyped-def]
        """CPU-bound for `seconds` of this process's CPU time; returns the pid it ran in."""
        until = time.process_time() + seconds
        while time.process_time() < until:
            pass
        return os.getpid()

    @app.task
    def spin_timed(seconds):  # type: ignore[no-untyped-def]
        """`spin`, returning its pid and when it started and ended (wall clock)."""
        started = time.time()
        until = time.process_time() + seconds
        while time.process_time() < until:
            pass
        return [os.getpid(), started, time.time()]

    @app.task
    def exit_now(code=1):  # type: ignore[no-untyped-def]
        os._exit(code)

    @app.task
    def exit_first_time(marker_dir):  # type: ignore[no-untyped-def]
        """Kill its process on the first run (leaving a marker); return on the next."""
        if _touch_run(marker_dir, "exit_first_time") == 1:
            os._exit(1)
        return "ran again"

    #: Memory a child keeps between tasks (grown by `grow`), so its size only goes up.
    hoard: list[bytes] = []

    @app.task
    def grow(kib):  # type: ignore[no-untyped-def]
        hoard.append(os.urandom(1024) * kib)
        return os.getpid()

    return app


app = create_app()
