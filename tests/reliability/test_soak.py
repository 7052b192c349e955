"""Soak: 100,000 tasks through one worker and one caller, and neither keeps growing.

Pass figure (from the issue): worker and caller memory growth from 10k to 100k tasks
within 10 MiB. The caller is a subprocess of its own (this test process carries pytest's
baggage), publishing in batches and either reading every result and dropping it
(``get``) or never reading the results of its ``delay()`` calls (``delay``; one
sentinel per batch is read, to keep the backlog bounded). At each checkpoint it collects
garbage, reports its resident set (``VmRSS``) and waits while the test reads the
worker's; the worker is idle then (the caller waited for its batch), so the two figures
are comparable from one checkpoint to the next.

Both must hold: a caller that reads each result and drops it, and a caller that never
reads them, must not keep every result for ``result_expires`` (a day by default).
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ServeProcess

REPO = Path(__file__).resolve().parents[2]
CHAOS = "tests.reliability.chaos_app"
MIB = 1024 * 1024

CALLER = r"""
import gc
import sys
import time

from tests.reliability import chaos_app

broker_url, queue, mode = sys.argv[1], sys.argv[2], sys.argv[3]
total, batch = int(sys.argv[4]), int(sys.argv[5])
checkpoints = {int(n) for n in sys.argv[6].split(",")}
app = chaos_app.app
app.conf.update(broker_url=broker_url, task_default_queue=queue)
add = chaos_app.add


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


done = 0
started = time.monotonic()
while done < total:
    size = min(batch, total - done)
    if mode == "get":
        results = app.send_many([(add, (done + i, 1)) for i in range(size)])
        values = [result.get(timeout=120) for result in results]
        if values != [done + i + 1 for i in range(size)]:
            sys.exit(f"wrong results in the batch from {done}")
        del results, values
    else:
        for i in range(size - 1):
            add.delay(done + i, 1)  # its result is never read
        if add.delay(done + size - 1, 1).get(timeout=120) != done + size:
            sys.exit(f"wrong sentinel result after {done}")
    done += size
    if done in checkpoints:
        gc.collect()
        print(f"checkpoint {done} {rss()} {time.monotonic() - started:.1f}", flush=True)
        if sys.stdin.readline().strip() != "go":
            sys.exit("no go")
app.close()
print("finished", flush=True)
"""


def rss_of(pid: int) -> int:
    """Resident set size of a process, in bytes, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def soak(
    serve: Callable[..., ServeProcess],
    log_dir: Path,
    broker_url: str,
    queue: str,
    mode: str,
    total: int,
    batch: int,
    first: int,
    timeout: float,
) -> dict[int, tuple[int, int]]:
    """Run the caller through ``total`` tasks; {checkpoint: (worker rss, caller rss)}."""
    worker = serve("--concurrency", "4", app_path=CHAOS).wait_consuming()
    command = [sys.executable, "-c", CALLER, broker_url, queue, mode, str(total), str(batch)]
    errors_path = log_dir / "caller.stderr"
    with errors_path.open("w") as errors:
        caller = subprocess.Popen(
            [*command, f"{first},{total}"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    assert caller.stdin is not None
    assert caller.stdout is not None
    deadline = time.monotonic() + timeout
    figures: dict[int, tuple[int, int]] = {}
    try:
        for _ in range(2):
            # One line at a time (the caller waits for "go"), so select sees it.
            readable, _, _ = select.select([caller.stdout], [], [], deadline - time.monotonic())
            assert readable, f"no checkpoint within {timeout}s: {errors_path.read_text()[-3000:]}"
            line = caller.stdout.readline()
            assert line.startswith("checkpoint"), (line, errors_path.read_text()[-3000:])
            _, done, caller_rss, seconds = line.split()
            figures[int(done)] = (rss_of(worker.process.pid), int(caller_rss))
            print(f"  {mode}: {done} tasks after {seconds}s")
            caller.stdin.write("go\n")
            caller.stdin.flush()
        assert caller.wait(30) == 0, errors_path.read_text()[-3000:]
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait(10)
        caller.stdout.close()
        caller.stdin.close()
    assert worker.process.poll() is None, worker.output[-3000:]
    return figures


def report(mode: str, figures: dict[int, tuple[int, int]]) -> tuple[float, float]:
    (first, (worker_a, caller_a)), (last, (worker_b, caller_b)) = sorted(figures.items())
    worker_growth = (worker_b - worker_a) / MIB
    caller_growth = (caller_b - caller_a) / MIB
    print(
        f"\n[soak {mode}] worker RSS {worker_a / MIB:.1f} -> {worker_b / MIB:.1f} MiB "
        f"(+{worker_growth:.1f}); caller RSS {caller_a / MIB:.1f} -> {caller_b / MIB:.1f} MiB "
        f"(+{caller_growth:.1f}) from {first} to {last} tasks"
    )
    return worker_growth, caller_growth


@pytest.mark.slow
@pytest.mark.timeout(1900)
@pytest.mark.parametrize("mode", ["get", "delay"])
def test_memory_stays_flat_over_100k_tasks(
    mode: str,
    serve: Callable[..., ServeProcess],
    broker_url: str,
    queue: str,
    tmp_path: Path,
) -> None:
    figures = soak(serve, tmp_path, broker_url, queue, mode, 100_000, 500, 10_000, timeout=1800)
    worker_growth, caller_growth = report(mode, figures)
    assert worker_growth <= 10, f"worker grew {worker_growth:.1f} MiB from 10k to 100k tasks"
    assert caller_growth <= 10, f"caller grew {caller_growth:.1f} MiB from 10k to 100k tasks"
