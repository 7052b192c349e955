"""Chord joins in RabbitMQ itself: a queue per chord, an exclusive consumer, a transaction.

The guarantee, and why it holds (``docs/canvas.md`` has the long version):

1. The caller declares ``amqpworker.chord.<id>`` (durable, ``x-expires``) before any
   header task is published.
2. A header task's worker publishes its result there (persistent, confirmed), with its
   header index, then a *join* message to a work queue, then acks the header task. A
   crash in between redelivers the header task: its result may arrive twice, which the
   join ignores (it keeps one result per index).
3. A join reads the chord queue only if it holds at least ``size`` messages, and only
   with an **exclusive** consumer: RabbitMQ lets one consumer at a time hold it
   (``ACCESS_REFUSED`` for others), and returns every message it held if its
   connection dies. That is the lock, and the broker releases it on a crash.
4. With one result per index, the join publishes the body (or the chord's failure), a
   ``fired`` marker, and acks every message it read, all in **one AMQP transaction**.
   A worker killed before the commit leaves nothing done (its join message comes back);
   after the commit, the body is published and the results are gone, and any later
   join finds the marker, or no queue (it is deleted after the commit), and stops.

So a body runs twice only if the broker itself fails in the middle of committing that
transaction (RabbitMQ's transactions are atomic per queue, and the commit touches the
chord queue and the body's queue); a worker crash at any moment cannot do it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable, Sequence

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage

from ..wire import Envelope
from .connection import Broker, Outgoing, properties_of
from .consumer import envelope_of

PREFIX = "amqpworker.chord."
INDEX_HEADER = "x-amqpworker-chord-index"
FIRED_HEADER = "x-amqpworker-chord-fired"
_READ_TIMEOUT = 30.0


class Join(enum.Enum):
    FIRED = "fired"  # this join published the body (or the failure)
    INCOMPLETE = "incomplete"  # not every header task has reported yet
    BUSY = "busy"  # another join holds the chord queue: try again shortly
    DONE = "done"  # fired earlier: nothing to do


def chord_queue(chord_id: str) -> str:
    return PREFIX + chord_id


async def declare(broker: Broker, chord_id: str, expires_seconds: float) -> None:
    async with broker.probing() as channel:
        await channel.declare_queue(
            chord_queue(chord_id),
            durable=True,
            arguments={"x-expires": max(int(expires_seconds * 1000), 1000)},
        )


async def record(broker: Broker, chord_id: str, index: int, envelope: Envelope) -> None:
    """A header task's result, into its chord's queue (a chord already fired is fine)."""
    marked = Envelope(
        body=envelope.body,
        headers={**envelope.headers, INDEX_HEADER: index},
        content_type=envelope.content_type,
        content_encoding=envelope.content_encoding,
        correlation_id=envelope.correlation_id,
        persistent=True,
    )
    await broker.publish(marked, "", chord_queue(chord_id), mandatory=False)


async def join(
    broker: Broker,
    chord_id: str,
    size: int,
    fire: Callable[[list[Envelope]], Awaitable[Sequence[Outgoing]]],
) -> Join:
    """Try to complete the chord; ``fire`` gets one result per index, in index order."""
    async with broker.probing() as channel:
        return await _join(channel, chord_id, size, fire)


async def _join(
    channel: aio_pika.abc.AbstractChannel,
    chord_id: str,
    size: int,
    fire: Callable[[list[Envelope]], Awaitable[Sequence[Outgoing]]],
) -> Join:
    name = chord_queue(chord_id)
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return Join.DONE
    if queue.declaration_result.consumer_count:
        # Another join holds the results; if it finds one missing, this join's result
        # may be that one, so this join must look again after it let go.
        return Join.BUSY
    waiting = queue.declaration_result.message_count or 0
    if waiting < size:
        return Join.INCOMPLETE
    received: list[AbstractIncomingMessage] = []
    enough = asyncio.Event()

    async def collect(message: AbstractIncomingMessage) -> None:
        received.append(message)
        if len(received) >= waiting:
            enough.set()

    await channel.set_qos(prefetch_count=0)
    try:
        tag = await queue.consume(collect, exclusive=True)
    except aiormq.exceptions.ChannelAccessRefused:
        return Join.BUSY
    try:
        await asyncio.wait_for(enough.wait(), _READ_TIMEOUT)
    except asyncio.TimeoutError:
        return Join.BUSY
    if any(message.headers and message.headers.get(FIRED_HEADER) for message in received):
        await _delete(channel, name)
        return Join.DONE
    by_index: dict[int, Envelope] = {}
    for message in received:
        index = (message.headers or {}).get(INDEX_HEADER)
        if isinstance(index, int) and 0 <= index < size:
            by_index.setdefault(index, envelope_of(message))
    if len(by_index) < size:
        # Closing the channel (in join()) removes our consumer and returns every message
        # in one step at the broker, so no other join sees "no consumer, results gone".
        return Join.INCOMPLETE
    await queue.cancel(tag)
    outgoing = await fire([by_index[index] for index in range(size)])
    transaction = channel.transaction()
    await transaction.select()
    underlay = await channel.get_underlay_channel()
    fired = Envelope(body=b"", headers={FIRED_HEADER: True}, persistent=True)
    for envelope, exchange, routing_key in [*outgoing, (fired, "", name)]:
        await underlay.basic_publish(
            envelope.body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties_of(envelope),
        )
    await received[-1].ack(multiple=True)
    await transaction.commit()
    await _delete(channel, name)
    return Join.FIRED


async def _delete(channel: aio_pika.abc.AbstractChannel, name: str) -> None:
    # If this fails, x-expires removes the queue later; the fired marker stops joins.
    with contextlib.suppress(aiormq.exceptions.AMQPError):
        await channel.queue_delete(name)
