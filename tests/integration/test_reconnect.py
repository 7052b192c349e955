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


def test_a_task_redelivered_while_it_runs_is_not_started_again(
    app: App, worker_app: App, proxy: CuttableProxy, start_worker, tmp_path, admin, queue: str
) -> None:
    running = start_worker(worker_app, concurrency=2)
    result = app.send_task(WAIT, (str(tmp_path), "job"))
    wait_for(lambda: (tmp_path / "job.run1").exists(), 10, "the first run")
    proxy.cut()
    # The broker takes the unacked message back and delivers it again (counted: the
    # worker republishes it with its delivery count, so it arrives a third time).
    wait_for(lambda: running.worker.stats.received >= 3, 30, "the copy to come back")
    assert not (tmp_path / "job.run2").exists(), "a running task id was started again"
    # The first run finishes: its ack cannot go out on the new channel (it would ack a
    # different message, or close the channel with an unknown delivery tag); the copy
    # that waited for it is acked instead, and the caller gets the first run's result.
    (tmp_path / "job.release").write_text("go")
    assert result.get(timeout=30) == 1
    wait_for(lambda: running.worker.stats.running == 0, 10, "the first run to end")
    assert app.send_task(ADD, (3, 3)).get(timeout=10) == 6
    assert not (tmp_path / "job.run2").exists()
    wait_for(lambda: admin.message_count(queue) == 0, 10, "the copy to be acked")
