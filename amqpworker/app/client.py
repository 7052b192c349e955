"""The async publishing side of an app on one event loop.

A :class:`Client` owns one broker connection, a lazily declared reply queue and the
:class:`~amqpworker.app.results.ResultHub` fed from it. An app has one client per event
loop that uses it: the portal's loop for sync callers, the running loop for asyncio
callers, the worker's loop inside a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Callable, Sequence

from .. import delay
from ..broker import Broker, Outgoing, chord
from ..exceptions import DecodeError, MessageError, UnroutableError
from ..log import get_logger
from ..settings import Settings
from ..topology import Topology
from ..wire import Envelope, ResultMessage, SerializerRegistry, TaskMessage
from ..wire.serializers import Serializer
from .results import ResultHub
from .routing import Destination

log = get_logger(__name__)


class Client:
    """Connection, reply queue and result hub of one app on one loop."""

    def __init__(
        self,
        conf: Settings,
        serializers: SerializerRegistry,
        name: str,
        topology: Callable[[], Topology] = Topology,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.conf = conf
        self.serializers = serializers
        self.accepted = serializers.content_types(conf.accept_content)
        self.broker = Broker(
            conf.broker_url,
            name=name,
            heartbeat=conf.broker_heartbeat,
            connect_timeout=conf.broker_connection_timeout,
            publish_timeout=conf.task_publish_timeout,
        )
        self.hub = ResultHub(self.loop)
        self.topology = topology
        self._reply_to: str | None = None
        self._reply_lock = asyncio.Lock()
        self._reply_prefix = f"{name}.reply."

    async def start(self) -> None:
        await self.broker.connect()

    async def close(self) -> None:
        if self._reply_to is not None:
            # It would outlive us by its x-expires otherwise.
            with contextlib.suppress(Exception):
                await self.broker.delete_queue(self._reply_to)
        await self.broker.close()

    async def reply_to(self) -> str:
        """The name of this client's reply queue, declared and consumed on first use."""
        if self._reply_to is not None:
            return self._reply_to
        async with self._reply_lock:
            if self._reply_to is None:
                name = self._reply_prefix + uuid.uuid4().hex
                await self.broker.consume_replies(name, self._on_reply, self.hub.reply_queue_lost)
                self._reply_to = name
        return self._reply_to

    def _on_reply(self, envelope: Envelope) -> None:
        try:
            message = ResultMessage.decode(envelope, self.serializers, self.accepted)
        except (MessageError, DecodeError) as exc:
            log.warning("dropped an unreadable result message", error=str(exc))
            return
        self.hub.record(message)

    async def publish_tasks(
        self, messages: Sequence[tuple[TaskMessage, Destination, Serializer]]
    ) -> None:
        """Publish task messages, declaring missing queues first; one confirm wait for all."""
        outgoing = await self.outgoing(messages)
        if len(outgoing) == 1:
            await self.broker.publish(*outgoing[0])
        else:
            await self.broker.publish_many(outgoing)

    async def outgoing(
        self, messages: Sequence[tuple[TaskMessage, Destination, Serializer]]
    ) -> list[Outgoing]:
        """Encode messages and pick where each goes: its destination, or a delay level.

        Declares what they need on the way: missing queues, the delay levels.
        """
        if self.conf.task_create_missing_queues:
            for queue in {dest.queue for _, dest, _ in messages if dest.queue}:
                if not self.broker.has_declared(queue):  # a spec is a model: only when needed
                    await self.broker.ensure_work_queue(
                        self.topology().queue(queue), self.conf.task_queue_max_priority
                    )
        now = dt.datetime.now(dt.timezone.utc)
        outgoing = []
        for message, dest, serializer in messages:
            exchange, routing_key = dest.exchange, dest.routing_key
            wait = (message.eta - now).total_seconds() if message.eta else 0.0
            if wait >= 1:
                # Whole seconds wait in the broker; the worker waits out the rest (< 1 s).
                exchange, routing_key = await self.broker.delayed_target(
                    exchange, routing_key, delay.whole_seconds(wait)
                )
            outgoing.append((message.encode(serializer), exchange, routing_key))
        return outgoing

    async def declare_chord(self, chord_id: str) -> None:
        """The queue that collects a chord's header results (it expires when unused)."""
        await chord.declare(self.broker, chord_id, self.conf.result_expires)

    async def publish_result(self, reply_to: str, message: ResultMessage) -> None:
        """Send a state to a caller; a caller that is gone is not an error.

        Mandatory, so that a reply queue that is gone is noticed (and logged) rather
        than the state silently dropped.
        """
        serializer = self.serializers.get(self.conf.result_serializer)
        try:
            await self.broker.publish(message.encode(serializer), "", reply_to)
        except UnroutableError:
            log.info(
                "the caller's reply queue is gone; state dropped",
                task_id=message.task_id,
                status=message.status,
            )
