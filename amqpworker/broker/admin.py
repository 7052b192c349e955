"""Operator actions for the CLI: apply or check a topology, look into and replay DLQs.

Each function opens its own short-lived connection. Reading a DLQ takes messages with
``basic.get`` without acknowledging them and closes the channel at the end, which puts
every message it did not act on back where it was; nothing is lost by looking.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from ..exceptions import ImproperlyConfigured
from ..topology import DLQ_SUFFIX, Topology
from ..wire import Envelope
from ..wire.deadletter import DeadLetter, fresh_headers
from . import declare
from .connection import Broker
from .consumer import envelope_of


@dataclass(frozen=True, slots=True)
class ReplayReport:
    replayed: int
    failed: list[str]


@contextlib.asynccontextmanager
async def _connected(urls: Sequence[str]) -> AsyncIterator[Broker]:
    broker = Broker(urls, name="amqpworker admin")
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()


async def apply_topology(
    urls: Sequence[str], topology: Topology, default_max_priority: int | None
) -> None:
    async with _connected(urls) as broker:
        channel = await broker.channel()
        await declare.apply(channel, topology, default_max_priority)


async def check_topology(
    urls: Sequence[str], topology: Topology, default_max_priority: int | None
) -> list[str]:
    async with _connected(urls) as broker:
        return await declare.check(broker.probe_channel, topology, default_max_priority)


def dlq_of(queue: str) -> str:
    """Accept a work queue's name or its DLQ's name."""
    return queue if queue.endswith(DLQ_SUFFIX) else queue + DLQ_SUFFIX


async def _dlq(channel: AbstractChannel, queue: str) -> aio_pika.abc.AbstractQueue:
    try:
        return await channel.declare_queue(dlq_of(queue), passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise ImproperlyConfigured(f"there is no dead-letter queue {dlq_of(queue)!r}") from None


async def _take(
    queue: aio_pika.abc.AbstractQueue, limit: int
) -> AsyncIterator[AbstractIncomingMessage]:
    for _ in range(limit):
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            return
        yield message


async def dlq_list(urls: Sequence[str], queue: str, limit: int = 100) -> list[DeadLetter]:
    """The first ``limit`` dead letters, left in place."""
    async with _connected(urls) as broker:
        channel = await broker.probe_channel()
        dlq = await _dlq(channel, queue)
        found = [
            DeadLetter.from_message(
                dict(m.headers or {}), m.message_id, queue.removesuffix(DLQ_SUFFIX)
            )
            async for m in _take(dlq, limit)
        ]
        await channel.close()  # unacknowledged: all of them go back
        return found


async def dlq_replay(
    urls: Sequence[str], queue: str, ids: Sequence[str] = (), limit: int = 100_000
) -> ReplayReport:
    """Republish dead letters (all, or those with the given ids) to where they came from.

    Each goes back with a fresh history (no ``x-death``, no ``x-amqpworker-*``), is
    confirmed by the broker, and only then removed from the DLQ.
    """
    wanted = set(ids)
    replayed, failed = 0, []
    async with _connected(urls) as broker:
        channel = await broker.probe_channel()
        dlq = await _dlq(channel, queue)
        async for message in _take(dlq, limit):
            letter = DeadLetter.from_message(
                dict(message.headers or {}), message.message_id, queue.removesuffix(DLQ_SUFFIX)
            )
            if wanted and letter.message_id not in wanted:
                continue
            try:
                await broker.publish(_fresh_copy(message), letter.exchange, letter.routing_key)
            except Exception as exc:
                failed.append(f"{letter.message_id}: {exc or type(exc).__name__}")
                continue
            await message.ack()
            replayed += 1
        await channel.close()
    return ReplayReport(replayed, failed)


async def dlq_purge(urls: Sequence[str], queue: str) -> int:
    async with _connected(urls) as broker:
        channel = await broker.probe_channel()
        dlq = await _dlq(channel, queue)
        result = await dlq.purge()
        return int(result.message_count or 0)


def _fresh_copy(message: AbstractIncomingMessage) -> Envelope:
    envelope = envelope_of(message)
    return replace(envelope, headers=fresh_headers(envelope.headers), persistent=True)
