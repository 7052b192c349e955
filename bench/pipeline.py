"""The delivery pipeline's own cost, in-process: no broker, no sockets.

    python -m bench.pipeline [N]

Runs N no-op task deliveries (as the drain benchmark's, already decoded by pamqp)
through the worker's full pipeline with the asyncio pool, and through the same pipeline
cut down to the steps a delivery cannot do without (decode, lookup, acknowledge,
execute), and prints the CPU per delivery of each. The difference is what the other
steps cost a delivery that needs none of them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
from typing import Any, cast

from amqpworker import App
from amqpworker.app.publisher import Publisher
from amqpworker.broker import Broker
from amqpworker.wire import TaskMessage
from amqpworker.worker.pipeline import Job, Step, compose
from amqpworker.worker.revocations import Revocations
from amqpworker.worker.settle import Settler
from amqpworker.worker.stats import WorkerStats
from amqpworker.worker.steps import default_steps

ESSENTIAL = ("Acknowledge", "Decode", "Lookup", "Slots", "Execute")


class FakeDelivery:
    """What the steps read of a delivery; acks cost nothing here."""

    def __init__(self, envelope: Any) -> None:
        self.envelope = envelope
        self.redelivered = False
        self.queue = self.routing_key = "bench"
        self.exchange = ""
        self.settled = False
        self.stale = False

    async def ack(self) -> None:
        self.settled = True


def steps(app: App) -> list[Step]:
    conf = app.conf
    broker = cast(Broker, None)  # nothing in a no-op's path publishes
    return default_steps(
        app=app,
        publisher=Publisher(broker, conf, app.serializers),
        settle=Settler(broker, WorkerStats(), app.topology),
        stats=WorkerStats(),
        specs={"bench": app.topology.queue("bench")},
        threads=None,
        concurrency=4,
        hostname="bench@here",
        timezone=dt.timezone.utc,
        accepted=app.serializers.content_types(conf.accept_content),
        revocations=Revocations(),
    )


async def measure(app: App, chosen: list[Step], n: int) -> float:
    handle = compose(chosen)
    serializer = app.serializers.get("json")
    deliveries = [
        FakeDelivery(TaskMessage(task="bench.noop", ignore_result=True).encode(serializer))
        for _ in range(n)
    ]
    started = time.process_time()
    for delivery in deliveries:
        await handle(Job(cast(Any, delivery)))
    assert all(delivery.settled for delivery in deliveries)
    return (time.process_time() - started) / n * 1e6


async def main(n: int) -> None:
    app = App("bench")

    @app.task(name="bench.noop", ignore_result=True)
    def noop() -> None:
        return None

    full = steps(app)
    essential = [step for step in full if type(step).__name__ in ESSENTIAL]
    for _ in range(2):  # the first round warms up
        whole = await measure(app, full, n)
        cut = await measure(app, essential, n)
    print(f"full pipeline ({len(full)} steps):      {whole:6.1f} us per delivery")
    print(f"essential steps only ({len(essential)}):     {cut:6.1f} us per delivery")
    print(f"the other {len(full) - len(essential)} steps:           {whole - cut:6.1f} us")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
