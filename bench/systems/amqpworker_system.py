"""amqpworker, measured through its public API and its real ``amqpworker serve`` worker.

Per repeat and per pool (threads, asyncio), on a fresh queue and with no worker running:

1. fill: a start marker, N ``noop`` tasks and an end marker. For the first pool the N
   no-ops are sequential ``noop.delay()`` calls from this thread (the sync API), timed:
   that is ``enqueue_rate``. For the others they are published with the async API, 500
   in flight (``enqueue_async_rate``), which is only there to fill the queue quickly.
2. drain: start ONE ``amqpworker serve`` process on that queue. The markers write
   ``time.time()`` inside the worker, so ``drain_rate = N / (end - start)`` excludes
   start-up. Then ``rss_mb`` is read from /proc/<pid>/status.
3. round trip: against that same (now idle) worker, R sequential
   ``add.delay(1, 2).get(timeout=...)`` calls after a warm-up; p50 and p99.
4. SIGTERM the worker and delete the queue and its ``.dlq``.

Then once more per pool, on a fresh queue: the N no-ops in one ``app.send_many(...)``
call (``enqueue_bulk_rate``, the first pool's fill), drained by TWO ``amqpworker serve``
processes (``drain_rate[threads x2]``, ``drain_rate[asyncio x2]``), timed from the moment
both consume (see ``drained_rate`` in bench/common.py); RSS and CPU are the two
processes' sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amqpworker.delay import landing_queue

from ..common import (
    BenchError,
    Config,
    Watchdog,
    broker_cpu_seconds,
    check_filled,
    cpu_seconds,
    delete_queues,
    drain_metrics,
    drained_rate,
    log_tail,
    new_queue,
    percentile,
    remember_queues,
    rss_kib,
    start_process,
    stop_process,
    tree_cpu_seconds,
    wait_consumers,
    wait_for_file,
)

ASYNC_IN_FLIGHT = 500
STOPPED_LINE = re.compile(r"\bstopped\b.*")
COUNTER = re.compile(r"\b(received|succeeded|failed|dead_lettered|requeued)=(\d+)")


def _new_queue(config: Config, label: str) -> str:
    """A fresh queue; the landing queue ``amqpworker serve`` declares for it (the last hop
    of a delay, see amqpworker/delay.py) is deleted with it."""
    queue = new_queue(config, label)
    remember_queues(landing_queue("", queue))
    return queue


def _check_counts(logs: list[Path], expected: int) -> None:
    """Each worker's last log line counts what it did: every task must have succeeded once
    (summed over the workers)."""
    counts: dict[str, int] = {}
    for log in logs:
        lines = STOPPED_LINE.findall(log.read_text(errors="replace"))
        if not lines:
            print(f"warning: no 'stopped' line in {log}; task counts not checked", file=sys.stderr)
            return
        for key, value in COUNTER.findall(lines[-1]):
            counts[key] = counts.get(key, 0) + int(value)
    wanted = {"received": expected, "succeeded": expected, "failed": 0, "dead_lettered": 0}
    wrong = {key: counts.get(key) for key, value in wanted.items() if counts.get(key) != value}
    if wrong:
        tails = "\n".join(log_tail(log) for log in logs)
        raise BenchError(f"worker counts {counts} differ from {wanted}\n{tails}")


class AmqpWorkerSystem:
    name = "amqpworker"
    description = "amqpworker: sync delay(), amqpworker serve (threads/asyncio pool), RPC results"

    def __init__(self) -> None:
        from ..apps import amqpworker_app

        self.module = amqpworker_app
        self.app = amqpworker_app.app
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-amqpworker-"))
        found = shutil.which("amqpworker", path=str(Path(sys.executable).parent))
        self.command = (
            [found] if found else [sys.executable, "-c", "from amqpworker.cli import main; main()"]
        )
        self.pyspy_dir = os.environ.get("BENCH_PYSPY")
        self.profiles: list[str] = []

    def close(self) -> None:
        self.app.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # One repeat.

    def measure(self, config: Config, watchdog: Watchdog) -> dict[str, float]:
        self.app.conf.broker_url = [config.url]
        metrics: dict[str, float] = {}
        for index, pool in enumerate(config.pools):
            queue = _new_queue(config, f"aw-{pool}")
            start_file = self.tmp / f"{queue}.start"
            end_file = self.tmp / f"{queue}.end"
            try:
                if index == 0:
                    with watchdog.step(
                        f"amqpworker: {config.n} x noop.delay()", config.step_timeout
                    ):
                        metrics["enqueue_rate"] = self._fill_sync(
                            queue, config.n, start_file, end_file
                        )
                else:
                    with watchdog.step(
                        f"amqpworker: async fill of {config.n}", config.step_timeout
                    ):
                        metrics["enqueue_async_rate"] = self._fill_async(
                            queue, config.n, start_file, end_file, config.step_timeout
                        )
                with watchdog.step(
                    f"amqpworker: drain + round trips ({pool} pool)", 3 * config.step_timeout
                ):
                    metrics.update(
                        self._drain_and_round_trip(config, queue, pool, start_file, end_file)
                    )
            finally:
                delete_queues(config.url, [queue, landing_queue("", queue)])
        for index, pool in enumerate(config.pools):
            queue = _new_queue(config, f"aw-{pool}x2")
            start_file = self.tmp / f"{queue}.start"
            end_file = self.tmp / f"{queue}.end"
            try:
                with watchdog.step(f"amqpworker: send_many of {config.n}", config.step_timeout):
                    rate = self._fill_bulk(queue, config.n, start_file, end_file)
                if index == 0:
                    metrics["enqueue_bulk_rate"] = rate
                with watchdog.step(f"amqpworker: drain ({pool} x2)", 3 * config.step_timeout):
                    metrics.update(self._drain_two(config, queue, pool, start_file, end_file))
            finally:
                delete_queues(config.url, [queue, landing_queue("", queue)])
        queue = _new_queue(config, "aw-group")
        try:
            with watchdog.step(f"amqpworker: group of {config.n}", config.step_timeout):
                metrics["enqueue_group_rate"] = self._fill_group(queue, config.n)
                check_filled(config.url, queue, config.n + 1, "amqpworker group")
        finally:
            delete_queues(config.url, [queue, landing_queue("", queue)])
        return metrics

    # Filling the queue.

    def _fill_sync(self, queue: str, n: int, start_file: Path, end_file: Path) -> float:
        noop, mark = self.module.noop, self.module.mark
        self.app.conf.task_default_queue = queue
        mark.delay(str(start_file))
        began = time.perf_counter()
        for _ in range(n):
            noop.delay()
        elapsed = time.perf_counter() - began
        mark.delay(str(end_file))
        return n / elapsed

    def _fill_bulk(self, queue: str, n: int, start_file: Path, end_file: Path) -> float:
        noop, mark = self.module.noop, self.module.mark
        self.app.conf.task_default_queue = queue
        mark.delay(str(start_file))
        began = time.perf_counter()
        self.app.send_many([(noop, ())] * n)
        elapsed = time.perf_counter() - began
        mark.delay(str(end_file))
        return n / elapsed

    def _fill_group(self, queue: str, n: int) -> float:
        """``group(noop.s() x N).apply_async()``: informational (not drained)."""
        from amqpworker import group

        noop = self.module.noop
        self.app.conf.task_default_queue = queue
        noop.delay()  # opens the connection and declares the queue, untimed
        began = time.perf_counter()
        group(noop.s() for _ in range(n)).apply_async()
        elapsed = time.perf_counter() - began
        return n / elapsed

    def _fill_async(
        self, queue: str, n: int, start_file: Path, end_file: Path, timeout: float
    ) -> float:
        noop, mark = self.module.noop, self.module.mark
        self.app.conf.task_default_queue = queue

        async def fill() -> float:
            try:
                await mark.adelay(str(start_file))
                began = time.perf_counter()
                for offset in range(0, n, ASYNC_IN_FLIGHT):
                    batch = min(ASYNC_IN_FLIGHT, n - offset)
                    await asyncio.gather(*(noop.adelay() for _ in range(batch)))
                elapsed = time.perf_counter() - began
                await mark.adelay(str(end_file))
                return n / elapsed
            finally:
                await self.app.aclose()

        async def bounded() -> float:
            return await asyncio.wait_for(fill(), timeout)

        return asyncio.run(bounded())

    # The worker.

    def _serve(self, config: Config, queue: str, pool: str, log: Path) -> subprocess.Popen[bytes]:
        args = [
            *self.command, "serve",
            "-A", "bench.apps.amqpworker_app",
            "--queues", queue,
            "--concurrency", str(config.concurrency),
            "--prefetch-multiplier", str(config.prefetch_multiplier),
            "--pool", pool,
        ]  # fmt: skip
        env = {**os.environ, "BENCH_URL": config.url}
        return start_process(args, log, env=env)

    def _drain_two(
        self, config: Config, queue: str, pool: str, start_file: Path, end_file: Path
    ) -> dict[str, float]:
        variant = f"{pool} x2"
        logs = [self.tmp / f"{queue}.{index}.log" for index in (1, 2)]
        procs = [self._serve(config, queue, pool, log) for log in logs]
        pids = [proc.pid for proc in procs]
        metrics: dict[str, float] = {}
        what = f"amqpworker {variant} drain of {config.n}"
        try:
            t0, ready = wait_consumers(config.url, queue, 2, config.step_timeout, procs)
            cpu_start, broker_start = tree_cpu_seconds(pids), broker_cpu_seconds()
            start = float(wait_for_file(start_file, config.step_timeout, procs[0], logs[0], what))
            end = float(wait_for_file(end_file, config.step_timeout, procs[0], logs[0], what))
            cpu_end, broker_end = tree_cpu_seconds(pids), broker_cpu_seconds()
            if end <= start:
                raise BenchError(f"{what}: end marker {end} is not after start {start}")
            rate, since = drained_rate(config, t0, ready, start, end, what)
            metrics.update(
                drain_metrics(
                    variant,
                    rate,
                    end - since,
                    (cpu_start, cpu_end),
                    (broker_start, broker_end),
                    pids,
                )
            )
        finally:
            codes = [stop_process(proc) for proc in procs]
        for code, log in zip(codes, logs, strict=True):
            if code != 0:
                print(f"warning: worker exited with {code}\n{log_tail(log)}", file=sys.stderr)
        _check_counts(logs, config.n + 2)
        return metrics

    def _drain_and_round_trip(
        self, config: Config, queue: str, pool: str, start_file: Path, end_file: Path
    ) -> dict[str, float]:
        log = self.tmp / f"{queue}.log"
        proc = self._serve(config, queue, pool, log)
        profiler = self._start_profiler(proc.pid, pool, queue)
        metrics: dict[str, float] = {}
        try:
            what = f"amqpworker {pool} drain of {config.n}"
            start = float(wait_for_file(start_file, config.step_timeout, proc, log, what))
            cpu_start, broker_start = cpu_seconds(proc.pid), broker_cpu_seconds()
            end = float(wait_for_file(end_file, config.step_timeout, proc, log, what))
            cpu_end, broker_end = cpu_seconds(proc.pid), broker_cpu_seconds()
            if end <= start:
                raise BenchError(f"{what}: end marker {end} is not after start {start}")
            metrics[f"drain_rate[{pool}]"] = config.n / (end - start)
            metrics[f"cpu_us_per_msg[{pool}]"] = 1e6 * (cpu_end - cpu_start) / config.n
            metrics[f"cpu_pct[{pool}]"] = 100 * (cpu_end - cpu_start) / (end - start)
            if broker_start is not None and broker_end is not None:
                metrics[f"broker_cpu_us_per_msg[{pool}]"] = (
                    1e6 * (broker_end - broker_start) / config.n
                )
            rss, _peak = rss_kib(proc.pid)
            metrics[f"rss_mb[{pool}]"] = rss / 1024
            latencies = self._round_trips(config, queue, proc, log)
            metrics[f"rt_p50_ms[{pool}]"] = percentile(latencies, 50) * 1000
            metrics[f"rt_p99_ms[{pool}]"] = percentile(latencies, 99) * 1000
        finally:
            code = stop_process(proc)
            self._stop_profiler(profiler)
        if code != 0:
            print(f"warning: worker exited with {code}\n{log_tail(log)}", file=sys.stderr)
        _check_counts([log], config.n + 2 + config.warmup + config.rt)
        return metrics

    def _round_trips(
        self, config: Config, queue: str, proc: subprocess.Popen[bytes], log: Path
    ) -> list[float]:
        add = self.module.add
        self.app.conf.task_default_queue = queue
        latencies: list[float] = []
        for index in range(config.warmup + config.rt):
            began = time.perf_counter()
            try:
                value = add.delay(1, 2).get(timeout=config.rt_timeout)
            except Exception as exc:
                alive = "alive" if proc.poll() is None else f"exited {proc.returncode}"
                raise BenchError(
                    f"amqpworker round trip {index} failed ({exc!r}); worker {alive}\n"
                    f"{log_tail(log)}"
                ) from exc
            elapsed = time.perf_counter() - began
            if value != 3:
                raise BenchError(f"amqpworker round trip returned {value!r}, not 3")
            if index >= config.warmup:
                latencies.append(elapsed)
        return latencies

    # Optional profiling (BENCH_PYSPY=<dir>): not for the numbers in the table.

    def _start_profiler(self, pid: int, pool: str, queue: str) -> subprocess.Popen[bytes] | None:
        if not self.pyspy_dir:
            return None
        pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        out = Path(self.pyspy_dir)
        out.mkdir(parents=True, exist_ok=True)
        kind = os.environ.get("BENCH_PYSPY_FORMAT", "raw")
        suffix = {"raw": "txt", "flamegraph": "svg", "speedscope": "json"}.get(kind, kind)
        output = out / f"drain-{pool}-{queue}.{suffix}"
        self.profiles.append(str(output))
        command = [pyspy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
        command += ["--format", kind, "--output", str(output)]
        command += os.environ.get("BENCH_PYSPY_ARGS", "").split()
        return start_process(command, out / f"{output.name}.log")

    def _stop_profiler(self, profiler: subprocess.Popen[bytes] | None) -> None:
        if profiler is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            profiler.wait(30)  # py-spy ends when the worker does, and writes its file
        stop_process(profiler, grace=10)
