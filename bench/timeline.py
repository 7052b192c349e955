"""Where a round trip's time goes: wall-clock stamps in the caller and in the worker.

``python -m bench.timeline [POOL [async]]`` (default asyncio; ``async``: the calls are
``await add.adelay(1, 2)`` and ``await result.aget()`` on the app's own loop, so the caller
makes no thread hop): a worker process and this caller
both wrap ``Consumer._deliver`` (a delivery reaches amqpworker) and ``Broker.publish``
(a publish starts, and its confirm arrives) to record ``time.time()``; then R sequential
``add.delay(1, 2).get()`` calls, and the median of each phase. Both
processes run on this machine, so their clocks agree. ``BENCH_RT`` (default 500) and
``BENCH_URL`` as for ``bench.run``. A probe for finding latency, not a benchmark: the
stamps themselves cost a few microseconds.
"""

from __future__ import annotations

import atexit
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from amqpworker.broker import connection, consumer
from amqpworker.delay import landing_queue

from .common import DEFAULT_URL, delete_queues, stop_process

Stamps = list[tuple[str, float]]
STAMPS: Stamps = []


def _record_stamps(path: Path | None = None) -> None:
    deliver, publish = consumer.Consumer._deliver, connection.Broker.publish

    async def stamped_deliver(self: Any, message: Any) -> None:
        STAMPS.append(("deliver", time.time()))
        await deliver(self, message)

    async def stamped_publish(self: Any, *args: Any, **kwargs: Any) -> None:
        STAMPS.append(("publish", time.time()))
        await publish(self, *args, **kwargs)
        STAMPS.append(("confirmed", time.time()))

    consumer.Consumer._deliver = stamped_deliver  # type: ignore[method-assign]
    connection.Broker.publish = stamped_publish  # type: ignore[method-assign]
    if path is not None:  # the worker's, for the caller to read after it stopped
        atexit.register(lambda: path.write_text(json.dumps(STAMPS)))


def _first(stamps: Stamps, name: str, after: float, before: float) -> float | None:
    return next((t for n, t in stamps if n == name and after <= t <= before), None)


def phases(calls: list[tuple[float, float]], caller: Stamps, worker: Stamps) -> dict[str, float]:
    found: dict[str, list[float]] = {}
    for began, ended in calls:
        moments = [
            _first(caller, "publish", began, ended),
            _first(worker, "deliver", began, ended),
            _first(worker, "publish", began, ended),
            _first(caller, "deliver", began, ended),
            _first(caller, "confirmed", began, ended),
        ]
        if None in moments:
            continue
        sent, received, replied, reply, confirmed = (float(m or 0) for m in moments)
        for name, seconds in (
            ("caller: call -> publish starts (thread hop, routing, encoding)", sent - began),
            ("publish -> worker has the delivery (broker, frame parsing)", received - sent),
            ("worker: delivery -> result publish starts", replied - received),
            ("result publish -> caller has the reply (broker, frame parsing)", reply - replied),
            ("caller: publish -> its confirm", confirmed - sent),
            ("caller: reply and confirm -> get() returns", ended - max(reply, confirmed)),
            ("total", ended - began),
        ):
            found.setdefault(name, []).append(seconds)
    return {name: statistics.median(values) for name, values in found.items()}


async def _async_calls(add: Any, count: int) -> list[tuple[float, float]]:
    """The same calls from a coroutine on the app's loop: no thread hop in the caller."""
    calls = []
    for _ in range(count):
        began = time.time()
        result = await add.adelay(1, 2)
        await result.aget(timeout=10)
        calls.append((began, time.time()))
    return calls


def main() -> int:
    if sys.argv[1:2] == ["--worker"]:
        _record_stamps(Path(sys.argv[2]))
        from amqpworker.cli import main as cli

        sys.argv = ["amqpworker", "serve", *sys.argv[3:]]
        return int(cli() or 0)
    pool = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    asynchronous = sys.argv[2:3] == ["async"]
    count = int(os.environ.get("BENCH_RT", "500"))
    url = os.environ.setdefault("BENCH_URL", DEFAULT_URL)
    queue = f"bench-timeline-{uuid.uuid4().hex[:8]}"
    from .apps.amqpworker_app import add, app

    app.conf.task_default_queue = queue
    with tempfile.TemporaryDirectory(prefix="bench-timeline-") as tmp:
        worker_file = Path(tmp) / "worker.json"
        _record_stamps()
        args = ["-A", "bench.apps.amqpworker_app", "--queues", queue, "--pool", pool]
        command = [sys.executable, "-m", "bench.timeline", "--worker", str(worker_file), *args]
        worker = subprocess.Popen([*command, "-c", "4", "-l", "WARNING"])
        calls = []
        try:
            add.delay(1, 2).get(timeout=30)  # the worker is up
            STAMPS.clear()
            if asynchronous:
                calls = app.portal.call(_async_calls(add, count))
            else:
                for _ in range(count):
                    began = time.time()
                    add.delay(1, 2).get(timeout=10)
                    calls.append((began, time.time()))
        finally:
            stop_process(worker)
            delete_queues(url, [queue, landing_queue("", queue)])
        worker_stamps = json.loads(worker_file.read_text())
    caller = "asyncio caller (adelay, aget)" if asynchronous else "sync caller"
    print(f"{pool} pool, {caller}, {len(calls)} round trips; medians:")
    for name, seconds in phases(calls, STAMPS, worker_stamps).items():
        print(f"  {seconds * 1e3:6.3f} ms  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
