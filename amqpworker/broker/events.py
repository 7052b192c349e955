"""Events on the broker: a topic exchange, a best-effort sender, and monitor queues.

Sending an event never slows or fails the work it describes. :class:`EventSender`
only appends the event to a bounded buffer; a task of its own encodes and publishes the
buffer on a channel of its own, without publisher confirms, every :data:`LINGER`
seconds at most, with the events of one type in one message. An event that cannot be
sent (the buffer is full, the connection is down) is dropped and counted, and the count
is logged now and then.

A monitor reads events from a queue of its own: exclusive and auto-deleted (it goes
with the monitor's connection), with a message TTL and a length bound that drops the
oldest first, so a monitor that stops reading never fills the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustChannel

from ..log import get_logger
from ..wire.events import EVENT_EXCHANGE, TASK_EVENT_ORDER, Event, Stamper, encode_events
from .connection import Broker, properties_of
from .consumer import Consumer, Delivery

log = get_logger(__name__)

#: Events waiting to be published; past this, new ones are dropped (and counted).
SEND_BUFFER = 10_000
#: Seconds between two log lines about dropped events.
DROP_REPORT_INTERVAL = 30.0
#: Seconds a closing sender gives its buffer to go out (worker-offline among them).
FLUSH_TIMEOUT = 2.0
#: Seconds an event waits for others to go out with it.
LINGER = 0.1
#: The most events one message carries (a JSON list of events of one type).
EVENTS_PER_MESSAGE = 500
#: Events a monitor holds unacknowledged; the rest wait in (and expire from) its queue.
MONITOR_PREFETCH = 1000


async def declare_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(EVENT_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)


class EventSender:
    """Publishes one sender's events, best effort, in the background."""

    def __init__(self, broker: Broker, hostname: str, *, buffer: int = SEND_BUFFER) -> None:
        self.broker = broker
        self.stamper = Stamper(hostname)
        self.buffer = buffer
        self.sent = 0
        self.dropped = 0
        self._pending: list[Event] = []
        self._wake = asyncio.Event()
        self._channel: AbstractRobustChannel | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._dropped_reported = 0
        self._last_report = 0.0
        self._last_reason = ""

    @property
    def hostname(self) -> str:
        return self.stamper.hostname

    async def start(self) -> None:
        """Open the sender's channel (no confirms) and declare the exchange."""
        channel = await self.broker.connection.channel(publisher_confirms=False)
        self._channel = cast(AbstractRobustChannel, channel)
        await declare_exchange(self._channel)
        self._task = asyncio.get_running_loop().create_task(self._publish_forever())

    def send(self, event_type: str, fields: Mapping[str, Any]) -> None:
        """Queue an event; never blocks and never raises (a full buffer drops it)."""
        if self._closing or len(self._pending) >= self.buffer:
            self._drop(1, "the send buffer is full")
            return
        self._pending.append(self.stamper.event(event_type, fields))
        self._wake.set()

    async def close(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Send what is buffered (for up to ``timeout`` seconds), then stop."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except asyncio.TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pending:
            self._drop(len(self._pending), "the sender closed before they went out")
            self._pending = []
        self._report_drops(force=True)
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _publish_forever(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closing:
                # Events sent meanwhile go out with this one: a message per event would
                # cost more than the work it describes.
                await asyncio.sleep(LINGER)
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._publish(batch)
            if self._closing and not self._pending:
                return

    async def _publish(self, batch: Sequence[Event]) -> None:
        """Publish what was sent since the last time: one message per type (and chunk).

        A socket write per event would cost as much as the task it describes; events
        of one type go out together, in the order one task goes through them.
        """
        groups: dict[str, list[Event]] = {kind: [] for kind in TASK_EVENT_ORDER}
        for event in batch:
            groups.setdefault(event["type"], []).append(event)
        left = len(batch)
        channel = self._channel
        for events in groups.values():
            for start in range(0, len(events), EVENTS_PER_MESSAGE):
                chunk = events[start : start + EVENTS_PER_MESSAGE]
                try:
                    assert channel is not None
                    if channel.is_closed:
                        raise ConnectionError("the event channel is closed")
                    envelope, key = encode_events(chunk)
                    underlay = await channel.get_underlay_channel()
                    await underlay.basic_publish(
                        envelope.body,
                        exchange=EVENT_EXCHANGE,
                        routing_key=key,
                        properties=properties_of(envelope),
                        mandatory=False,
                    )
                except Exception as exc:  # best effort: whatever went wrong, it is dropped
                    self._drop(left, f"{type(exc).__name__}: {exc}")
                    return
                self.sent += len(chunk)
                left -= len(chunk)

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        self._last_reason = why
        self._report_drops()

    def _report_drops(self, force: bool = False) -> None:
        now = time.monotonic()
        unreported = self.dropped - self._dropped_reported
        if unreported and (force or now - self._last_report >= DROP_REPORT_INTERVAL):
            log.warning(
                "events dropped", dropped=unreported, total=self.dropped, last=self._last_reason
            )
            self._dropped_reported = self.dropped
            self._last_report = now


def monitor_queue_arguments(ttl: float, expires: float, max_length: int) -> dict[str, Any]:
    """A monitor queue's bounds: message TTL, queue expiry, and a length dropping the oldest."""
    return {
        "x-message-ttl": max(int(ttl * 1000), 0),
        "x-expires": max(int(expires * 1000), 1),
        "x-max-length": max_length,
        "x-overflow": "drop-head",
    }


async def consume_events(
    broker: Broker,
    on_delivery: Callable[[Delivery], None],
    *,
    ttl: float,
    expires: float,
    max_length: int,
    keys: Sequence[str] = ("#",),
) -> tuple[str, Consumer]:
    """A monitor's queue, bound to the event exchange with ``keys``, consumed with acks.

    Returns its name and the consumer. After a reconnect the queue (gone with the old
    connection) is declared and bound again before consuming.
    """
    name = f"{EVENT_EXCHANGE}.monitor.{uuid.uuid4().hex[:12]}"
    arguments = monitor_queue_arguments(ttl, expires, max_length)

    async def declare() -> None:
        async with broker.probing() as channel:
            exchange = await declare_exchange(channel)
            queue = await channel.declare_queue(
                name, exclusive=True, auto_delete=True, arguments=arguments
            )
            for key in keys:
                await queue.bind(exchange, key)

    await declare()
    return name, await broker.consume(name, MONITOR_PREFETCH, on_delivery, prepare=declare)
