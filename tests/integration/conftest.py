"""Fixtures for tests against a real RabbitMQ.

The broker is found in this order: AMQPWORKER_TEST_URL, a broker on localhost:5672,
a RabbitMQ container through testcontainers where Docker works. If none answers, every
integration test fails with instructions; none is skipped silently.

Each test gets its own queue names and deletes what it declared (and only that), so
tests can run in parallel and twice in a row on a broker other programs share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from amqpworker import App
from amqpworker.delay import landing_queue
from amqpworker.worker import Worker

from .proxy import CuttableProxy
from .sample_app import create_app

REPO = Path(__file__).resolve().parents[2]
LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/"
HOW_TO_GET_A_BROKER = """no RabbitMQ broker is reachable for the integration tests.
Tried: AMQPWORKER_TEST_URL (unset or unreachable), {local}, and a testcontainers RabbitMQ
(Docker: {docker}). Get one by any of:
  * sudo apt-get install -y rabbitmq-server && sudo rabbitmq-server -detached
  * docker run -d -p 5672:5672 rabbitmq:3.13
  * export AMQPWORKER_TEST_URL=amqp://user:pass@host:5672/vhost
"""


async def _reachable(url: str) -> bool:
    try:
        connection = await aio_pika.connect(url, timeout=3)
    except Exception:
        return False
    await connection.close()
    return True


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    explicit = os.environ.get("AMQPWORKER_TEST_URL")
    if explicit and asyncio.run(_reachable(explicit)):
        yield explicit
        return
    if asyncio.run(_reachable(LOCAL_URL)):
        yield LOCAL_URL
        return
    docker_error = "not tried"
    try:
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13") as container:
            params = container.get_connection_params()
            url = (
                f"amqp://{params.credentials.username}:{params.credentials.password}"
                f"@{params.host}:{params.port}/"
            )
            yield url
            return
    except Exception as exc:
        docker_error = f"{type(exc).__name__}: {exc}"
    pytest.fail(HOW_TO_GET_A_BROKER.format(local=LOCAL_URL, docker=docker_error), pytrace=False)


class BrokerAdmin:
    """Declares, inspects and deletes the test's own queues over a separate connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.created: set[str] = set()
        self.exchanges: set[str] = set()

    def new_exchange(self, prefix: str = "x") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.exchanges.add(name)
        return name

    def new_queue(self, prefix: str = "t") -> str:
        """A fresh queue name; it, its DLQ and its delay landing queue are deleted after."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.created.update({name, f"{name}.dlq", landing_queue("", name)})
        return name

    def run(self, coroutine: Any) -> Any:
        return asyncio.run(coroutine)

    async def _with_channel(self, action: Callable[[Any], Any]) -> Any:
        connection = await aio_pika.connect(self.url, timeout=5)
        try:
            channel = await connection.channel()
            return await action(channel)
        finally:
            await connection.close()

    def message_count(self, queue: str) -> int:
        async def count(channel: Any) -> int:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count)

        return self.run(self._with_channel(count))

    def get_all(self, queue: str, limit: int = 1000) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Take every message out of `queue` (acked), for inspection."""

        async def take(channel: Any) -> list[Any]:
            declared = await channel.declare_queue(queue, passive=True)
            found = []
            for _ in range(limit):
                message = await declared.get(fail=False, no_ack=True)
                if message is None:
                    break
                found.append(message)
            return found

        return self.run(self._with_channel(take))

    def publish_raw(self, queue: str, message: aio_pika.Message) -> None:
        async def publish(channel: Any) -> None:
            await channel.default_exchange.publish(message, routing_key=queue)

        self.run(self._with_channel(publish))

    def cleanup(self) -> None:
        """Delete what this test declared; a failed deletion closes its channel, so each
        runs on a fresh one."""

        async def delete_all() -> None:
            connection = await aio_pika.connect(self.url, timeout=5)
            try:
                for name in self.created:
                    with contextlib.suppress(Exception):
                        await (await connection.channel()).queue_delete(name)
                for name in self.exchanges:
                    with contextlib.suppress(Exception):
                        await (await connection.channel()).exchange_delete(name)
            finally:
                await connection.close()

        self.run(delete_all())


