"""Telling the caller: task states to its reply queue, and the report step.

The report step sends STARTED before a task runs (``track_started``) and its final
state after, and remembers the result for copies of the task that may still come. A
state that cannot be sent (the broker is going away) is logged, never a reason to run
the task again: a second run is worse than a lost state, and a redelivered copy sends
the result again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ...app.publisher import Publisher
from ...broker import Delivery
from ...exceptions import MessageError
from ...log import get_logger
from ...wire import ResultMessage, TaskMessage
from ...wire.results import FAILURE, STARTED, exception_to_data, now_iso
from ..pipeline import Job, Step
from .copies import Ledger

log = get_logger(__name__)


class Reporter:
    """Sends task states to callers through the worker's publisher."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def report(self, message: TaskMessage, result: ResultMessage) -> None:
        """Send a state whose loss must not stop the delivery's handling."""
        if not message.reply_to or message.ignore_result:
            return
        try:
            await self.publisher.publish_result(message.reply_to, result)
        except Exception as exc:
            log.warning("could not send a state to the caller", state=result.status, error=str(exc))

    async def fail(self, message: TaskMessage, error: BaseException) -> ResultMessage:
        """Tell the caller the task failed with ``error``; returns the state sent."""
        failed = failure(message, error)
        await self.report(message, failed)
        return failed

    async def tell_caller_it_failed(self, delivery: Delivery, error: MessageError) -> None:
        """FAILURE for a message that could not be decoded, where its caller is readable."""
        envelope = delivery.envelope
        task_id = envelope.correlation_id or envelope.message_id
        if not envelope.reply_to or not task_id:
            return
        name = envelope.headers.get("task")
        failed = ResultMessage(
            task_id,
            FAILURE,
            exception_to_data(error),
            None,
            now_iso(),
            name if isinstance(name, str) else None,
        )
        try:
            await self.publisher.publish_result(envelope.reply_to, failed)
        except Exception as exc:
            log.warning("could not tell the caller about a bad message", error=str(exc))

    def state_publisher(
        self, loop: asyncio.AbstractEventLoop, message: TaskMessage
    ) -> StatePublisher | None:
        """``update_state`` for a request, when its caller wants states."""
        if not message.reply_to or message.ignore_result:
            return None
        return StatePublisher(loop, self.publisher, message.reply_to)


def failure(message: TaskMessage, error: BaseException) -> ResultMessage:
    return ResultMessage(
        message.id, FAILURE, exception_to_data(error), None, now_iso(), message.task
    )


class Report(Step):
    """STARTED before the run, the final state after it."""

    def __init__(self, reporter: Reporter, ledger: Ledger) -> None:
        self.reporter = reporter
        self.ledger = ledger

    async def __call__(self, job: Job) -> None:
        message, task = job.message, job.task
        if message.reply_to and task.effective_track_started:
            await self.reporter.report(
                message, ResultMessage(message.id, STARTED, None, None, now_iso(), task.name)
            )
        await self.proceed(job)
        outcome = job.outcome
        if outcome is None or job.retrying:
            return
        if not message.reply_to or message.ignore_result or task.effective_ignore_result:
            # It ran: a copy must not run again (nobody waits for its result).
            self.ledger.remember(message, None)
            return
        result = outcome.as_result(job.request)
        # It ran: whatever happens to its report or ack, a copy must not run again, and
        # the copy's caller gets this result again.
        self.ledger.remember(message, result)
        await self.reporter.report(message, result)


class StatePublisher:
    """``update_state`` for one request: blocking from a thread, ordered on the loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, publisher: Publisher, reply_to: str
    ) -> None:
        self._loop = loop
        self._publisher = publisher
        self._reply_to = reply_to
        self._last: asyncio.Future[None] | None = None

    def __call__(self, state: ResultMessage) -> None:
        publish = self._publisher.publish_result(self._reply_to, state)
        if _on_loop(self._loop):
            self._last = self._loop.create_task(_after(self._last, publish))
        else:
            asyncio.run_coroutine_threadsafe(publish, self._loop).result()

    async def flush(self) -> None:
        if self._last is not None:
            with contextlib.suppress(Exception):
                await self._last


async def _after(previous: asyncio.Future[None] | None, publish: Any) -> None:
    if previous is not None:
        with contextlib.suppress(Exception):
            await previous
    await publish


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
