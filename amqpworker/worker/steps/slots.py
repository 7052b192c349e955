"""Admission to run: at most ``concurrency`` tasks at once, and never two of one task id.

A job waits here for a slot. Meanwhile a graceful stop may requeue it (it is in
``waiting``), its channel may close (the broker has it again: it must not run), or a
copy of it may have started (it is settled as a copy). An admitted job gets its
:class:`Request` and a log context naming the task; while it runs it is in ``running``,
which a graceful stop waits for.
"""

from __future__ import annotations

import asyncio
import time

from ...app.task import Request
from ...broker import Delivery
from ...log import bind, get_logger, unbind
from ..pipeline import Job, Step
from ..settle import Settler
from .acks import end
from .copies import Ledger
from .redeliveries import Redeliveries
from .results import Reporter

log = get_logger(__name__)


class Slots(Step):
    def __init__(
        self,
        concurrency: int,
        ledger: Ledger,
        reporter: Reporter,
        redeliveries: Redeliveries,
        hostname: str,
        settle: Settler,
    ) -> None:
        self.settle = settle
        self.ledger = ledger
        self.reporter = reporter
        self.redeliveries = redeliveries
        self.hostname = hostname
        self._slots = asyncio.Semaphore(concurrency)
        #: Tasks holding a slot each, taken away by :meth:`shrink`.
        self._withheld: list[asyncio.Task[None]] = []
        #: Deliveries waiting for a slot (``inspect().reserved()``); a stop requeues them.
        self.waiting: dict[Delivery, Job] = {}
        #: The handlers of running jobs; a graceful stop waits for them.
        self.running: set[asyncio.Task[None]] = set()
        #: Running jobs and when each started (``inspect().active()``).
        self.active: dict[Job, float] = {}

    def grow(self, n: int) -> None:
        """``n`` more tasks may run at once; withheld slots come back first."""
        for _ in range(n):
            if self._withheld:
                self._withheld.pop().cancel()  # a shrink not yet done, or done: undone
            else:
                self._slots.release()

    def shrink(self, n: int) -> None:
        """``n`` fewer tasks at once: slots are withheld as running tasks give them back."""
        for _ in range(n):
            self._withheld.append(asyncio.get_running_loop().create_task(self._withhold()))

    async def _withhold(self) -> None:
        await self._slots.acquire()
        try:
            await asyncio.Event().wait()  # held until grow() cancels this
        finally:
            self._slots.release()

    async def __call__(self, job: Job) -> None:
        delivery, message = job.delivery, job.message
        self.waiting[delivery] = job
        async with self._slots:
            if self.waiting.pop(delivery, None) is None:  # requeued by a stop while waiting
                job.ending = None
                return
            while self.redeliveries.settling:
                # A counted copy may be this very message: it must not run (and maybe
                # kill us) before the original's ack has reached the broker.
                await asyncio.wait(set(self.redeliveries.settling))
            if delivery.stale:
                log.info("skipping a delivery from a closed channel", task_id=message.id)
                job.ending = None
                return
            while self.ledger.knows(message):  # a copy started while this one waited
                if await self.ledger.settle_copy(job, self.reporter):
                    return  # acked as a copy
            current = asyncio.current_task()
            assert current is not None
            self.running.add(current)
            self.ledger.started(message)  # no await between the check above and here
            job.request = self._request(job)
            self.active[job] = time.time()
            context = bind(task_id=message.id, task_name=job.task.name)
            try:
                await self.proceed(job)
                # Settled while it still holds its slot: the ack goes out with the
                # others of this loop turn, before the next job is let in.
                await end(job, self.settle)
            except asyncio.CancelledError:
                log.warning("task interrupted by shutdown; it will run again", task_id=message.id)
                job.ending = None  # unacked: the broker gives it out again
            finally:
                unbind(context)
                del self.active[job]
                self.running.discard(current)
                self.ledger.ended(message)

    def _request(self, job: Job) -> Request:
        delivery, message = job.delivery, job.message
        loop = asyncio.get_running_loop()
        return Request.from_message(
            message,
            delivery_info={
                "exchange": delivery.exchange,
                "routing_key": delivery.routing_key,
                "queue": delivery.queue,
                "redelivered": delivery.redelivered,
                "priority": message.priority,
            },
            hostname=self.hostname,
            publish_state=self.reporter.state_publisher(loop, message),
        )
