"""Where a worker's time per message goes besides Python: CPU and context switches.

``python -m bench.switches [POOL ...]`` (default: threads asyncio). For each pool: start
one ``amqpworker serve`` on an empty queue, publish N no-ops and an end marker with
``send_many``, and read the worker's CPU time and its threads' voluntary and involuntary
context switches (``/proc/<pid>/task/*/status``) before and after. A context switch per
message is a thread hand-off (or a wait for the GIL) that the asyncio pool does not make.
``BENCH_N`` (default 20,000) and ``BENCH_URL`` as for ``bench.run``; the rate includes
publishing, so compare the per-message columns, not the rate.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from amqpworker.delay import landing_queue

from .common import (
    DEFAULT_URL,
    cpu_seconds,
    delete_queues,
    log_tail,
    start_process,
    stop_process,
    wait_for_file,
)

N = int(os.environ.get("BENCH_N", "20000"))
URL = os.environ.get("BENCH_URL") or DEFAULT_URL


def context_switches(pid: int) -> tuple[int, int]:
    voluntary = involuntary = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except FileNotFoundError:  # a thread ended meanwhile
            continue
        for line in lines:
            if line.startswith("voluntary_ctxt_switches"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                involuntary += int(line.split()[1])
    return voluntary, involuntary


def measure(pool: str, tmp: Path) -> str:
    os.environ["BENCH_URL"] = URL  # read by the bench app on import
    from .apps.amqpworker_app import app, mark, noop

    queue = f"bench-switches-{uuid.uuid4().hex[:8]}"
    to_queue = {"queue": queue}
    started, ended, log = (tmp / f"{queue}.{what}" for what in ("started", "ended", "log"))
    app.send_many([(mark, (str(started),), {}, to_queue)])  # declares the queue too
    command = [sys.executable, "-c", "from amqpworker.cli import main; main()", "serve"]
    command += ["-A", "bench.apps.amqpworker_app", "--queues", queue, "--pool", pool]
    command += ["-c", "4", "--prefetch-multiplier", "4", "-l", "WARNING"]
    worker = start_process(command, log)
    try:
        wait_for_file(started, 60, worker, log, "the worker to start")
        cpu_before, switches_before = cpu_seconds(worker.pid), context_switches(worker.pid)
        began = time.monotonic()
        app.send_many([(noop, (), {}, to_queue)] * N + [(mark, (str(ended),), {}, to_queue)])
        wait_for_file(ended, 60 + N / 500, worker, log, f"{pool} drain of {N}")
        elapsed = time.monotonic() - began
        cpu_after, switches_after = cpu_seconds(worker.pid), context_switches(worker.pid)
    finally:
        code = stop_process(worker)
        delete_queues(URL, [queue, landing_queue("", queue)])
    if code != 0:
        print(f"warning: worker exited with {code}\n{log_tail(log)}", file=sys.stderr)
    voluntary = (switches_after[0] - switches_before[0]) / N
    involuntary = (switches_after[1] - switches_before[1]) / N
    cpu = (cpu_after - cpu_before) / N * 1e6
    return f"| {pool} | {N / elapsed:,.0f} | {cpu:.0f} | {voluntary:.2f} | {involuntary:.2f} |"


def main() -> int:
    pools = sys.argv[1:] or ["threads", "asyncio"]
    print(f"N={N}, one worker process, concurrency 4, prefetch 16, broker {URL}")
    print()
    print("| pool | msg/s (with publishing) | worker CPU us/msg | cs/msg voluntary | involuntary |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-switches-") as tmp:
        for pool in pools:
            print(measure(pool, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
