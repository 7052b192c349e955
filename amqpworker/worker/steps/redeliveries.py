"""Counting redeliveries on classic queues, so that a task that kills its worker ends.

RabbitMQ tells a classic-queue consumer only *that* a message was redelivered, not how
often; the count travels in a header (see :meth:`~..settle.Settler.count_redelivery`).
The counted copy is what runs next; until its original's ack has reached the broker,
nothing may start (the copy may be this very message, and kill us too).
"""

from __future__ import annotations

import asyncio

from ...topology import QueueSpec
from ..pipeline import Job, Step
from ..settle import Settler


class Redeliveries(Step):
    def __init__(self, settle: Settler, specs: dict[str, QueueSpec]) -> None:
        self.settle = settle
        self.specs = specs
        #: Counts on their way; admission to run waits for them (see the slots step).
        self.settling: set[asyncio.Future[bool]] = set()

    async def __call__(self, job: Job) -> None:
        delivery = job.delivery
        if delivery.redelivered:
            settling = asyncio.ensure_future(
                self.settle.count_redelivery(delivery, self.specs.get(delivery.queue))
            )
            self.settling.add(settling)
            try:
                if await settling:
                    job.ending = None  # republished with its count, or dead-lettered
                    return
            finally:
                self.settling.discard(settling)
        await self.proceed(job)
