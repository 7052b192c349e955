"""Honouring a message's eta: run it no earlier, and never hold it.

The delay levels deliver up to a second early (they wait whole seconds); that remainder
is slept here, outside the execution slots. A message earlier than that (a Celery
client's eta, clock skew between hosts) goes back through the delay levels. An eta past
the levels' reach can never be waited for: it is dead-lettered with its own reason and
its caller told, rather than put back over and over.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from ... import delay
from ...app.publisher import Publisher
from ...log import get_logger
from ..pipeline import DeadLetter, Job, Requeue, Step
from .results import Reporter

log = get_logger(__name__)


class Eta(Step):
    def __init__(self, publisher: Publisher, reporter: Reporter) -> None:
        self.publisher = publisher
        self.reporter = reporter
        #: Jobs waiting out the last second of their eta (``inspect().scheduled()``).
        self.holding: set[Job] = set()

    async def __call__(self, job: Job) -> None:
        message = job.message
        if message.eta is not None:
            wait = (message.eta - dt.datetime.now(dt.timezone.utc)).total_seconds()
            if wait >= 1.0:
                await self._later(job, wait)
                return
            if wait > 0:
                self.holding.add(job)
                try:
                    await asyncio.sleep(wait)
                finally:
                    self.holding.discard(job)
        await self.proceed(job)

    async def _later(self, job: Job, wait: float) -> None:
        message = job.message
        if wait > delay.MAX_DELAY:
            error = ValueError(
                f"eta {message.eta.isoformat() if message.eta else ''} is {wait:.0f}s away, "
                f"past the delay levels' reach of {delay.MAX_DELAY}s"
            )
            await self.reporter.fail(message, error)
            job.ending = DeadLetter("eta-out-of-range", str(error))
            return
        try:
            await self.publisher.publish_to_queue(
                job.delivery.queue, message, job.delivery.envelope.content_type
            )
        except Exception as exc:
            log.error("could not delay the message again; requeueing it", error=str(exc))
            job.ending = Requeue("delay-not-published")
