"""Connection loss: the worker reconnects, resumes consuming, and never acks across channels."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from amqpworker import App

from .conftest import wait_for
from .proxy import CuttableProxy
from .sample_app import create_app

ADD = "tests.integration.sample_app.add"
WAIT = "tests.integration.sample_app.record_and_wait"


@pytest.fixture
def proxy(broker_url: str) -> Iterator[CuttableProxy]:
    running = CuttableProxy(broker_url).start()
    yield running
    running.close()


@pytest.fixture
def worker_app(proxy: CuttableProxy, queue: str) -> Iterator[App]:
    made = create_app(broker_url=proxy.url, task_default_queue=queue)
    yield made
    made.close()


def test_worker_reconnects_and_resumes_consuming(
    app: App, worker_app: App, proxy: CuttableProxy, start_worker
) -> None:
    start_worker(worker_app)
    assert app.send_task(ADD, (1, 1)).get(timeout=10) == 2
    before = proxy.connections
    proxy.cut()
    # Published while the worker is cut off; consumed once it is back.
    assert app.send_task(ADD, (2, 2)).get(timeout=30) == 4
    assert proxy.connections > before, "the worker opened new connections"


def test_delivery_from_a_dead_channel_is_never_acked_on_the_new_one(
    app: App, worker_app: App, proxy: CuttableProxy, start_worker, tmp_path, admin, queue: str
) -> None:
    running = start_worker(worker_app, concurrency=2)
    result = app.send_task(WAIT, (str(tmp_path), "job"), {"release_after": 2})
    wait_for(lambda: (tmp_path / "job.run1").exists(), 10, "the first run")
    proxy.cut()
    # The broker requeues the unacked message; the reconnected worker runs it again.
    assert result.get(timeout=30) == 2
    # Now let the first run finish: its ack must not go out on the new channel (which
    # would ack a different message or close the channel with an unknown delivery tag).
    (tmp_path / "job.release").write_text("go")
    wait_for(lambda: running.worker.stats.running == 0, 10, "the first run to end")
    assert app.send_task(ADD, (3, 3)).get(timeout=10) == 6
    assert not (tmp_path / "job.run3").exists()
    # The stale first run's late result does not change the answer the caller already has.
    assert result.get(timeout=1) == 2
    assert admin.message_count(queue) == 0
