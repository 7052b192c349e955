"""Rate limits on running workers: per task name, never in the way of other tasks.

Every worker here has a name of its own, and every control command names it.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

from amqpworker import App

from .conftest import run_cli, wait_for

P = "tests.integration.sample_app."


def _name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"


def test_rate_limit_set_at_run_time_holds_and_other_tasks_pass(app: App, serve) -> None:
    name = _name("limited")
    serve("-n", name, "--concurrency", "4").wait_consuming()  # prefetch 16
    [reply] = app.control.rate_limit(P + "clock", "10/s", destination=[name], reply=True) or [{}]
    assert reply[name] == {"ok": f"new rate limit of {P + 'clock'!r} set successfully: 10/s"}

    limited = app.send_many([(P + "clock", ()) for _ in range(50)])
    started = time.monotonic()
    others = app.send_many([(P + "label", (f"other{i}",)) for i in range(50)])
    assert [result.get(timeout=10) for result in others] == [f"other{i}" for i in range(50)]
    others_took = time.monotonic() - started
    runs = sorted(result.get(timeout=30) for result in limited)
    limited_took = runs[-1] - runs[0]

    print(f"\n50 limited at 10/s: {limited_took:.2f}s; 50 others behind them: {others_took:.2f}s")
    assert limited_took >= 4.5
    assert others_took < 2.0


def test_a_decorated_rate_limit_applies_and_the_task_is_reserved_meanwhile(
    app: App, start_worker
) -> None:
    @app.task(name="limits.stamp", rate_limit="300/m")  # 5/s
    def stamp() -> float:
        return time.time()

    running = start_worker(app, concurrency=4)  # prefetch 16: up to 8 wait in memory
    results = app.send_many([(stamp, ()) for _ in range(20)])
    assert running.worker.rate_limits is not None
    wait_for(lambda: bool(running.worker.reserved_jobs()), 10, "a task waiting for its token")
    reserved = app.control.inspect(destination=[running.worker.hostname], timeout=5).reserved()
    assert reserved is not None
    assert {job["name"] for job in reserved[running.worker.hostname]} == {"limits.stamp"}

    runs = sorted(result.get(timeout=30) for result in results)
    assert runs[-1] - runs[0] >= 19 * 0.2 - 0.1  # 20 at 5/s
    assert app.send_task(P + "add", (1, 2)).get(timeout=10) == 3


def test_disabled_rate_limits_are_not_applied_nor_settable(app: App, start_worker) -> None:
    app.conf.worker_disable_rate_limits = True

    @app.task(name="limits.rare", rate_limit="1/h")
    def rare(i: int) -> int:
        return i

    running = start_worker(app)
    assert running.worker.rate_limits is None
    # With the limit applied, the second would wait an hour.
    assert [result.get(timeout=10) for result in app.send_many([(rare, (i,)) for i in range(5)])]
    [reply] = app.control.rate_limit(
        "limits.rare", "1/s", destination=[running.worker.hostname], reply=True, timeout=5
    ) or [{}]
    assert reply[running.worker.hostname] == {
        "error": "rate limits are disabled on this worker (worker_disable_rate_limits)"
    }


def test_bad_rate_limit_commands_get_an_error_and_the_worker_keeps_serving(
    app: App, serve, broker_url: str
) -> None:
    name = _name("strict")
    worker = serve("-n", name).wait_consuming()
    control = app.control
    [bad] = control.broadcast(
        "rate_limit",
        {"task_name": P + "add", "rate_limit": "ten per minute"},
        destination=[name],
        reply=True,
        timeout=5,
    ) or [{}]
    assert "'ten per minute' is not a rate limit" in bad[name]["error"]
    [unknown] = control.broadcast(
        "rate_limit",
        {"task_name": "no.such.task", "rate_limit": "1/s"},
        destination=[name],
        reply=True,
        timeout=5,
    ) or [{}]
    assert unknown[name] == {"error": "unknown task 'no.such.task'"}

    cli_bad = run_cli("control", "rate_limit", P + "add", "5/d", "--broker", broker_url, "-d", name)
    assert cli_bad.returncode == 1
    assert "'5/d' is not a rate limit" in cli_bad.stdout
    cli_ok = run_cli(
        "control", "rate_limit", P + "add", "100/m", "--broker", broker_url, "-d", name
    )
    assert cli_ok.returncode == 0, cli_ok.stdout + cli_ok.stderr
    assert "set successfully: 100/m" in cli_ok.stdout
    removed = run_cli("control", "rate_limit", P + "add", "0", "--broker", broker_url, "-d", name)
    assert "disabled successfully" in removed.stdout

    assert app.send_task(P + "add", (2, 2)).get(timeout=10) == 4
    assert worker.output.count("rate_limit refused") == 2
    assert worker.output.count("rate_limit for an unknown task") == 1


def test_a_graceful_stop_while_tasks_wait_loses_none(
    app: App, start_worker, tmp_path: Path
) -> None:
    task = app.get_task(P + "sleep_then_return")
    assert task is not None
    task.rate_limit = "2/s"
    first = start_worker(app, concurrency=4)
    results = [
        app.send_task(P + "sleep_then_return", (str(tmp_path), f"job{i}", 0)) for i in range(10)
    ]
    # One runs at once; 0.5 s and 1 s waits are held in memory, the rest are sent back.
    wait_for(lambda: bool(first.worker.rate_limits.holding), 10, "tasks held for their token")  # type: ignore[union-attr]
    first.stop()

    task.rate_limit = None
    start_worker(app, concurrency=4)
    assert [result.get(timeout=30) for result in results] == [f"job{i}" for i in range(10)]
    for i in range(10):
        assert len(list(tmp_path.glob(f"job{i}.run*"))) == 1, f"job{i} ran once"
