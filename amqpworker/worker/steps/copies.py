"""Copies of a task this worker ran, or is running, are settled without running it again.

Copies come from an ack or a result lost when the connection dropped (the task comes
back), from the broker's at-least-once dead-lettering in the delay levels around a
restart (a fresh message with ``x-death``), and from a channel closed under a running
task (RabbitMQ's consumer timeout; the copy comes back counted, without ``x-death``).
A task id never runs twice at once here: a copy of a running task waits for it (outside
the execution slots), and then, as a copy of a finished task, is acked with the task's
result sent again (the first one may have been lost with the connection). A retry is
not a copy: it carries the next retry number.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import TYPE_CHECKING

from ...log import get_logger
from ...wire import ResultMessage, TaskMessage
from ..pipeline import Job, Step

if TYPE_CHECKING:
    from .results import Reporter

log = get_logger(__name__)

#: Recently finished tasks this worker remembers, to ack redeliveries of them unrun.
FINISHED_MEMORY = 10_000

Key = tuple[str, int]


class Ledger:
    """Which tasks run here now, and which ran lately with the state their caller got."""

    def __init__(self, memory: int = FINISHED_MEMORY) -> None:
        self._memory = memory
        self._finished: OrderedDict[Key, ResultMessage | None] = OrderedDict()
        #: Running tasks; a future only once a copy waits for one (rare, so made lazily).
        self._running: dict[Key, asyncio.Future[None] | None] = {}

    def knows(self, message: TaskMessage) -> bool:
        key = (message.id, message.retries)
        return key in self._finished or key in self._running

    def remember(self, message: TaskMessage, result: ResultMessage | None) -> None:
        """It ran (``result`` is what its caller was sent, if anything)."""
        self._finished[(message.id, message.retries)] = result
        if len(self._finished) > self._memory:
            self._finished.popitem(last=False)

    def started(self, message: TaskMessage) -> None:
        key = (message.id, message.retries)
        self._running[key] = None

    def ended(self, message: TaskMessage) -> None:
        waited = self._running.pop((message.id, message.retries))
        if waited is not None:
            waited.set_result(None)

    async def settle_copy(self, job: Job, reporter: Reporter) -> bool:
        """True when ``job`` is a copy, now acked (after its original ended)."""
        message = job.message
        key = (message.id, message.retries)
        if key in self._running:
            running = self._running[key]
            if running is None:
                running = self._running[key] = asyncio.get_running_loop().create_future()
            log.info("a copy of a running task waits for it", task_id=message.id)
            await asyncio.shield(running)
        if key not in self._finished:
            return False
        result = self._finished[key]
        if result is not None:
            await reporter.report(message, result)
        log.info("acking a second copy of a task that ran here", task_id=message.id)
        return True


class Copies(Step):
    """Settle copies before anything else happens to them."""

    def __init__(self, ledger: Ledger, reporter: Reporter) -> None:
        self.ledger = ledger
        self.reporter = reporter

    async def __call__(self, job: Job) -> None:
        if self.ledger.knows(job.message) and await self.ledger.settle_copy(job, self.reporter):
            return  # acked
        await self.proceed(job)
