"""Publishing: confirms, mandatory routing, routes, priorities and headers on the wire."""

from __future__ import annotations

import pytest

from amqpworker import App, PublishError, UnroutableError


def test_unroutable_task_is_an_error_the_caller_sees(app: App) -> None:
    add = app.tasks["tests.integration.sample_app.add"]
    with pytest.raises(UnroutableError, match="nowhere"):
        add.apply_async((1, 2), exchange="amq.direct", routing_key="nowhere-at-all")


def test_missing_exchange_is_an_error_and_the_client_recovers(app: App, queue: str, admin) -> None:
    add = app.tasks["tests.integration.sample_app.add"]
    with pytest.raises(PublishError, match="does not exist"):
        add.apply_async((1, 2), exchange="no-such-exchange-for-amqpworker", routing_key="x")
    add.apply_async((1, 2))
    assert admin.message_count(queue) == 1


async def test_unroutable_from_asyncio(app: App) -> None:
    add = app.tasks["tests.integration.sample_app.add"]
    with pytest.raises(UnroutableError):
        await add.aapply_async((1, 2), exchange="amq.direct", routing_key="nowhere-at-all")
    await app.aclose()


def test_glob_route_sends_to_its_queue(app: App, admin, start_worker) -> None:
    images = admin.new_queue("images")
    app.conf.task_routes = {"tests.integration.sample_app.a*": {"queue": images}}
    start_worker(app, queues=[images])
    assert app.tasks["tests.integration.sample_app.add"].delay(1, 1).get(timeout=10) == 2
    assert admin.message_count(images) == 0


def test_message_on_the_wire(app: App, admin, queue: str) -> None:
    add = app.tasks["tests.integration.sample_app.add"]
    result = add.apply_async((1, 2), priority=7, headers={"tenant": "a"})
    [message] = admin.get_all(queue)
    assert message.body == b"[[1,2],{}]"
    assert message.priority == 7
    assert message.content_type == "application/json"
    assert message.correlation_id == result.id
    assert message.type == "tests.integration.sample_app.add"
    assert message.reply_to
    assert message.reply_to.startswith("sample.reply.")
    assert message.delivery_mode == 2
    headers = message.headers
    assert headers["task"] == "tests.integration.sample_app.add"
    assert headers["id"] == result.id
    assert headers["root_id"] == result.id
    assert headers["tenant"] == "a"
    assert headers["x-amqpworker-protocol"] == 1


def test_ignore_result_publishes_without_reply_to(app: App, admin, queue: str) -> None:
    app.tasks["tests.integration.sample_app.add"].apply_async((1, 2), ignore_result=True)
    [message] = admin.get_all(queue)
    assert message.reply_to is None


def test_queue_is_declared_with_priority_and_dead_letter_queue(app: App, admin, queue: str) -> None:
    app.tasks["tests.integration.sample_app.add"].delay(1, 2)
    assert admin.message_count(queue) == 1
    assert admin.message_count(f"{queue}.dlq") == 0


def test_send_many_publishes_in_one_batch_in_order(app: App, start_worker) -> None:
    start_worker(app, concurrency=8)
    add = app.tasks["tests.integration.sample_app.add"]
    results = app.send_many([(add, (i, i)) for i in range(500)] + [(add.name, (1,), {"y": 1})])
    assert [r.get(timeout=30) for r in results] == [2 * i for i in range(500)] + [2]


async def test_asend_many_reports_an_unroutable_call(app: App) -> None:
    add = app.tasks["tests.integration.sample_app.add"]
    with pytest.raises(UnroutableError):
        await app.asend_many(
            [(add, (1, 1)), (add, (1, 1), {}, {"exchange": "amq.direct", "routing_key": "void"})]
        )
    await app.aclose()


def test_user_headers_cannot_replace_core_headers(app: App) -> None:
    with pytest.raises(TypeError, match="'task'"):
        app.tasks["tests.integration.sample_app.add"].apply_async((1, 2), headers={"task": "x"})
