"""Results reach their caller across connection cuts, and a caller is told when they cannot."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from amqpworker import App, ResultLost

from .conftest import wait_for
from .proxy import CuttableProxy
from .sample_app import create_app

P = "tests.integration.sample_app."


@pytest.fixture
def caller_app(proxy: CuttableProxy, queue: str) -> Iterator[App]:
    """The caller's side goes through the proxy; the worker talks to the broker directly."""
    made = create_app(broker_url=proxy.url, task_default_queue=queue)
    yield made
    made.close()


def test_a_result_published_while_the_caller_is_cut_off_still_reaches_it(
    app: App, caller_app: App, proxy: CuttableProxy, start_worker, tmp_path: Path
) -> None:
    running = start_worker(app)
    result = caller_app.send_task(P + "record_and_wait", (str(tmp_path), "job"))
    wait_for(lambda: (tmp_path / "job.run1").exists(), 10, "the task to start")
    proxy.refusing = True
    proxy.cut()
    (tmp_path / "job.release").write_text("go")
    # The result is published while the caller has no connection at all.
    wait_for(lambda: running.worker.stats.succeeded == 1, 10, "the task to finish")
    proxy.refusing = False

    assert result.get(timeout=30) == 1


def test_a_copy_of_a_finished_task_sends_its_result_again_without_running(
    app: App, admin, queue: str, start_worker
) -> None:
    running = start_worker(app)
    first = app.tasks[P + "add"].delay(2, 3)
    assert first.get(timeout=10) == 5
    replies = admin.new_queue("replies")

    async def declare(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_queue(replies)

    admin.run(admin._with_channel(declare))
    # The same task again, as the broker redelivers it when the first ack was lost.
    admin.publish_raw(
        queue,
        aio_pika.Message(
            body=b"[[2, 3], {}]",
            headers={"task": P + "add", "id": first.id},
            content_type="application/json",
            correlation_id=first.id,
            reply_to=replies,
        ),
    )

    wait_for(lambda: admin.message_count(replies) == 1, 10, "the result sent again")
    [reply] = admin.get_all(replies)
    assert json.loads(reply.body)["result"] == 5
    assert running.worker.stats.succeeded == 1  # acked as a copy, not run again


def test_a_caller_waiting_without_timeout_is_told_its_reply_queue_is_gone(
    app: App, admin, start_worker, tmp_path: Path
) -> None:
    start_worker(app)
    result = app.send_task(P + "record_and_wait", (str(tmp_path), "job"))
    wait_for(lambda: (tmp_path / "job.run1").exists(), 10, "the task to start")
    reply_queue = app.portal.call(app.portal_client().reply_to())

    async def delete(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.queue_delete(reply_queue)

    admin.run(admin._with_channel(delete))  # an operator, or its x-expires
    try:
        with pytest.raises(ResultLost, match="gone"):
            result.get()  # no timeout: it must not wait forever
    finally:
        (tmp_path / "job.release").write_text("go")
    # The queue is back for what comes next.
    assert app.tasks[P + "add"].delay(1, 1).get(timeout=10) == 2