@pytest.fixture
def admin(broker_url: str) -> Iterator[BrokerAdmin]:
    helper = BrokerAdmin(broker_url)
    yield helper
    helper.cleanup()


@pytest.fixture
def queue(admin: BrokerAdmin) -> str:
    return admin.new_queue()


@pytest.fixture
def proxy(broker_url: str) -> Iterator[CuttableProxy]:
    """A TCP proxy in front of the broker whose connections the test can cut."""
    running = CuttableProxy(broker_url).start()
    yield running
    running.close()


@pytest.fixture
def app(broker_url: str, queue: str) -> Iterator[App]:
    made = create_app(broker_url=broker_url, task_default_queue=queue)
    yield made
    made.close()


class RunningWorker:
    """A Worker on its own thread and event loop, as a test's background process."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-worker", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.worker.run())
        except BaseException as exc:
            self.error = exc
            self.worker.ready.set()

    def start(self) -> RunningWorker:
        self.thread.start()
        assert self.worker.ready.wait(20), "worker did not start consuming within 20s"
        if self.error is not None:
            raise self.error
        return self

    def stop(self, timeout: float = 30) -> None:
        self.worker.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"


@pytest.fixture
def start_worker() -> Iterator[Callable[..., RunningWorker]]:
    """Factory: start_worker(app, queues=None, **options) -> a consuming in-process worker."""
    running: list[RunningWorker] = []

    def start(app: App, queues: list[str] | None = None, **options: Any) -> RunningWorker:
        options.setdefault("concurrency", 4)
        options.setdefault("shutdown_timeout", 10)
        worker = RunningWorker(Worker(app, queues, **options)).start()
        running.append(worker)
        return worker

    yield start
    for worker in running:
        if worker.thread.is_alive():
            worker.stop()


class CliProcess:
    """`amqpworker ARGS...` as a subprocess; each output line is kept with when it came."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.stamped: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "amqpworker", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stamped.append((time.monotonic(), line))
            self._on_line(line)

    def _on_line(self, line: str) -> None:
        """A subclass watches for a line here (called on the reader thread)."""

    @property
    def output(self) -> str:
        return "".join(line for _, line in self.stamped)

    def first(self, text: str, after: float = 0.0) -> float | None:
        """When a line containing ``text`` first came (monotonic), after ``after``."""
        return next((at for at, line in self.stamped if text in line and at >= after), None)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(5)
        assert self.process.stdout is not None
        self.process.stdout.close()


class ServeProcess(CliProcess):
    """`amqpworker serve` as a subprocess, with its output collected."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self._consuming = threading.Event()
        super().__init__(["serve", *args], env)

    def _on_line(self, line: str) -> None:
        if "consuming" in line:
            self._consuming.set()

    def wait_consuming(self, timeout: float = 30) -> ServeProcess:
        if not self._consuming.wait(timeout):
            self.process.kill()
            raise AssertionError(f"worker did not start within {timeout}s:\n{self.output}")
        return self


@pytest.fixture
def serve(broker_url: str, queue: str) -> Iterator[Callable[..., ServeProcess]]:
    """Factory: serve(*extra_args, queue=..., app=...) -> a running `amqpworker serve`."""
    started: list[ServeProcess] = []

    def start(
        *extra: str,
        queues: str | None = None,
        app_path: str = "tests.integration.sample_app",
        env: dict[str, str] | None = None,
    ) -> ServeProcess:
        environment = {
            **os.environ,
            "AMQPWORKER_BROKER_URL": broker_url,
            "AMQPWORKER_TASK_DEFAULT_QUEUE": queue,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        args = ["-A", app_path, "--queues", queues or queue, *extra]
        process = ServeProcess(args, environment)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`amqpworker ...` as a subprocess from the repository root (in ``env``, if given)."""
    return subprocess.run(
        [sys.executable, "-m", "amqpworker", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition on the file system or broker; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
