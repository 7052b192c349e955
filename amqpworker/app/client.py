"""The caller's side of an app on one event loop.

A :class:`Client` is a :class:`~.publisher.Publisher` on a broker connection of its own,
with a lazily declared reply queue and the :class:`~amqpworker.app.results.ResultHub`
fed from it. An app has one client per event loop that uses it: the portal's loop for
sync callers, the running loop for asyncio callers (a task on a worker's loop too).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable

from ..broker import Broker, Consumer
from ..broker.events import EventSender
from ..exceptions import DecodeError, MessageError
from ..log import get_logger
from ..settings import Settings
from ..topology import Topology
from ..wire import Envelope, ResultMessage, SerializerRegistry
from ..wire.events import caller_name
from .publisher import Publisher
from .results import ResultHub

log = get_logger(__name__)


class Client(Publisher):
    """Connection, reply queue and result hub of one app on one loop."""

    def __init__(
        self,
        conf: Settings,
        serializers: SerializerRegistry,
        name: str,
        topology: Callable[[], Topology] = Topology,
    ) -> None:
        super().__init__(Broker.for_settings(conf, name), conf, serializers, topology)
        self.loop = asyncio.get_running_loop()
        self.accepted = serializers.content_types(conf.accept_content)
        self.hub = ResultHub(self.loop)
        self._reply_to: str | None = None
        self._replies: Consumer | None = None
        self._reply_lock = asyncio.Lock()
        self._reply_prefix = f"{name}.reply."

    async def start(self) -> None:
        await self.broker.connect()
        if self.conf.task_send_sent_event:
            self.events = EventSender(self.broker, caller_name())
            await self.events.start()

    async def close(self) -> None:
        if self.events is not None:
            await self.events.close()
        if self._replies is not None and self._reply_to is not None:
            # It would outlive us by its x-expires otherwise.
            with contextlib.suppress(Exception):
                await self._replies.cancel()
                await self.broker.delete_queue(self._reply_to)
        await self.broker.close()

    async def reply_to(self) -> str:
        """The name of this client's reply queue, declared and consumed on first use."""
        if self._reply_to is not None:
            return self._reply_to
        async with self._reply_lock:
            if self._reply_to is None:
                name = self._reply_prefix + uuid.uuid4().hex
                self._replies = await self.broker.consume_replies(
                    name, self._on_reply, self.hub.reply_queue_lost
                )
                self._reply_to = name
        return self._reply_to

    def _on_reply(self, envelope: Envelope) -> None:
        try:
            message = ResultMessage.decode(envelope, self.serializers, self.accepted)
        except (MessageError, DecodeError) as exc:
            log.warning("dropped an unreadable result message", error=str(exc))
            return
        self.hub.record(message)
