"""Consumers registered below aio-pika: they come back whenever their channel does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aio_pika
import aiormq
import pytest

from amqpworker import App
from amqpworker.broker import Broker, Delivery
from amqpworker.topology import Topology
from amqpworker.wire import Envelope

from .proxy import CuttableProxy
from .sample_app import create_app

ADD = "tests.integration.sample_app.add"


@pytest.fixture
async def broker(broker_url: str) -> AsyncIterator[Broker]:
    connected = Broker([broker_url], name="test_consumer")
    await connected.connect()
    yield connected
    await connected.close()


class Inbox:
    """Deliveries, acked as they come; a test awaits the next body."""

    def __init__(self) -> None:
        self.bodies: asyncio.Queue[bytes] = asyncio.Queue()
        self.deliveries: list[Delivery] = []

    def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.bodies.put_nowait(delivery.envelope.body)
        asyncio.get_running_loop().create_task(delivery.ack())

    async def next(self) -> bytes:
        return await asyncio.wait_for(self.bodies.get(), 10)


async def _send(broker: Broker, queue: str, body: bytes) -> None:
    await broker.publish(Envelope(body=body), "", queue)


async def test_consuming_resumes_after_the_broker_closes_the_channel(
    broker: Broker, admin, queue: str
) -> None:
    await broker.declare_work_queue(Topology().queue(queue), None)
    inbox = Inbox()
    consumer = await broker.consume(queue, 4, inbox)
    await _send(broker, queue, b"first")
    assert await inbox.next() == b"first"
    underlay = await consumer.channel.get_underlay_channel()
    # An ack of a tag never delivered is a channel error: the broker closes the channel.
    with contextlib.suppress(aiormq.exceptions.ChannelPreconditionFailed):
        await underlay.basic_ack(delivery_tag=999_999)
    await asyncio.wait([underlay.closing], timeout=10)
    assert underlay.is_closed
    await _send(broker, queue, b"second")
    assert await inbox.next() == b"second"
    # The first delivery's channel is gone: it is stale, and acking it sends nothing.
    assert inbox.deliveries[0].stale
    assert not inbox.deliveries[1].stale
    await consumer.cancel()


async def test_consuming_resumes_after_the_broker_cancels_the_consumer(
    broker: Broker, broker_url: str, admin, queue: str
) -> None:
    await broker.declare_work_queue(Topology().queue(queue), None)
    inbox = Inbox()
    consumer = await broker.consume(queue, 4, inbox)
    connection = await aio_pika.connect(broker_url, timeout=5)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue)  # the broker sends basic.cancel to the consumer
        await channel.declare_queue(queue, durable=True)
        await _send(broker, queue, b"after the queue came back")
        assert await inbox.next() == b"after the queue came back"
    finally:
        await connection.close()
    await consumer.cancel()


async def test_a_cancelled_consumer_gets_nothing_more(broker: Broker, admin, queue: str) -> None:
    await broker.declare_work_queue(Topology().queue(queue), None)
    inbox = Inbox()
    consumer = await broker.consume(queue, 4, inbox)
    await consumer.cancel()
    await _send(broker, queue, b"stays in the queue")
    probe = await broker.probe_channel()
    declared = await probe.declare_queue(queue, passive=True)
    assert declared.declaration_result.message_count == 1
    assert declared.declaration_result.consumer_count == 0
    assert inbox.deliveries == []


def test_a_caller_gets_results_after_its_connection_was_cut(
    app: App, broker_url: str, queue: str, start_worker
) -> None:
    proxy = CuttableProxy(broker_url).start()
    caller = create_app(broker_url=proxy.url, task_default_queue=queue)
    try:
        start_worker(app)
        assert caller.send_task(ADD, (1, 1)).get(timeout=10) == 2
        proxy.cut()
        # The reply queue is declared again and consumed again on the new connection.
        assert caller.send_task(ADD, (2, 3)).get(timeout=30) == 5
    finally:
        caller.close()
        proxy.close()
