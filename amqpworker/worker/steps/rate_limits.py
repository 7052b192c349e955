"""Rate limits, per worker and per task name, as in Celery.

Each limited task has a :class:`~amqpworker.rates.Bucket`; a message books the next
token of its task's bucket before it asks for an execution slot, so a message waiting
for its token never holds a slot. Nor does it hold its consumer's prefetch for long,
which would stop the messages of other tasks behind it:

* a token due within :data:`HOLD_AT_MOST` seconds is waited for here, in memory, as long
  as fewer than half of the consumer's prefetch are held so (they are ``reserved`` in
  ``inspect()``; a graceful stop puts them back in their queue);
* any other wait is spent in the broker: the message is published again with an eta at
  its token's time, through the delay levels, and the delivery acked. It comes back
  marked as holding its token (the Eta step waits out the last second), so it never
  books a second one.

RabbitMQ applies a consumer's prefetch as set when it started consuming, so raising it
for each held message (Celery's way with an eta) is not open to us; hence the broker.
A task without a limit costs one dict lookup here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from dataclasses import replace

from ... import rates
from ...app import App
from ...app.publisher import Publisher
from ...broker import Delivery
from ...log import get_logger
from ..pipeline import Job, Requeue, Step

log = get_logger(__name__)

#: The longest a message waits for its token in a worker's memory (and so in its
#: prefetch); far below RabbitMQ's consumer timeout (30 min by default).
HOLD_AT_MOST = 1.0
#: Marks a message sent back to wait for the token it booked; its value is the
#: message's own eta (or ""), put back when it returns. Decoding drops ``x-amqpworker-``
#: headers from the task's headers, so the mark never reaches a retry or a replay.
TOKEN_HEADER = "x-amqpworker-rate-token"


class RateLimits(Step):
    def __init__(self, app: App, publisher: Publisher) -> None:
        self.app = app
        self.publisher = publisher
        #: The limited tasks' buckets; a task not here runs without waiting.
        self.buckets: dict[str, rates.Bucket] = {}
        #: Deliveries waiting here for a token due soon; a graceful stop requeues them.
        self.holding: dict[Delivery, Job] = {}
        self._held_from: Counter[str] = Counter()
        #: Handlers sending a message back; a graceful stop lets them finish.
        self.sending: set[asyncio.Task[None]] = set()
        for name, task in app.tasks.items():
            self.set_rate(name, task.effective_rate_limit)

    def set_rate(self, task_name: str, rate: rates.Rate) -> float | None:
        """Limit ``task_name`` to ``rate`` from now on (``None``/0: no limit).

        Tokens already booked stand. Returns the rate in tasks per second.

        Raises:
            ValueError: ``rate`` is not a rate.
        """
        per_second = rates.per_second(rate)
        if per_second is None:
            self.buckets.pop(task_name, None)
        else:
            old = self.buckets.get(task_name)
            self.buckets[task_name] = rates.Bucket(per_second, old, time.monotonic())
        return per_second

    async def __call__(self, job: Job) -> None:
        bucket = self.buckets.get(job.message.task)
        if bucket is None:
            await self.proceed(job)
            return
        await self._limited(job, bucket)

    async def _limited(self, job: Job, bucket: rates.Bucket) -> None:
        delivery = job.delivery
        booked = delivery.envelope.headers.get(TOKEN_HEADER)
        if booked is not None:  # back from the broker at its token's time
            job.message = replace(job.message, eta=_own_eta(booked))
            await self.proceed(job)
            return
        wait = bucket.reserve(time.monotonic())
        if wait <= 0:
            await self.proceed(job)
        elif wait <= HOLD_AT_MOST and self._held_from[delivery.queue] < delivery.prefetch // 2:
            if await self._hold(job, wait):
                await self.proceed(job)
        else:
            await self._send_back(job, wait)

    async def _hold(self, job: Job, wait: float) -> bool:
        """Wait ``wait`` seconds; False when a graceful stop requeued the job meanwhile."""
        delivery = job.delivery
        self.holding[delivery] = job
        self._held_from[delivery.queue] += 1
        try:
            await asyncio.sleep(wait)
        finally:
            self._held_from[delivery.queue] -= 1
            still_ours = self.holding.pop(delivery, None) is not None
        if not still_ours:
            job.ending = None  # already requeued
        return still_ours

    async def _send_back(self, job: Job, wait: float) -> None:
        """Publish the message again with an eta at its token's time; ack this delivery."""
        delivery, message = job.delivery, job.message
        if delivery.stale:  # the broker has it again: a copy now would run it twice
            job.ending = None
            return
        eta = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=wait)
        own_eta = message.eta.isoformat() if message.eta else ""
        later = replace(message, eta=eta, headers={**message.headers, TOKEN_HEADER: own_eta})
        current = asyncio.current_task()
        assert current is not None
        self.sending.add(current)
        try:
            await self.publisher.publish_to_queue(
                delivery.queue, later, delivery.envelope.content_type
            )
        except Exception as exc:
            log.error(
                "could not send a rate-limited message back to wait; requeueing it",
                task_id=message.id,
                error=f"{type(exc).__name__}: {exc}",
            )
            job.ending = Requeue("rate-limit-not-published")
        finally:
            self.sending.discard(current)


def _own_eta(booked: object) -> dt.datetime | None:
    """The eta a message had before it was sent back (the mark's value), if any."""
    try:
        return dt.datetime.fromisoformat(booked) if isinstance(booked, str) and booked else None
    except ValueError:
        return None
