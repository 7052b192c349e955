"""Events and `amqpworker events`: against the real broker and `amqpworker serve -E`.

Other programs may publish events on a shared broker, so every assertion looks only at
events from this test's own worker (a name of its own) or about its own task ids.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
import os
import pty
import queue as queues
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
import pytest

from amqpworker import App
from amqpworker.broker import Broker
from amqpworker.broker.events import consume_events, monitor_queue_arguments
from amqpworker.wire.events import EVENT_EXCHANGE

from .conftest import REPO, BrokerAdmin, wait_for

P = "tests.integration.sample_app."
Event = dict[str, Any]


def _name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"


class Monitor:
    """`amqpworker events --dump` as a subprocess; its lines are read with timeouts."""

    def __init__(self, broker_url: str, *args: str) -> None:
        env = {**os.environ, "AMQPWORKER_BROKER_URL": broker_url, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "amqpworker", "events", "--dump", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queues.Queue[str] = queues.Queue()
        self.errors: list[str] = []
        self._ready = threading.Event()
        self.queue_name = ""
        self._readers = [
            threading.Thread(target=self._read_out, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_out(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(line)

    def _read_err(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.errors.append(line)
            found = re.search(r"\(queue (\S+)\)", line)
            if found:
                self.queue_name = found.group(1)
                self._ready.set()

    def wait_ready(self, timeout: float = 20) -> Monitor:
        assert self._ready.wait(timeout), f"monitor did not start: {''.join(self.errors)}"
        return self

    def collect(self, done: Callable[[list[Event]], bool], timeout: float = 20) -> list[Event]:
        """Events read until ``done(events)`` holds; fails after ``timeout`` seconds."""
        seen: list[Event] = []
        deadline = time.monotonic() + timeout
        while not done(seen):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; events seen: {seen}\n{''.join(self.errors)}")
            try:
                line = self.events.get(timeout=remaining)
            except queues.Empty:
                continue
            seen.append(json.loads(line))
        return seen

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for reader in self._readers:
            reader.join(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def monitor(broker_url: str):
    started: list[Monitor] = []

    def start(*args: str) -> Monitor:
        running = Monitor(broker_url, *args)
        started.append(running)
        return running.wait_ready()

    yield start
    for running in started:
        running.close()


def _about(task_id: str) -> Callable[[Event], bool]:
    return lambda event: event.get("uuid") == task_id


def _types(events: list[Event], keep: Callable[[Event], bool]) -> list[str]:
    return [event["type"] for event in events if keep(event)]


def test_dump_prints_sent_received_started_succeeded(app: App, serve, monitor) -> None:
    watcher = monitor()
    name = _name("events")
    serve("-E", "-n", name).wait_consuming()
    app.conf.task_send_sent_event = True

    result = app.send_task(P + "add", (2, 3))
    assert result.get(timeout=10) == 5

    wanted = {"task-sent", "task-received", "task-started", "task-succeeded"}
    events = watcher.collect(lambda seen: wanted <= set(_types(seen, _about(result.id))))
    mine = {event["type"]: event for event in events if _about(result.id)(event)}
    sent, received = mine["task-sent"], mine["task-received"]
    assert sent["name"] == received["name"] == P + "add"
    assert sent["args"] == received["args"] == "(2, 3)"
    assert sent["queue"] == app.conf.task_default_queue
    assert sent["hostname"].startswith("gen")
    assert received["hostname"] == mine["task-started"]["hostname"] == name
    succeeded = mine["task-succeeded"]
    assert succeeded["result"] == "5"
    assert succeeded["runtime"] >= 0
    # One worker's events in the order they happened, by its clock.
    clocks = [mine[kind]["clock"] for kind in ("task-received", "task-started", "task-succeeded")]
    assert clocks == sorted(clocks)
    for event in mine.values():
        assert {"timestamp", "utcoffset", "pid", "clock"} <= set(event)
    assert watcher.stop() == 0


def test_a_failing_task_sends_task_failed_with_its_exception(app: App, serve, monitor) -> None:
    watcher = monitor("--only", "task")
    serve("-E", "-n", _name("failing")).wait_consuming()

    result = app.send_task(P + "div", (1, 0))
    with pytest.raises(ZeroDivisionError):
        result.get(timeout=10)

    events = watcher.collect(lambda seen: "task-failed" in _types(seen, _about(result.id)))
    [failed] = [e for e in events if e["type"] == "task-failed" and _about(result.id)(e)]
    assert failed["exception"] == "ZeroDivisionError('division by zero')"
    assert "ZeroDivisionError" in failed["traceback"]
    assert "task-succeeded" not in _types(events, _about(result.id))


def test_revoked_and_rejected_tasks_are_announced(app: App, serve, monitor) -> None:
    watcher = monitor()
    serve("-E", "-n", _name("endings")).wait_consuming()

    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=10)
    expired = app.send_task(P + "add", (1, 1), expires=past)
    unknown = app.send_task("no.such.task")

    def both(seen: list[Event]) -> bool:
        return "task-revoked" in _types(seen, _about(expired.id)) and "task-rejected" in _types(
            seen, _about(unknown.id)
        )

    events = watcher.collect(both)
    [revoked] = [e for e in events if e["type"] == "task-revoked" and _about(expired.id)(e)]
    assert revoked["expired"] is True
    assert revoked["terminated"] is False
    assert "task-started" not in _types(events, _about(expired.id))
    [rejected] = [e for e in events if e["type"] == "task-rejected" and _about(unknown.id)(e)]
    assert rejected["requeue"] is False
    assert rejected["reason"] == "unknown-task"


def test_worker_online_heartbeat_offline(serve, monitor) -> None:
    watcher = monitor("--only", "worker")
    name = _name("presence")
    worker = serve("-E", "-n", name).wait_consuming()

    def of_mine(kind: str) -> Callable[[list[Event]], bool]:
        return lambda seen: kind in _types(seen, lambda e: e["hostname"] == name)

    events = watcher.collect(of_mine("worker-heartbeat"))
    online = next(e for e in events if e["hostname"] == name)
    assert online["type"] == "worker-online"
    beat = next(e for e in events if e["hostname"] == name and e["type"] == "worker-heartbeat")
    assert beat["freq"] == 2.0
    assert beat["active"] == 0
    assert beat["processed"] == 0
    assert len(beat["loadavg"]) == 3
    assert beat["sw_ident"] == "amqpworker"

    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    watcher.collect(of_mine("worker-offline"))


def test_events_off_publish_nothing(app: App, serve, admin: BrokerAdmin) -> None:
    """A worker without -E and a caller without task_send_sent_event send no event."""
    tap = admin.new_queue("events-tap")

    async def bind() -> None:
        connection = await aio_pika.connect(admin.url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                EVENT_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
            )
            declared = await channel.declare_queue(tap, auto_delete=False)
            await declared.bind(exchange, "#")

    admin.run(bind())
    name = _name("quiet")
    worker = serve("-n", name).wait_consuming()
    result = app.send_task(P + "add", (1, 2))
    assert result.get(timeout=10) == 3
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0  # its connections are closed: what it sent is routed

    sentinel = str(uuid.uuid4())

    async def publish_sentinel() -> None:
        connection = await aio_pika.connect(admin.url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(EVENT_EXCHANGE)
            body = json.dumps({"type": "test-sentinel", "hostname": sentinel}).encode()
            await exchange.publish(aio_pika.Message(body), routing_key="test.sentinel")

    admin.run(publish_sentinel())
    seen = [json.loads(message.body) for message in admin.get_all(tap)]
    assert any(event.get("hostname") == sentinel for event in seen)
    assert [e for e in seen if e.get("hostname") == name or e.get("uuid") == result.id] == []


def test_a_malformed_event_is_warned_about_once_and_the_monitor_goes_on(
    monitor, broker_url: str
) -> None:
    watcher = monitor()
    good = str(uuid.uuid4())

    async def publish() -> None:
        connection = await aio_pika.connect(broker_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(EVENT_EXCHANGE)
            for body in (b"not json at all", b'{"type": "task-succeeded", "hostname": "x"}'):
                await exchange.publish(aio_pika.Message(body), routing_key="task.succeeded")
            event = {"type": "task-succeeded", "hostname": "h@x", "uuid": good, "result": "1"}
            await exchange.publish(
                aio_pika.Message(json.dumps(event).encode(), content_type="application/json"),
                routing_key="task.succeeded",
            )

    asyncio.run(publish())
    watcher.collect(lambda seen: any(e.get("uuid") == good for e in seen))
    warnings = [line for line in watcher.errors if "malformed event" in line]
    assert len(warnings) == 1, watcher.errors
    assert "not JSON" in warnings[0]
    assert watcher.process.poll() is None
    assert watcher.stop() == 0


async def test_a_monitor_queue_is_bounded_and_goes_with_its_connection(broker_url: str) -> None:
    broker = Broker([broker_url], name="events-test")
    await broker.connect()
    try:
        name, consumer = await consume_events(
            broker, lambda delivery: None, ttl=7.0, expires=30.0, max_length=123
        )
        expected = monitor_queue_arguments(7.0, 30.0, 123)
        assert expected == {
            "x-message-ttl": 7000,
            "x-expires": 30000,
            "x-max-length": 123,
            "x-overflow": "drop-head",
        }
        # The broker accepts a declaration only with arguments equal to the queue's.
        async with broker.probing() as channel:
            await channel.declare_queue(name, exclusive=True, auto_delete=True, arguments=expected)
        for changed in ({"x-max-length": 124}, {"x-message-ttl": 6000}):
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
                async with broker.probing() as channel:
                    await channel.declare_queue(
                        name, exclusive=True, auto_delete=True, arguments={**expected, **changed}
                    )
        await consumer.cancel()
    finally:
        await broker.close()
    other = Broker([broker_url], name="events-test-check")
    await other.connect()
    try:
        assert not await other.queue_exists(name)
    finally:
        await other.close()


def _set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def test_live_view_in_a_terminal_shows_the_worker_and_a_succeeded_count(
    app: App, serve, broker_url: str
) -> None:
    name = _name("live")
    serve("-E", "-n", name).wait_consuming()
    master, slave = pty.openpty()
    _set_size(slave, 50, 160)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update({"AMQPWORKER_BROKER_URL": broker_url, "TERM": "xterm-256color"})
    process = subprocess.Popen(
        [sys.executable, "-m", "amqpworker", "events"],
        cwd=REPO,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def read_screen() -> None:  # always: a full terminal would block the view's writes
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read_screen, daemon=True)
    reader.start()
    try:
        assert process.stderr is not None
        ready, _, _ = select.select([process.stderr], [], [], 20)
        assert ready, "the live view did not start"
        assert b"watching events" in process.stderr.readline()
        assert app.send_task(P + "add", (1, 1)).get(timeout=10) == 2

        pattern = re.compile(r"succeeded\s*[│|]?\s*([1-9]\d*)")

        def last_frame() -> str:
            text = ANSI.sub("", b"".join(chunks).decode(errors="replace"))
            return text[text.rfind("amqpworker events") :]  # from the last header on

        wait_for(
            lambda: name in last_frame() and bool(pattern.search(last_frame())),
            20,
            "a frame with the worker and a succeeded count",
        )
        frame = last_frame()
        assert "online" in frame
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(master)
        reader.join(5)
        assert process.stderr is not None
        process.stderr.close()
