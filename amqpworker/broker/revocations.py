"""Revocations in a stream queue: kept by the broker, read by every worker from the past.

A stream keeps every revocation for its maximum age, however many workers read it and
whenever they start; a classic or quorum queue would hand each message to one consumer
only. Retention drops whole segments, so segments are kept small for the age to bite.
A worker reads from ``since`` (its start minus how long a revoke holds), and knows it
has read everything published before it started when its own marker comes back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import aiormq

from ..log import get_logger
from ..wire.revocations import MARKER_TYPE, REVOCATIONS_QUEUE, Revocation, marker
from .connection import Broker
from .consumer import Consumer, Delivery

log = get_logger(__name__)

#: Stream segments of 1 MB (RabbitMQ's default is 500 MB, which a trickle of revokes
#: would never fill, so nothing would ever age out).
SEGMENT_BYTES = 1_000_000
#: Revocations a worker may hold unacknowledged while reading the stream.
PREFETCH = 500


async def declare(broker: Broker, max_age: float) -> None:
    """Declare the stream; one that exists with other arguments is used as it is."""
    arguments: dict[str, Any] = {
        "x-queue-type": "stream",
        "x-max-age": f"{max(int(max_age), 1)}s",
        "x-stream-max-segment-size-bytes": SEGMENT_BYTES,
    }
    try:
        async with broker.probing() as channel:
            await channel.declare_queue(REVOCATIONS_QUEUE, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        log.info("the revocations stream exists with other arguments; using it", error=str(exc))


async def publish(broker: Broker, revocation: Revocation, max_age: float) -> None:
    """Store a revocation durably (publisher-confirmed)."""
    await declare(broker, max_age)
    await broker.publish(revocation.encode(), "", REVOCATIONS_QUEUE)


async def follow(
    broker: Broker,
    since: dt.datetime,
    on_revocation: Callable[[Revocation], None],
    timeout: float,
) -> Consumer:
    """Read the stream from ``since`` on; returns once everything up to now is read.

    Malformed messages are skipped with a warning: a revocation is a hint to skip work,
    and a bad one must never stop a worker.
    """
    token = uuid.uuid4().hex
    caught_up = asyncio.get_running_loop().create_future()

    def deliver(delivery: Delivery) -> None:
        envelope = delivery.envelope
        delivery.ack_soon()  # acks only grant a stream consumer more credit
        if envelope.type == MARKER_TYPE:
            if envelope.message_id == token and not caught_up.done():
                caught_up.set_result(None)
            return
        try:
            on_revocation(Revocation.decode(envelope))
        except Exception as exc:
            log.warning("skipped a malformed revocation", error=str(exc))

    consumer = await broker.consume(
        REVOCATIONS_QUEUE, PREFETCH, deliver, arguments={"x-stream-offset": since}
    )
    await broker.publish(marker(token), "", REVOCATIONS_QUEUE)
    try:
        await asyncio.wait_for(caught_up, timeout)
    except asyncio.TimeoutError:
        log.warning(
            "revocations not read up to now in time; going on, later ones still apply",
            seconds=timeout,
        )
    return consumer
