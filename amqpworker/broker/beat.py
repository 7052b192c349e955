"""Beat's broker side: who is the active beat, what it fired, and firing atomically.

Leadership is an exclusive consumer on the queue ``PREFIX.leader``: RabbitMQ lets one
consumer at a time hold it, refuses the others, and frees it the moment the holder's
connection closes (a killed process's socket closes with it; a machine cut off is
noticed after the heartbeat timeout). Standbys ask again every :data:`POLL_INTERVAL`.

The record of what fired is one message in ``PREFIX.state``, a queue that keeps only the
newest. It is read without taking it (fetched, then handed back), and written in one AMQP
transaction with the tasks it records: a beat killed at any point has either published
the tasks and the record, or neither.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel

from ..exceptions import ImproperlyConfigured
from ..log import get_logger
from ..wire import Envelope
from .connection import Broker, Outgoing, properties_of
from .consumer import envelope_of

log = get_logger(__name__)

#: Seconds between a standby's attempts to become the active beat.
POLL_INTERVAL = 0.5
#: Milliseconds the leader queue outlives the last beat (it holds no messages).
LEADER_QUEUE_EXPIRES_MS = 86_400_000
#: The most state messages read at once (the queue holds one; more is a leftover).
MAX_STATE_MESSAGES = 10


def leader_queue(prefix: str) -> str:
    return f"{prefix}.leader"


def state_queue(prefix: str) -> str:
    return f"{prefix}.state"


STATE_ARGUMENTS: dict[str, Any] = {"x-max-length": 1, "x-overflow": "drop-head"}


class Leadership:
    """Holds the leader queue's exclusive consumer while this beat is the active one."""

    def __init__(self, broker: Broker, prefix: str) -> None:
        self.broker = broker
        self.queue = leader_queue(prefix)
        self._channel: AbstractChannel | None = None
        self._polling: AbstractChannel | None = None
        self.lost = asyncio.Event()

    @property
    def held(self) -> bool:
        channel = self._channel
        return (
            channel is not None
            and not channel.is_closed
            and not self.lost.is_set()
            and self.broker.is_connected
        )

    async def try_acquire(self) -> bool:
        """One attempt: True when this beat now holds the leader queue.

        The queue's consumer count is looked at first, so a standby asks for the lock
        (and is refused, which closes its channel and is logged by the broker) only
        when nobody seems to hold it.
        """
        channel = self._polling
        if channel is None or channel.is_closed:
            channel = self._polling = await self.broker.probe_channel()
        try:
            queue = await channel.declare_queue(
                self.queue, durable=True, arguments={"x-expires": LEADER_QUEUE_EXPIRES_MS}
            )
            if queue.declaration_result.consumer_count:
                return False
            await queue.consume(_ignore, no_ack=True, exclusive=True)
        except aiormq.exceptions.ChannelAccessRefused:
            self._polling = None
            return False  # another beat took it first; the broker closed our channel
        except BaseException:
            self._polling = None
            with contextlib.suppress(Exception):
                if not channel.is_closed:
                    await channel.close()
            raise
        self._polling = None
        self.lost = asyncio.Event()
        lost = self.lost
        channel.close_callbacks.add(lambda *_: lost.set())
        # The queue deleted under us: the broker cancels the consumer, and then another
        # beat could take the lock while this channel stays open.
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(lambda *_: lost.set())
        self._channel = channel
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this beat holds the leader queue (True) or ``stop`` is set (False)."""
        last_error = ""
        while not stop.is_set():
            try:
                if await self.try_acquire():
                    return True
            except Exception as exc:  # the connection is down or coming back: ask again
                if str(exc) != last_error:  # once per kind of trouble, not twice a second
                    log.warning("beat: cannot ask for leadership yet", error=f"{exc!r}")
                last_error = str(exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_INTERVAL)
        return False

    async def release(self) -> None:
        """Give the lock back (a standby takes it at its next look), or stop looking."""
        channel, self._channel = self._channel, None
        polling, self._polling = self._polling, None
        self.lost.set()
        for held in (channel, polling):
            if held is not None and not held.is_closed:
                with contextlib.suppress(Exception):
                    await held.close()


async def _ignore(_message: Any) -> None:
    """The leader queue never carries messages; its consumer is only a lock."""


async def declare_state_queue(broker: Broker, prefix: str) -> None:
    """Declare the state queue.

    Raises:
        ImproperlyConfigured: a queue of that name exists with other arguments.
    """
    try:
        async with broker.probing() as channel:
            await channel.declare_queue(
                state_queue(prefix), durable=True, arguments=STATE_ARGUMENTS
            )
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ImproperlyConfigured(
            f"queue {state_queue(prefix)!r} exists and is not beat's state queue ({exc}); "
            "choose another beat_queue_prefix"
        ) from None


async def read_state(broker: Broker, prefix: str) -> list[Envelope]:
    """The state messages, left in the queue (fetched unacknowledged, then handed back)."""
    await declare_state_queue(broker, prefix)
    found = []
    async with broker.probing() as channel:
        queue = await channel.declare_queue(state_queue(prefix), passive=True)
        for _ in range(MAX_STATE_MESSAGES):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            found.append(envelope_of(message))
        # Closing the channel hands the unacknowledged messages back to the queue.
    return found


class Transactions:
    """A channel in AMQP transaction mode on the leader's connection."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._channel: AbstractChannel | None = None

    async def open(self) -> None:
        self._channel = await self.broker.probe_channel()
        underlay = await self._channel.get_underlay_channel()
        await underlay.tx_select()

    @property
    def is_open(self) -> bool:
        return self._channel is not None and not self._channel.is_closed

    async def publish_together(self, messages: Sequence[Outgoing]) -> None:
        """Publish ``messages`` in one transaction: all of them are queued, or none.

        They are mandatory, but without publisher confirms (a channel in transaction
        mode cannot have them) aiormq only logs a returned message as an error: a
        message no queue takes is dropped by the broker, with that log line.
        """
        assert self._channel is not None
        underlay = await self._channel.get_underlay_channel()
        for envelope, exchange, routing_key in messages:
            await underlay.basic_publish(
                envelope.body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties_of(envelope),
                mandatory=True,
            )
        await asyncio.wait_for(underlay.tx_commit(), self.broker.publish_timeout)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()
