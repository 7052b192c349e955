"""Remote control on the broker: a fanout exchange, a queue per worker, replies per call.

Every worker binds an exclusive, auto-deleted queue of its own to the fanout exchange
:data:`~amqpworker.wire.control.CONTROL_EXCHANGE`, so a command reaches every running
worker and nothing is left behind by one that is gone. A caller publishes a command with
a server-named exclusive queue of its own as ``reply_to``, collects replies until the
timeout (or until every worker it named has answered), and the queue goes with its
channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from ..wire import Envelope
from ..wire.control import CONTROL_EXCHANGE
from .connection import Broker
from .consumer import Consumer, Delivery, envelope_of

#: Commands a worker may hold before answering (it answers each at once, on its loop).
CONTROL_PREFETCH = 16


async def _declare_exchange(channel: AbstractChannel) -> aio_pika.abc.AbstractExchange:
    return await channel.declare_exchange(
        CONTROL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )


async def consume_commands(
    broker: Broker, worker_name: str, on_delivery: Callable[[Delivery], None]
) -> Consumer:
    """The worker's control queue, bound to the control exchange, consumed with acks."""
    name = f"{CONTROL_EXCHANGE}.{worker_name}.{uuid.uuid4().hex[:8]}"

    async def declare() -> None:  # again after a reconnect: an exclusive queue went with it
        async with broker.probing() as channel:
            exchange = await _declare_exchange(channel)
            queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
            await queue.bind(exchange)

    await declare()
    return await broker.consume(name, CONTROL_PREFETCH, on_delivery, prepare=declare)


async def broadcast(
    broker: Broker,
    make: Callable[[str | None], Envelope],
    *,
    reply: bool,
    timeout: float,
    limit: int | None,
) -> list[Envelope]:
    """Publish a command (``make(reply_to)``) and collect replies for ``timeout`` seconds.

    Stops early once ``limit`` replies came. Without ``reply`` it only publishes.
    """
    async with broker.probing() as channel:
        await _declare_exchange(channel)
        if not reply:
            await broker.publish(make(None), CONTROL_EXCHANGE, "", mandatory=False)
            return []
        replies: list[Envelope] = []
        enough = asyncio.get_running_loop().create_future()

        async def collect(message: AbstractIncomingMessage) -> None:
            replies.append(envelope_of(message))
            if limit is not None and len(replies) >= limit and not enough.done():
                enough.set_result(None)

        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.consume(collect, no_ack=True)
        await broker.publish(make(queue.name), CONTROL_EXCHANGE, "", mandatory=False)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(enough), timeout)
        return list(replies)
