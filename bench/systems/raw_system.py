"""The baseline: plain aio-pika doing the same broker work with no framework around it.

Queues get the same arguments as amqpworker's (classic, x-max-priority 10, a DLX) and
messages are persistent with a small JSON body and two headers, so the broker's share of
the work is the same; what differs is the Python on either side. Both sides run on the
event loop amqpworker picks (``amqpworker.loop``: uvloop where installed), so the ratio
measures amqpworker's own code, not the loop.

- ``enqueue_rate``: N sequential publishes, each awaiting its publisher confirm.
- ``enqueue_noconfirm_rate``: N sequential publishes on a channel without confirms, then
  one synchronous round trip (a passive declare) so the channel has handled all N.
- ``drain_rate``: one consumer on its own connection, prefetch = concurrency x multiplier,
  a manual ack per message, timed from the first delivery to the last ack. It runs in
  this process; ``cpu_pct`` is this process's CPU time meanwhile.
- ``rt_p50_ms``/``rt_p99_ms``: RPC to a responder process (bench.apps.raw_responder):
  publish with confirm and ``reply_to``/``correlation_id``, await the reply.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from amqpworker.loop import run as run_on_loop

from ..common import (
    BenchError,
    Config,
    Watchdog,
    broker_cpu_seconds,
    delete_queues,
    new_queue,
    percentile,
    start_process,
    stop_process,
    wait_for_file,
    work_queue_arguments,
)

T = TypeVar("T")
NOOP_BODY = b"[[], {}]"
ADD_BODY = b"[[1, 2], {}]"


def _task_message(body: bytes, name: str, **properties: str) -> aio_pika.Message:
    task_id = str(uuid.uuid4())
    return aio_pika.Message(
        body=body,
        content_type="application/json",
        message_id=task_id,
        headers={"task": name, "id": task_id},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        **properties,  # type: ignore[arg-type]
    )


def _run(coroutine: Awaitable[T], timeout: float) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return run_on_loop(bounded())


class RawSystem:
    name = "raw"
    description = "plain aio-pika: confirmed publish, manual-ack consume, RPC responder"

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-raw-"))
        self.cpu_pct = self.cpu_us_per_msg = 0.0
        self.broker_us_per_msg: float | None = None

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def measure(self, config: Config, watchdog: Watchdog) -> dict[str, float]:
        metrics: dict[str, float] = {}
        timeout = config.step_timeout
        filled = new_queue(config, "raw-drain")
        scratch = new_queue(config, "raw-noconfirm")
        try:
            with watchdog.step("raw: confirmed publish", timeout + 10):
                metrics["enqueue_rate"] = _run(
                    self._publish(config, filled, confirms=True), timeout
                )
            with watchdog.step("raw: consume", timeout + 10):
                metrics["drain_rate"] = _run(self._consume(config, filled, timeout), timeout)
                metrics["cpu_us_per_msg"] = self.cpu_us_per_msg
                metrics["cpu_pct"] = self.cpu_pct
                if self.broker_us_per_msg is not None:
                    metrics["broker_cpu_us_per_msg"] = self.broker_us_per_msg
            with watchdog.step("raw: publish without confirms", timeout + 10):
                metrics["enqueue_noconfirm_rate"] = _run(
                    self._publish(config, scratch, confirms=False), timeout
                )
        finally:
            delete_queues(config.url, [filled, scratch])
        rpc = new_queue(config, "raw-rpc")
        try:
            with watchdog.step("raw: RPC round trips", 2 * timeout):
                latencies = self._round_trips(config, rpc)
            metrics["rt_p50_ms"] = percentile(latencies, 50) * 1000
            metrics["rt_p99_ms"] = percentile(latencies, 99) * 1000
        finally:
            delete_queues(config.url, [rpc])
        return metrics

    async def _publish(self, config: Config, queue: str, confirms: bool) -> float:
        connection = await aio_pika.connect(config.url, timeout=10)
        try:
            channel = await connection.channel(publisher_confirms=confirms)
            await channel.declare_queue(queue, durable=True, arguments=work_queue_arguments(queue))
            exchange = channel.default_exchange
            began = time.perf_counter()
            for _ in range(config.n):
                await exchange.publish(_task_message(NOOP_BODY, "bench.noop"), queue, timeout=10)
            # A synchronous method is answered after the channel handled every publish
            # before it; queues enqueue asynchronously, so the count is polled untimed.
            await channel.declare_queue(queue, passive=True)
            elapsed = time.perf_counter() - began
            count = 0
            for _ in range(500):
                declared = await channel.declare_queue(queue, passive=True)
                count = declared.declaration_result.message_count or 0
                if count >= config.n:
                    break
                await asyncio.sleep(0.02)
            if count != config.n:
                raise BenchError(f"raw publish: queue holds {count} messages, not {config.n}")
            return config.n / elapsed
        finally:
            await connection.close()

    async def _consume(self, config: Config, queue: str, timeout: float) -> float:
        connection = await aio_pika.connect(config.url, timeout=10)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=config.prefetch)
            source = await channel.declare_queue(queue, passive=True)
            done = asyncio.Event()
            first: float | None = None
            last = cpu_first = cpu_last = 0.0
            broker_first: float | None = None
            broker_last: float | None = None
            count = 0

            async def on_message(message: AbstractIncomingMessage) -> None:
                nonlocal first, last, count, cpu_first, cpu_last, broker_first, broker_last
                if first is None:
                    first = time.perf_counter()
                    cpu_first = time.process_time()
                    broker_first = broker_cpu_seconds()
                await message.ack()
                count += 1
                if count == config.n:
                    last = time.perf_counter()
                    cpu_last = time.process_time()
                    broker_last = broker_cpu_seconds()
                    done.set()

            tag = await source.consume(on_message)
            await asyncio.wait_for(done.wait(), timeout)
            await source.cancel(tag)
            assert first is not None
            self.cpu_pct = 100 * (cpu_last - cpu_first) / (last - first)
            self.cpu_us_per_msg = 1e6 * (cpu_last - cpu_first) / (config.n - 1)
            self.broker_us_per_msg = (
                None
                if broker_first is None or broker_last is None
                else 1e6 * (broker_last - broker_first) / (config.n - 1)
            )
            return (config.n - 1) / (last - first)
        finally:
            await connection.close()

    def _round_trips(self, config: Config, queue: str) -> list[float]:
        ready = self.tmp / f"{queue}.ready"
        log = self.tmp / f"{queue}.log"
        # Declare before the responder starts, so nothing published can be unroutable.
        _run(self._declare(config, queue), 30)
        proc = start_process(
            [
                sys.executable,
                "-m",
                "bench.apps.raw_responder",
                config.url,
                queue,
                str(config.prefetch),
                str(ready),
            ],
            log,
        )
        try:
            wait_for_file(ready, config.step_timeout, proc, log, "raw responder start-up")
            return _run(self._rpc(config, queue), config.step_timeout)
        finally:
            stop_process(proc)

    async def _declare(self, config: Config, queue: str) -> None:
        connection = await aio_pika.connect(config.url, timeout=10)
        try:
            channel = await connection.channel()
            await channel.declare_queue(queue, durable=True, arguments=work_queue_arguments(queue))
        finally:
            await connection.close()

    async def _rpc(self, config: Config, queue: str) -> list[float]:
        connection = await aio_pika.connect(config.url, timeout=10)
        try:
            channel = await connection.channel(publisher_confirms=True)
            replies = await channel.declare_queue(exclusive=True, auto_delete=True)
            waiting: dict[str, asyncio.Future[bytes]] = {}

            async def on_reply(message: AbstractIncomingMessage) -> None:
                future = waiting.pop(message.correlation_id or "", None)
                if future is not None and not future.done():
                    future.set_result(message.body)

            await replies.consume(on_reply, no_ack=True)
            loop = asyncio.get_running_loop()
            exchange = channel.default_exchange
            latencies: list[float] = []
            for index in range(config.warmup + config.rt):
                correlation_id = uuid.uuid4().hex
                future: asyncio.Future[bytes] = loop.create_future()
                waiting[correlation_id] = future
                began = time.perf_counter()
                message = _task_message(
                    ADD_BODY, "bench.add", correlation_id=correlation_id, reply_to=replies.name
                )
                await exchange.publish(message, queue, timeout=10)
                try:
                    body = await asyncio.wait_for(future, config.rt_timeout)
                except asyncio.TimeoutError:
                    raise BenchError(f"raw RPC {index}: no reply in {config.rt_timeout}s") from None
                elapsed = time.perf_counter() - began
                if body != b"3":
                    raise BenchError(f"raw RPC returned {body!r}, not 3")
                if index >= config.warmup:
                    latencies.append(elapsed)
            return latencies
        finally:
            await connection.close()
