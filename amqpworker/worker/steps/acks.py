"""Ending a delivery the way the steps inside decided (``job.ending``): one place to settle.

An ack after the task ran (``acks_late``) is what makes a crash redeliver the message
rather than lose it; a dead-letter is a confirmed copy into ``<queue>.dlq`` and then
an ack; a requeue carries its reason for the redelivery count (see ``worker/settle.py``).
"""

from __future__ import annotations

from ..pipeline import Ack, DeadLetter, Job, Requeue, Step
from ..settle import Settler


class Acknowledge(Step):
    def __init__(self, settle: Settler) -> None:
        self.settle = settle

    async def __call__(self, job: Job) -> None:
        await self.proceed(job)
        ending = job.ending
        if isinstance(ending, Ack):
            await self.settle.ack(job.delivery)
        elif isinstance(ending, DeadLetter):
            await self.settle.dead_letter(
                job.delivery, ending.reason, ending.detail, exception=ending.exception
            )
        elif isinstance(ending, Requeue):
            await self.settle.requeue(job.delivery, ending.because)
