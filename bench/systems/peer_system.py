"""What Celery, Dramatiq and Taskiq share: a caller and a worker in the peers' venv.

The harness process only orchestrates and measures from outside; each library's own code
runs in its own processes under the peers' interpreter (bench/peers.py):

- the caller is ``<peers' python> -m bench.drivers.<name>_driver OP`` (see
  bench/drivers/_cli.py); it times the library's own API calls itself and writes the
  elapsed time (or the round-trip latencies) to a JSON file;
- the worker is the library's own CLI, started like amqpworker's: after the queue was
  filled, with nobody consuming.

One repeat is a list of :class:`Step`: fill a fresh queue (that is an enqueue metric),
then optionally drain it with one worker command and, while that worker is up and idle,
time round trips. A one-process drain is timed by the marker tasks, which write
``time.time()`` inside the worker; a multi-process drain starts its clock when every
process consumes (see :meth:`PeerSystem._drain`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common import (
    BenchError,
    Config,
    Watchdog,
    broker_cpu_seconds,
    check_filled,
    delete_queues,
    drain_metrics,
    drained_rate,
    log_tail,
    new_queue,
    percentile,
    queue_state,
    remember_exchange,
    remember_queues,
    start_process,
    stop_process,
    tree_cpu_seconds,
    wait_consumers,
    wait_for_file,
)
from ..peers import peer_python


@dataclass(frozen=True)
class Step:
    """Fill a fresh queue with ``fill_op``, report it as ``fill_metric``, maybe drain it."""

    fill_op: str
    fill_metric: str
    variant: str | None = None  # drain with this variant name; None: no drain
    processes: int = 1
    round_trips: bool = False
    also: str | None = None  # the same number under a second metric name


class PeerSystem:
    """Subclasses set the names and steps and build the worker's command line."""

    name = ""
    description = ""
    label = ""  # short, for queue names
    driver = ""  # module under bench.drivers
    steps: tuple[Step, ...] = ()
    consumers_per_process = 1
    notes: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.python = peer_python()

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # Per library.

    def worker_command(self, config: Config, queue: str, processes: int) -> list[str]:
        raise NotImplementedError

    def worker_env(self, config: Config) -> dict[str, str]:
        return {}

    def declared(self, queue: str) -> tuple[list[str], list[str]]:
        """Queues (besides ``queue`` and ``queue.dlq``) and exchanges the library declares."""
        return [], []

    # One repeat.

    def env(self, config: Config, queue: str) -> dict[str, str]:
        return {
            **os.environ,
            "BENCH_URL": config.url,
            "BENCH_QUEUE": queue,
            "BENCH_CONCURRENCY": str(config.concurrency),
            "BENCH_PREFETCH_MULTIPLIER": str(config.prefetch_multiplier),
            "BENCH_PREFETCH": str(config.prefetch),
            **self.worker_env(config),
        }

    def measure(self, config: Config, watchdog: Watchdog) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for step in self.steps:
            kind = (step.variant or step.fill_op).replace(" ", "")
            queue = new_queue(config, f"{self.label}-{kind}")
            queues, exchanges = self.declared(queue)
            remember_queues(*queues)
            for exchange in exchanges:
                remember_exchange(exchange)
            start_file = self.tmp / f"{queue}.start"
            end_file = self.tmp / f"{queue}.end"
            try:
                what = f"{self.name}: {step.fill_op} of {config.n}"
                with watchdog.step(what, config.step_timeout + 30):
                    result = self.run_driver(
                        config,
                        queue,
                        step.fill_op,
                        config.step_timeout,
                        "--n", str(config.n),
                        "--start-file", str(start_file),
                        "--end-file", str(end_file),
                    )  # fmt: skip
                    metrics[step.fill_metric] = config.n / result["elapsed"]
                    if step.also:
                        metrics[step.also] = metrics[step.fill_metric]
                    check_filled(config.url, queue, config.n + 2, what)
                if step.variant is not None:
                    what = f"{self.name}: drain ({step.variant})"
                    with watchdog.step(what, 4 * config.step_timeout + 60):
                        metrics.update(self._drain(config, queue, step, start_file, end_file))
            finally:
                delete_queues(config.url, [queue, *queues], exchanges)
        return metrics

    def run_driver(
        self, config: Config, queue: str, op: str, timeout: float, *args: str
    ) -> dict[str, Any]:
        out = self.tmp / f"{queue}.{op}.json"
        log = self.tmp / f"{queue}.{op}.log"
        command = [str(self.python), "-m", f"bench.drivers.{self.driver}", op, "--out", str(out)]
        proc = start_process([*command, *args], log, env=self.env(config, queue))
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"{self.name} {op}: not done within {timeout:.0f}s\n{log_tail(log)}"
            ) from None
        finally:
            stop_process(proc, grace=5)
        if code != 0 or not out.exists():
            raise BenchError(f"{self.name} {op}: exited with {code}\n{log_tail(log)}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result

    def _drain(
        self, config: Config, queue: str, step: Step, start_file: Path, end_file: Path
    ) -> dict[str, float]:
        variant = step.variant
        assert variant is not None, "only drain steps are drained"
        log = self.tmp / f"{queue}.worker.log"
        command = self.worker_command(config, queue, step.processes)
        proc = start_process(command, log, env=self.env(config, queue))
        metrics: dict[str, float] = {}
        what = f"{self.name} {variant} drain of {config.n}"
        try:
            if step.processes > 1:
                consumers = step.processes * self.consumers_per_process
                t0, ready = wait_consumers(
                    config.url, queue, consumers, config.step_timeout, [proc]
                )
                cpu_start, broker_start = tree_cpu_seconds([proc.pid]), broker_cpu_seconds()
                start = float(wait_for_file(start_file, config.step_timeout, proc, log, what))
            else:
                start = float(wait_for_file(start_file, config.step_timeout, proc, log, what))
                cpu_start, broker_start = tree_cpu_seconds([proc.pid]), broker_cpu_seconds()
            end = float(wait_for_file(end_file, config.step_timeout, proc, log, what))
            cpu_end, broker_end = tree_cpu_seconds([proc.pid]), broker_cpu_seconds()
            if end <= start:
                raise BenchError(f"{what}: end marker {end} is not after start {start}")
            if step.processes > 1:
                rate, since = drained_rate(config, t0, ready, start, end, what)
            else:
                rate, since = config.n / (end - start), start
            metrics.update(
                drain_metrics(
                    variant,
                    rate,
                    end - since,
                    (cpu_start, cpu_end),
                    (broker_start, broker_end),
                    [proc.pid],
                )
            )
            if step.round_trips:
                result = self.run_driver(
                    config,
                    queue,
                    "rt",
                    2 * config.step_timeout,
                    "--rt", str(config.rt),
                    "--warmup", str(config.warmup),
                    "--rt-timeout", str(config.rt_timeout),
                )  # fmt: skip
                latencies = result["latencies"]
                if len(latencies) != config.rt:
                    raise BenchError(f"{self.name}: {len(latencies)} round trips, not {config.rt}")
                metrics[f"rt_p50_ms[{variant}]"] = percentile(latencies, 50) * 1000
                metrics[f"rt_p99_ms[{variant}]"] = percentile(latencies, 99) * 1000
        finally:
            code = stop_process(proc)
        if code != 0:
            print(
                f"warning: {self.name} worker exited with {code}\n{log_tail(log)}", file=sys.stderr
            )
        left, _consumers = queue_state(config.url, queue)
        if left:
            raise BenchError(f"{what}: {left} messages left in {queue} after the worker stopped")
        return metrics
