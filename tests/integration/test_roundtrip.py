"""A task published from sync or asyncio code runs on a worker; the result comes back."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from amqpworker import App, AsyncResult, states
from amqpworker.exceptions import BrokerUnavailable

from .sample_app import create_app


def test_sync_delay_get(app: App, start_worker) -> None:
    start_worker(app)
    result = app.tasks["tests.integration.sample_app.add"].delay(2, 2)
    assert result.get(timeout=10) == 4
    assert result.state == states.SUCCESS
    assert result.ready()
    assert result.successful()
    assert not result.failed()
    assert result.date_done is not None
    assert result.task_name == "tests.integration.sample_app.add"
    assert result.task_id == result.id


async def test_asyncio_adelay_and_await(app: App, start_worker) -> None:
    start_worker(app)
    add = app.tasks["tests.integration.sample_app.add"]
    result = await add.adelay(2, 2)
    assert await result.aget(timeout=10) == 4
    again = await add.aapply_async((20, 22))
    assert await again == 42
    await app.aclose()


async def test_coroutine_task_runs_on_worker_loop(app: App, start_worker) -> None:
    start_worker(app)
    result = await app.tasks["tests.integration.sample_app.ahello"].adelay("you")
    assert await result.aget(timeout=10) == "hello you"
    await app.aclose()


def test_send_task_by_name(app: App, start_worker) -> None:
    start_worker(app)
    assert app.send_task("tests.integration.sample_app.add", args=(1, 2)).get(timeout=10) == 3


def test_bound_task_sees_its_request(app: App, start_worker, queue: str) -> None:
    start_worker(app)
    result = app.tasks["tests.integration.sample_app.whoami"].apply_async(
        (1,), {"k": "v"}, headers={"tenant": "a"}
    )
    seen = result.get(timeout=10)
    assert seen["id"] == result.id
    assert seen["args"] == [1]
    assert seen["kwargs"] == {"k": "v"}
    assert seen["retries"] == 0
    assert seen["queue"] == queue
    assert seen["headers"] == {"tenant": "a"}
    assert seen["thread"].startswith("task"), "plain functions run in the thread pool"


def test_asyncio_pool_runs_plain_functions_on_the_loop(app: App, start_worker) -> None:
    start_worker(app, pool="asyncio")
    seen = app.tasks["tests.integration.sample_app.whoami"].delay().get(timeout=10)
    assert seen["thread"] == "test-worker"


async def test_many_results_awaited_at_once_from_one_client(app: App, start_worker) -> None:
    start_worker(app, concurrency=8)
    add = app.tasks["tests.integration.sample_app.add"]
    results = [await add.adelay(i, i) for i in range(100)]
    values = await asyncio.wait_for(asyncio.gather(*(r.aget() for r in results)), 30)
    assert values == [2 * i for i in range(100)]
    await app.aclose()


def test_results_awaited_from_several_threads(app: App, start_worker) -> None:
    start_worker(app, concurrency=8)
    add = app.tasks["tests.integration.sample_app.add"]

    def call(i: int) -> int:
        return add.delay(i, 1).get(timeout=20)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(call, range(80))) == [i + 1 for i in range(80)]


def test_result_by_id_after_the_fact(app: App, start_worker) -> None:
    start_worker(app)
    result = app.tasks["tests.integration.sample_app.add"].delay(3, 4)
    assert result.get(timeout=10) == 7
    same = AsyncResult(result.id, app=app)
    assert same.state == states.SUCCESS
    assert same.get(timeout=1) == 7
    assert AsyncResult("no-such-id", app=app).state == states.PENDING


def test_base_class_hooks_run(app: App, start_worker, tmp_path) -> None:
    start_worker(app)
    marker = tmp_path / "hook.marker"
    recorded = app.tasks["tests.integration.sample_app.recorded"]
    assert recorded.delay(21, marker=str(marker)).get(timeout=10) == 42
    assert marker.with_suffix(".after_return").read_text() == "SUCCESS"


def test_msgpack_and_yaml_round_trip(app: App, start_worker) -> None:
    start_worker(app)
    add = app.tasks["tests.integration.sample_app.add"]
    assert add.apply_async((1, 2), serializer="msgpack").get(timeout=10) == 3
    assert add.apply_async(([1], [2]), serializer="yaml").get(timeout=10) == [1, 2]


def test_several_broker_urls_fail_over_on_connect(
    broker_url: str, queue: str, start_worker
) -> None:
    dead = "amqp://guest:guest@127.0.0.1:1/"
    app = create_app(broker_url=f"{dead};{broker_url}", task_default_queue=queue)
    start_worker(app)
    assert app.tasks["tests.integration.sample_app.add"].delay(1, 1).get(timeout=10) == 2
    app.close()


def test_no_reachable_broker_is_a_clear_error(queue: str) -> None:
    app = create_app(broker_url="amqp://guest:secret@127.0.0.1:1/", task_default_queue=queue)
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1") as caught:
        app.tasks["tests.integration.sample_app.add"].delay(1, 1)
    assert "secret" not in str(caught.value)
    app.close()
