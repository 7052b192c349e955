"""Consuming: deliveries straight from aiormq, acks coalesced, consumers that survive reconnects.

A worker's cost per short task is dominated by what happens around it, so deliveries
skip aio-pika's per-message layer (an ``IncomingMessage`` and an extra asyncio task per
message): the consumer is registered on the robust channel's current AMQP channel and
registered again each time aio-pika reopens that channel (a reconnect, or the broker
closing the channel), from the channel's ``reopen_callbacks``.

A delivery keeps the AMQP channel that delivered it. Once that channel is closed the
broker has taken the message back, so its ack or reject is refused here
(:class:`DeliveryLost`) rather than sent, with a meaningless tag, on the new channel.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ..exceptions import DeliveryLost
from ..log import get_logger
from ..wire import Envelope

log = get_logger(__name__)

#: What a settle call or a publish raises when the channel or the whole connection went away.
CHANNEL_GONE = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
)
#: Seconds before consuming again after the broker cancelled a consumer.
CONSUME_RETRY_INTERVAL = 1.0
PERSISTENT, NOT_PERSISTENT = 2, 1  # AMQP delivery modes


class AckBatcher:
    """Acks for one channel, coalesced: one ``basic.ack(multiple=True)`` per loop turn.

    Each ack frame is a socket write of its own, the largest cost of a worker running
    short tasks. Acks asked for during one turn of the event loop go out together: one
    ``multiple`` ack up to the highest tag below which every delivery is settled, and
    single acks for tags past a gap (an earlier task still running), so a long task never
    holds back the acks, and the prefetch credit, of the tasks after it.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self._unsettled: set[int] = set()
        self._to_ack: list[int] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def unsettled(self) -> int:
        """Deliveries on this channel not yet acked or rejected (prefetch credit in use)."""
        return 0 if self.channel.is_closed else len(self._unsettled)

    def delivered(self, tag: int) -> None:
        self._unsettled.add(tag)

    def settled_elsewhere(self, tag: int) -> None:
        """A reject or a direct ack: no longer ours to ack."""
        self._unsettled.discard(tag)

    def ack(self, tag: int) -> None:
        if self.channel.is_closed:
            raise DeliveryLost("channel closed before the ack; it will be redelivered")
        self._unsettled.discard(tag)
        self._to_ack.append(tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        tags, self._to_ack = sorted(self._to_ack), []
        lowest_unsettled = min(self._unsettled, default=None)
        below = [t for t in tags if lowest_unsettled is None or t < lowest_unsettled]
        frames = [(below[-1], True)] if below else []
        frames += [(t, False) for t in tags[len(below) :]]
        task = asyncio.get_running_loop().create_task(self._send(frames))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, frames: list[tuple[int, bool]]) -> None:
        try:
            for tag, multiple in frames:
                await self.channel.basic_ack(delivery_tag=tag, multiple=multiple, wait=False)
        except CHANNEL_GONE:
            log.warning("acks not sent: the channel closed; the broker redelivers them")


class Delivery:
    """A message handed to a consumer, with ack/reject bound to the channel that delivered it."""

    __slots__ = (
        "_batcher",
        "_channel",
        "_prefetch",
        "_settled",
        "_tag",
        "envelope",
        "exchange",
        "queue",
        "redelivered",
        "routing_key",
    )

    def __init__(
        self, message: DeliveredMessage, queue: str, prefetch: int, batcher: AckBatcher
    ) -> None:
        frame = cast(Basic.Deliver, message.delivery)
        self._channel = message.channel
        self._batcher = batcher
        self._tag: int = frame.delivery_tag or 0
        batcher.delivered(self._tag)
        self._prefetch = prefetch
        self._settled = False
        self.queue = queue
        self.exchange: str = frame.exchange or ""
        self.routing_key: str = frame.routing_key or ""
        self.redelivered = bool(frame.redelivered)
        self.envelope = envelope_from(message.header.properties, message.body)

    @property
    def prefetch(self) -> int:
        """The prefetch of the consumer that delivered it: how many it may hold unsettled."""
        return self._prefetch

    @property
    def settled(self) -> bool:
        """True once acked or rejected (or handed to the ack batch)."""
        return self._settled

    @property
    def stale(self) -> bool:
        """True when the channel that delivered it has closed.

        The broker has then taken the message back and will deliver it again, so
        running it now would run it twice.
        """
        return self._channel.is_closed

    async def ack(self) -> None:
        """Acknowledge once; later acks and rejects of a settled delivery do nothing.

        The ack goes out with the other acks of this loop turn; an ack that never leaves
        this process means a redelivery, which at-least-once allows.
        """
        self.ack_soon()

    def ack_soon(self) -> None:
        """:meth:`ack`, callable where nothing can be awaited (a delivery callback)."""
        if self._settled:
            return
        self._settled = True
        self._batcher.ack(self._tag)

    def _settle_directly(self) -> bool:
        """Mark settled by a frame of its own (not batched); False if it already was."""
        if self._settled:
            return False
        self._settled = True
        self._batcher.settled_elsewhere(self._tag)
        return True

    async def ack_for_sure(self) -> None:
        """Ack, then wait until the broker has processed it.

        An ack written to the socket can still be lost if the process dies right after
        (the kernel may reset the connection and drop unsent data). A synchronous method
        on the same channel is answered only after the broker processed everything sent
        before it, so its reply proves the ack landed. ``basic.qos`` with the channel's
        own prefetch changes nothing.
        """
        if not self._settle_directly():
            return
        try:
            await self._channel.basic_ack(delivery_tag=self._tag)
            await self._channel.basic_qos(prefetch_count=self._prefetch)
        except CHANNEL_GONE as exc:
            raise DeliveryLost("channel closed right after the ack") from exc

    async def reject(self, requeue: bool) -> None:
        if not self._settle_directly():
            return
        try:
            await self._channel.basic_reject(delivery_tag=self._tag, requeue=requeue)
        except CHANNEL_GONE as exc:
            raise DeliveryLost("channel closed before the reject") from exc


