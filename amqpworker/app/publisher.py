"""Publishing tasks and task states over one broker connection.

What a caller and a worker both do: encode task messages and send each to its
destination or into the delay levels, declare what they need on the way, and send
states to a caller's reply queue. A :class:`~.client.Client` adds a reply queue and
its result hub on top; a worker uses a publisher of its own, on its own connection.
With ``task_send_sent_event``, each task sent is announced by a task-sent event.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from .. import delay
from ..broker import Broker, Outgoing, chord
from ..broker.events import EventSender
from ..exceptions import UnroutableError
from ..log import get_logger
from ..settings import Settings
from ..topology import Topology
from ..wire import ResultMessage, SerializerRegistry, TaskMessage
from ..wire.events import describe_task
from ..wire.serializers import Serializer
from .routing import Destination

log = get_logger(__name__)


class Publisher:
    """Sends tasks and states through ``broker`` with an app's settings and serializers."""

    def __init__(
        self,
        broker: Broker,
        conf: Settings,
        serializers: SerializerRegistry,
        topology: Callable[[], Topology] = Topology,
    ) -> None:
        self.broker = broker
        self.conf = conf
        self.serializers = serializers
        self.topology = topology
        #: Where task-sent events go (``task_send_sent_event``); None: not sent.
        self.events: EventSender | None = None

    async def publish_tasks(
        self,
        messages: Sequence[tuple[TaskMessage, Destination, Serializer]],
        *,
        announce: bool = True,
    ) -> None:
        """Publish task messages, declaring missing queues first; one confirm wait for all.

        Once they are confirmed, each is announced by a task-sent event when events are
        on and ``announce`` (a task sent again on its way, such as an early one, is not).
        """
        outgoing = await self.outgoing(messages)
        if len(outgoing) == 1:
            await self.broker.publish(*outgoing[0])
        else:
            await self.broker.publish_many(outgoing)
        if self.events is not None and announce:
            for message, destination, _ in messages:
                self.events.send(
                    "task-sent",
                    {
                        **describe_task(message),
                        "queue": destination.queue,
                        "exchange": destination.exchange,
                        "routing_key": destination.routing_key,
                    },
                )

    async def publish_to_queue(
        self,
        queue: str,
        message: TaskMessage,
        content_type: str | None = None,
        *,
        announce: bool = False,
    ) -> None:
        """Publish a task straight to ``queue`` (delayed if its eta says so).

        How a worker sends a task again: an early message, a retry, a chord join. Only
        a retry is a new run, announced by task-sent (``announce``).
        """
        serializer = self.serializers.get(content_type or "json")
        destination = Destination("", queue, queue, message.priority)
        await self.publish_tasks([(message, destination, serializer)], announce=announce)

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
