"""The connection to RabbitMQ: connect with failover, declare, publish with confirms, consume.

This is the only module family that imports aio-pika. Everything above it speaks in
:class:`~amqpworker.wire.Envelope` out and :class:`Delivery` in.

Publishing always waits for the broker's confirm (bounded by a timeout) and is
``mandatory`` where a route could be missing, so an unroutable or refused message is an
exception in the caller, never a silent drop. Reconnection is aio-pika's robust
connection: channels and queues come back by themselves, consumers are registered again
by :class:`~.consumer.Consumer`; what does not come back is a delivery from the old
channel, which :meth:`Delivery.ack` reports as :class:`DeliveryLost` instead of acking
on a different channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.message import encode_expiration
from aiormq.abc import DeliveredMessage
from yarl import URL

from .. import delay
from ..exceptions import (
    BrokerUnavailable,
    DeliveryLost,
    PublishError,
    PublishOutcomeUnknown,
    TopologyMismatch,
    UnroutableError,
)
from ..log import get_logger, hide_password
from ..settings import Settings
from ..topology import QueueSpec, Topology, dlq_name
from ..wire import Envelope
from . import declare
from .consumer import (
    CHANNEL_GONE,
    NOT_PERSISTENT,
    PERSISTENT,
    AckBatcher,
    Consumer,
    Delivery,
)
from .declare import declare_queue
from .headers import encodable, guard_deep_tables

log = get_logger(__name__)

#: Channel numbers for short-lived probe channels (see Broker._probe_number).
PROBE_CHANNELS = (30000, 65000)
#: Seconds between reconnection attempts; short, because a worker without a broker idles.
RECONNECT_INTERVAL = 1.0
#: Seconds without a connection before reconnecting to the next broker URL.
FAILOVER_AFTER = 3.0
#: RabbitMQ's default frame size, and what a content header frame adds to the properties.
DEFAULT_FRAME_MAX = 131_072
FRAME_OVERHEAD = 8 + 12
#: How long a caller's reply queue outlives its consumer (a cut connection, a crash).
REPLY_QUEUE_EXPIRES_MS = 300_000
#: Replies on their way to a caller at once (they are handled at once, on its loop).
REPLY_PREFETCH = 1000

Outgoing = tuple[Envelope, str, str]
"""An envelope with the exchange and routing key to publish it to."""


def properties_of(envelope: Envelope) -> aiormq.spec.Basic.Properties:
    return aiormq.spec.Basic.Properties(
        headers=dict(envelope.headers),
        content_type=envelope.content_type,
        content_encoding=envelope.content_encoding,
        message_id=envelope.message_id,
        correlation_id=envelope.correlation_id,
        reply_to=envelope.reply_to,
        priority=envelope.priority,
        expiration=encode_expiration(envelope.expiration),
        message_type=envelope.type,
        delivery_mode=PERSISTENT if envelope.persistent else NOT_PERSISTENT,
    )


class Broker:
    """One robust AMQP connection bound to the event loop that opened it."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        name: str = "amqpworker",
        heartbeat: int = 60,
        connect_timeout: float = 10.0,
        publish_timeout: float = 10.0,
    ) -> None:
        guard_deep_tables()
        self.urls = list(urls)
        self.name = name
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.url: str | None = None
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._exchanges: set[str] = set()  # named exchanges known to exist
        self._declared: set[str] = set()
        self._delays_declared = False
        self._landings: set[tuple[str, str]] = set()
        #: One declaration of the delay topology at a time: many delayed messages at
        #: once (rate-limited ones sent back, a burst of countdowns) would each do it.
        self._declaring_delays = asyncio.Lock()
        self._last_probe = PROBE_CHANNELS[0]
        self._failover: asyncio.Task[None] | None = None
        #: Times the connection was lost and made again (for the worker's metrics).
        self.reconnects = 0

    @classmethod
    def for_settings(cls, conf: Settings, name: str) -> Broker:
        """A connection with the app's broker URLs, heartbeat and timeouts."""
        return cls(
            conf.broker_url,
            name=name,
            heartbeat=conf.broker_heartbeat,
            connect_timeout=conf.broker_connection_timeout,
            publish_timeout=conf.task_publish_timeout,
        )

    @property
    def safe_url(self) -> str:
        return hide_password(self.url or self.urls[0])

    async def connect(self) -> None:
        """Connect to the first broker URL that answers, in the order given."""
        errors = []
        for url in self.urls:
            try:
                self._connection = await aio_pika.connect_robust(
                    url,
                    timeout=self.connect_timeout,
                    heartbeat=self.heartbeat,
                    reconnect_interval=RECONNECT_INTERVAL,
                    client_properties={"connection_name": self.name},
                )
            except (OSError, asyncio.TimeoutError, aiormq.exceptions.AMQPError) as exc:
                errors.append(f"{hide_password(url)}: {_why_not_connected(url, exc, self)}")
                continue
            self.url = url
            self._connection.reconnect_callbacks.add(self._on_reconnected)
            if len(self.urls) > 1:
                self._connection.close_callbacks.add(self._on_connection_lost)
            channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            assert isinstance(channel, AbstractRobustChannel)
            self._publisher = channel
            return
        raise BrokerUnavailable("cannot connect to any broker: " + "; ".join(errors))

    def _on_reconnected(self, _connection: Any) -> None:
        self.reconnects += 1
        log.info("reconnected to the broker", name=self.name, url=self.safe_url)

    @property
    def is_connected(self) -> bool:
        """True while the connection is up (False while aio-pika reconnects, or closed)."""
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    def _on_connection_lost(self, _connection: Any, _error: BaseException | None) -> None:
        if self._failover is None or self._failover.done():
            self._failover = asyncio.get_running_loop().create_task(self._fail_over())

    async def _fail_over(self) -> None:
        """While the connection stays down, move aio-pika's reconnects along the URL list.

        aio-pika reconnects to the URL it first connected to, forever: with one node of
        a cluster gone, a worker would never consume again. Every ``FAILOVER_AFTER``
        seconds without a connection, its next attempt goes to the next URL.
        """
        connection = self._connection
        while connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.connected.wait(), FAILOVER_AFTER)
                return
            except asyncio.TimeoutError:
                pass
            current = self.urls.index(self.url) if self.url in self.urls else -1
            self.url = self.urls[(current + 1) % len(self.urls)]
            cast(aio_pika.RobustConnection, connection).url = URL(self.url)
            log.warning("broker unreachable; trying the next URL", url=hide_password(self.url))

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BrokerUnavailable("not connected; call connect() first")
        return self._connection

    async def close(self) -> None:
        if self._failover is not None:
            self._failover.cancel()
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        self._connection = self._publisher = None
        self._exchanges.clear()
        self._declared.clear()
        self._landings.clear()
        self._delays_declared = False

    async def channel(self, prefetch: int | None = None) -> AbstractChannel:
        """A new channel; ``prefetch`` sets per-consumer QoS (never global: quorum-safe)."""
        channel: AbstractChannel = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        if prefetch is not None:
            await channel.set_qos(prefetch_count=prefetch, global_=False)
        return channel

    async def probe_channel(self) -> AbstractChannel:
        """A short-lived, non-robust channel for operations the broker may refuse.

        A passive declare of a missing queue or an exclusive consume that is refused
        closes the channel; a robust channel would then try to reopen itself.
        """
        channel = aio_pika.Channel(
            self.connection, channel_number=self._probe_number(), publisher_confirms=False
        )
        await channel
        return channel

    def _amqp(self) -> Any:
        """Aiormq's connection under aio-pika's, or None while there is none."""
        transport = self._connection.transport if self._connection is not None else None
        return getattr(transport, "connection", None)

    @contextlib.asynccontextmanager
    async def probing(self) -> AsyncIterator[AbstractChannel]:
        """A probe channel (:meth:`probe_channel`) for one block, closed after it."""
        channel = await self.probe_channel()
        try:
            yield channel
        finally:
            if not channel.is_closed:
                await channel.close()

    def _probe_number(self) -> int:
        """A channel number from a range of its own, moving forward.

        aiormq numbers new channels "highest open + 1", so a channel the broker has just
        closed (a refused probe) can get its number again before the broker finished
        closing it, which RabbitMQ answers by closing the whole connection ("second
        'channel.open' seen"). Probes rotate through tens of thousands of numbers.
        """
        amqp = self._amqp()
        in_use = amqp.channels if amqp is not None else {}
        for _ in range(PROBE_CHANNELS[1] - PROBE_CHANNELS[0]):
            self._last_probe = self._last_probe + 1
            if self._last_probe >= PROBE_CHANNELS[1]:
                self._last_probe = PROBE_CHANNELS[0]
            if self._last_probe not in in_use:
                return self._last_probe
        raise BrokerUnavailable("no free channel number for a probe")

    async def declare_work_queue(
        self,
        spec: QueueSpec,
        default_max_priority: int | None,
        channel: AbstractChannel | None = None,
    ) -> AbstractQueue:
        """Declare a durable work queue and its dead-letter queue, idempotently."""
        declared = await declare_queue(
            channel or await self._ready_publisher(), spec, default_max_priority
        )
        self._declared.add(spec.name)
        return declared

    async def declare_dlq(self, spec: QueueSpec) -> None:
        """Declare a work queue's DLQ (of the queue's kind) on the publishing channel."""
        await (await self._ready_publisher()).declare_queue(
            dlq_name(spec.name), durable=True, arguments=spec.dlq_arguments()
        )

    async def declare_for_worker(
        self,
        channel: AbstractChannel,
        topology: Topology,
        queues: list[str],
        default_max_priority: int | None,
    ) -> dict[str, AbstractQueue]:
        """Declare a worker's queues and what feeds them; a mismatch is a plain report.

        Raises:
            TopologyMismatch: the broker has one of them with other arguments.
        """
        try:
            return await declare.declare_for_queues(channel, topology, queues, default_max_priority)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            differences = await declare.check(
                self.probe_channel, topology, default_max_priority, queues=queues
            )
            raise TopologyMismatch(differences or [str(exc)]) from None

    def has_declared(self, queue: str) -> bool:
        return queue in self._declared

    async def ensure_work_queue(self, spec: QueueSpec, default_max_priority: int | None) -> None:
        """Declare a work queue once per connection (publishers create missing queues)."""
        if spec.name not in self._declared:
            await self.declare_work_queue(spec, default_max_priority)

    async def consume_replies(
        self,
        name: str,
        on_envelope: Callable[[Envelope], Any],
        on_lost: Callable[[str], Any],
    ) -> Consumer:
        """Declare a caller's reply queue and consume it, acking each reply once handled.

        The queue is not exclusive: an exclusive queue is deleted with its connection, so
        a result published while the caller reconnects would vanish, and a reply on its
        way over the cut socket with it. This one outlives a cut by ``x-expires``
        (:data:`REPLY_QUEUE_EXPIRES_MS`, counted while nobody consumes it), and a reply
        is acked only once handed over. When it is gone all the same (expired, deleted,
        a broker restart), ``on_lost`` is told before it is declared again.
        """
        await self._declare_reply_queue(name)

        async def declare_again_if_gone() -> None:
            if not await self.queue_exists(name):
                on_lost(f"reply queue {name} was gone (expired, deleted or the broker restarted)")
                await self._declare_reply_queue(name)

        def deliver(delivery: Delivery) -> None:
            try:
                on_envelope(delivery.envelope)
            finally:
                with contextlib.suppress(DeliveryLost):
                    delivery.ack_soon()

        return await self.consume(name, REPLY_PREFETCH, deliver, prepare=declare_again_if_gone)

    async def _declare_reply_queue(self, name: str) -> None:
        # On a channel aio-pika does not restore: after a reconnect, whether the queue
        # survived is checked first (see consume_replies).
        async with self.probing() as channel:
            await channel.declare_queue(
                name,
                durable=False,
                auto_delete=False,
                arguments={"x-expires": REPLY_QUEUE_EXPIRES_MS},
            )

    async def queue_exists(self, name: str) -> bool:
        async with self.probing() as channel:
            try:
                await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return False
        return True

    async def delete_queue(self, name: str) -> None:
        async with self.probing() as channel:
            await channel.queue_delete(name)

    async def publish(
        self, envelope: Envelope, exchange: str, routing_key: str, *, mandatory: bool = True
    ) -> None:
        """Publish one message and wait for the broker's confirm.

        Raises:
            UnroutableError: no queue is bound for the message.
            PublishError: the broker refused the message, the exchange does not exist, or
                no confirm came within ``publish_timeout``.
        """
        properties = properties_of(envelope)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        rewritten = False
        try:
            while True:
                try:
                    # aiormq directly: an aio-pika Message per publish costs more than
                    # the frames it becomes.
                    channel = await self._ready_publisher()
                    await self._check_exchange(channel, exchange)
                    underlay = await channel.get_underlay_channel()
                    await underlay.basic_publish(
                        envelope.body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=properties,
                        mandatory=mandatory,
                        timeout=self.publish_timeout,
                    )
                    return
                except TypeError:
                    # A header a delivery brought that pamqp cannot encode (raw bytes).
                    if rewritten:
                        raise
                    rewritten = True
                    table, names = encodable(envelope.headers)
                    if not names:
                        raise
                    log.warning("headers rewritten to be sent again", headers=names)
                    properties = properties_of(replace(envelope, headers=table))
                except CHANNEL_GONE:
                    # The channel or connection closed before the confirm: publish again
                    # once aio-pika has it back (at least once: the broker may have the
                    # first copy). The pause lets aio-pika notice the loss first.
                    if loop.time() > deadline:
                        raise
                    await asyncio.sleep(0.05)
                    await self._ready_publisher()
        except aiormq.exceptions.PublishError as exc:
            raise UnroutableError(
                f"no queue is bound for exchange {exchange or '(default)'!r} "
                f"with routing key {routing_key!r}; the message was not queued"
            ) from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise PublishError(f"the broker refused the message ({exc})") from exc
        except asyncio.TimeoutError as exc:
            raise self._outcome_unknown(
                envelope, f"the broker did not confirm the message within {self.publish_timeout}s"
            ) from exc
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            self._exchanges.discard(exchange)
            raise PublishError(f"exchange {exchange!r} does not exist on the broker") from exc
        except CHANNEL_GONE as exc:
            raise self._outcome_unknown(
                envelope, f"the connection did not come back within {self.publish_timeout}s"
            ) from exc

    def _outcome_unknown(self, envelope: Envelope, what: str) -> PublishOutcomeUnknown:
        blocked = self.is_blocked()
        because = (
            "; the broker has blocked this connection (a memory or disk alarm), so the "
            "message waits to be sent"
            if blocked
            else ""
        )
        return PublishOutcomeUnknown(
            f"{what}{because}; it may still be queued and run (message id {envelope.message_id})",
            envelope.message_id,
            blocked=blocked,
        )

    def fits_in_a_frame(self, envelope: Envelope) -> bool:
        """Whether the message's properties fit the connection's frame size.

        A content header cannot be split over frames, and RabbitMQ closes the whole
        connection over one that is too large. Costs an encoding: not for the hot path.
        """
        tune = getattr(self._amqp(), "connection_tune", None)
        frame_max = getattr(tune, "frame_max", None) or DEFAULT_FRAME_MAX
        table, _ = encodable(envelope.headers)
        properties = properties_of(replace(envelope, headers=table))
        return len(properties.marshal()) + FRAME_OVERHEAD <= frame_max

    def is_blocked(self) -> bool:
        """True while the broker has blocked this connection (``connection.blocked``).

        aiormq keeps this only in a private event, which it waits on before writing.
        """
        unblocked = getattr(self._amqp(), "_Connection__connection_unblocked", None)
        return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()

    async def delayed_target(
        self, exchange: str, routing_key: str, seconds: int
    ) -> tuple[str, str]:
        """Where to publish a message that should reach (exchange, routing_key) later.

        The delay topology and the destination's landing queue are declared on first use
        by this connection.
        """
        if not self._delays_declared or (exchange, routing_key) not in self._landings:
            async with self._declaring_delays:
                channel = await self._ready_publisher()
                if not self._delays_declared:
                    await declare.declare_delay_topology(channel)
                    self._delays_declared = True
                if (exchange, routing_key) not in self._landings:
                    await declare.declare_landing(channel, exchange, routing_key)
                    self._landings.add((exchange, routing_key))
        return (
            delay.level_name(delay.entry_level(seconds)),
            delay.routing_key(seconds, exchange, routing_key),
        )

    async def publish_many(self, messages: Iterable[Outgoing]) -> None:
        """Publish many messages at once and wait for all their confirms together."""
        results = await asyncio.gather(
            *(self.publish(envelope, ex, key) for envelope, ex, key in messages),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def consume(
        self,
        queue: str,
        prefetch: int,
        on_delivery: Callable[[Delivery], None],
        prepare: Callable[[], Awaitable[None]] | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> Consumer:
        """Consume a declared queue with manual acks, on a channel of its own.

        Its own channel keeps its own QoS (``prefetch``) across reconnects, and its acks
        go back on the channel that delivered. ``on_delivery`` must not block;
        ``prepare`` runs before consuming again after a reconnect (see :class:`Consumer`).
        """
        channel = await self.channel(prefetch=prefetch)
        assert isinstance(channel, AbstractRobustChannel)

        def deliver(message: DeliveredMessage) -> None:
            batcher = consumer.batcher
            if batcher is None or batcher.channel is not message.channel:
                # A reopened channel: new tags.
                batcher = consumer.batcher = AckBatcher(message.channel)
            on_delivery(Delivery(message, queue, prefetch, batcher))

        consumer = Consumer(channel, queue, deliver, prepare=prepare, arguments=arguments)
        await consumer.start()
        return consumer

    async def check_exchange(self, name: str) -> None:
        """Raise :class:`PublishError` unless a named exchange exists (checked once)."""
        if name and name not in self._exchanges:
            await self._check_exchange(await self._ready_publisher(), name)

    async def _check_exchange(self, channel: AbstractRobustChannel, name: str) -> None:
        """Fail clearly, once per exchange, when a named exchange does not exist."""
        if name == "" or name in self._exchanges:
            return
        try:
            await channel.get_exchange(name, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise PublishError(f"exchange {name!r} does not exist on the broker") from exc
        self._exchanges.add(name)

    async def _ready_publisher(self) -> AbstractRobustChannel:
        """The publishing channel, once open.

        The broker closes it over some errors (a missing exchange), and a reconnect
        closes it; aio-pika restores it shortly after.
        """
        channel = self._publishing_channel()
        try:
            await asyncio.wait_for(channel.ready(), self.publish_timeout)
        except asyncio.TimeoutError:
            raise PublishError(
                f"the publishing channel did not come back within {self.publish_timeout}s"
            ) from None
        return channel

    def _publishing_channel(self) -> AbstractRobustChannel:
        if self._publisher is None:
            raise BrokerUnavailable("not connected; call connect() first")
        return self._publisher


def _why_not_connected(url: str, exc: BaseException, broker: Broker) -> str:
    """A connect failure in words: aiormq's own text can be empty or an object's repr."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return (
            f"no AMQP handshake within {broker.connect_timeout}s (the host may be "
            "unreachable, or the port is not a RabbitMQ AMQP port)"
        )
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
        vhost = unquote(urlsplit(url).path[1:]) or "/"
        return (
            f"the broker refused to open virtual host {vhost!r} (it does not exist, or "
            "this user has no access to it)"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
        return "connection refused (is RabbitMQ running and listening on that port?)"
    text = str(exc.args[-1]) if isinstance(exc, OSError) and exc.args else str(exc)
    return text or type(exc).__name__