def envelope_from(properties: Basic.Properties, body: bytes) -> Envelope:
    """AMQP basic properties (pamqp's) and a body as data; :func:`properties_of` goes back."""
    return Envelope(
        body=body,
        headers=dict(properties.headers or {}),
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        message_id=properties.message_id,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        priority=properties.priority,
        type=properties.message_type,
        persistent=properties.delivery_mode == PERSISTENT,
    )


def envelope_of(message: AbstractIncomingMessage) -> Envelope:
    """A message read through aio-pika (basic.get, the chord join) as data."""
    return envelope_from(message.properties, message.body)


class Consumer:
    """A consumer on a robust channel, registered again whenever aio-pika reopens it.

    ``on_message`` is called synchronously for each delivery, in the order the broker
    sent them; it must not block.
    """

    def __init__(
        self,
        channel: AbstractRobustChannel,
        queue: str,
        on_message: Callable[[DeliveredMessage], None],
        *,
        prepare: Callable[[], Awaitable[None]] | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Consume ``queue`` once started.

        ``prepare`` runs before consuming again (not the first time): after aio-pika
        reopened the channel, or the broker cancelled the consumer. ``arguments`` are
        the consume's (a stream's ``x-stream-offset``).
        """
        self.channel = channel
        self.queue = queue
        self.arguments = dict(arguments or {})
        self.tag = f"amqpworker.{uuid.uuid4().hex}"
        self._on_message = on_message
        self._prepare = prepare
        self._started = False
        self._cancelled = False
        self._retry: asyncio.Task[None] | None = None
        #: The AMQP channel the consumer was last registered on.
        self._registered_on: aiormq.Channel | None = None
        #: Acks of the current channel's deliveries (set by whoever delivers them).
        self.batcher: AckBatcher | None = None

    @property
    def consuming(self) -> bool:
        """True while the broker delivers to this consumer (not during a reconnect)."""
        channel = self._registered_on
        return (
            not self._cancelled
            and channel is not None
            and not channel.is_closed
            and self.tag in channel.consumers
        )

    @property
    def unsettled(self) -> int:
        """Deliveries held and not yet settled: the part of the prefetch in use."""
        return 0 if self.batcher is None else self.batcher.unsettled

    async def start(self) -> None:
        await self._consume()
        self._started = True
        self.channel.reopen_callbacks.add(self._on_reopen)

    async def cancel(self) -> None:
        """Stop new deliveries; those already received are still handled."""
        self._cancelled = True
        self.channel.reopen_callbacks.discard(self._on_reopen)
        if self._retry is not None:
            self._retry.cancel()
        underlay = await self._underlay()
        if not underlay.is_closed and self.tag in underlay.consumers:
            await underlay.basic_cancel(self.tag)

    async def _consume(self) -> None:
        underlay = await self._underlay()
        if self.tag in underlay.consumers:
            return
        if self._started and self._prepare is not None:
            await self._prepare()
            underlay = await self._underlay()
        underlay.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        await underlay.basic_consume(
            self.queue, self._deliver, consumer_tag=self.tag, arguments=self.arguments
        )
        self._registered_on = underlay

    async def _underlay(self) -> aiormq.Channel:
        return cast(aiormq.Channel, await self.channel.get_underlay_channel())

    async def _deliver(self, message: DeliveredMessage) -> None:
        self._on_message(message)

    async def _on_reopen(self, _channel: Any) -> None:
        if self._cancelled or (self._retry is not None and not self._retry.done()):
            # A failed consume closes the channel and aio-pika reopens it at once; the
            # pending retry, a second later, keeps that from becoming a tight loop.
            return
        try:
            await self._consume()
        except Exception as exc:
            log.error("could not consume again; retrying", queue=self.queue, error=str(exc))
            self._retry_later()

    def _on_broker_cancel(self, frame: Basic.Cancel) -> None:
        """The broker ended the consumer (the queue was deleted, or its leader moved)."""
        if frame.consumer_tag != self.tag or self._cancelled:
            return
        log.warning("the broker cancelled the consumer; consuming again", queue=self.queue)
        self._retry_later()

    def _retry_later(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.get_running_loop().create_task(self._consume_again())

    async def _consume_again(self) -> None:
        while not self._cancelled:
            await asyncio.sleep(CONSUME_RETRY_INTERVAL)
            try:
                await self.channel.ready()
                await self._consume()
                return
            except Exception as exc:
                log.error("could not consume again; retrying", queue=self.queue, error=str(exc))
