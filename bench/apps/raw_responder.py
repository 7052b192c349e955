"""A tiny aio-pika RPC responder: the baseline's "worker" for the round trip.

``python -m bench.apps.raw_responder URL QUEUE PREFETCH READY_FILE``

For each request: decode ``[[x, y], {}]``, publish ``x + y`` to ``reply_to`` with the
request's ``correlation_id`` and wait for the confirm, then ack; the same at-least-once
order as amqpworker's worker (result confirmed before the ack). Writes READY_FILE once it
consumes; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import aio_pika

from amqpworker.loop import run as run_on_loop

from ..common import work_queue_arguments


async def serve(url: str, queue_name: str, prefetch: int, ready_file: str) -> None:
    connection = await aio_pika.connect(url, timeout=10)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.declare_queue(
        queue_name, durable=True, arguments=work_queue_arguments(queue_name)
    )
    exchange = channel.default_exchange

    async def on_request(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        args, _kwargs = json.loads(message.body)
        reply = aio_pika.Message(
            body=json.dumps(args[0] + args[1]).encode(),
            content_type="application/json",
            correlation_id=message.correlation_id,
        )
        if message.reply_to:
            await exchange.publish(reply, message.reply_to, mandatory=False, timeout=10)
        await message.ack()

    await queue.consume(on_request)
    Path(ready_file).write_text("ready")  # noqa: ASYNC240 - one tiny write at start-up
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await connection.close()


if __name__ == "__main__":
    url, queue_name, prefetch, ready_file = sys.argv[1:5]
    run_on_loop(serve(url, queue_name, int(prefetch), ready_file))
