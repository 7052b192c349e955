"""Workflows in message headers: chain, group, chord, chunks, callbacks, errbacks."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from amqpworker import App, GroupResult, chain, chord, group, states
from amqpworker.exceptions import PublishError, WorkflowError

from .conftest import wait_for

P = "tests.integration.sample_app."


def t(app: App, name: str):  # type: ignore[no-untyped-def]
    return app.tasks[P + name]


def test_chain_returns_the_last_result_and_walks_back(app: App, start_worker) -> None:
    start_worker(app)
    add = t(app, "add")
    result = (add.s(2, 2) | add.s(4) | add.s(8)).apply_async()
    assert result.get(timeout=10) == 16
    assert result.parent.get(timeout=10) == 8
    assert result.parent.parent.get(timeout=10) == 4
    assert result.parent.parent.parent is None


def test_immutable_step_ignores_the_parent_result(app: App, start_worker) -> None:
    start_worker(app)
    result = (t(app, "add").s(1, 1) | t(app, "echo").si(True)).apply_async()
    assert result.get(timeout=10) == [True]


def test_partial_arguments_are_prepended_like_celery(app: App, start_worker) -> None:
    start_worker(app)
    result = chain(t(app, "echo").s("a"), t(app, "echo").s("b")).apply_async()
    assert result.get(timeout=10) == [["a"], "b"]
    assert t(app, "echo").s("x").delay("y").get(timeout=10) == ["y", "x"]
    assert t(app, "echo").s("x")("y") == ["y", "x"]


def test_chain_failure_stops_it_and_reaches_the_caller_and_errback(
    app: App, start_worker, tmp_path: Path
) -> None:
    start_worker(app)
    marker = tmp_path / "errback"
    add, div = t(app, "add"), t(app, "div")
    workflow = (div.s(1, 0) | add.s(1) | add.s(2)).on_error(t(app, "record_error").s(str(marker)))
    result = workflow.apply_async()
    with pytest.raises(ZeroDivisionError):
        result.get(timeout=10)
    assert result.parent.state == states.FAILURE
    assert isinstance(result.parent.parent.result, ZeroDivisionError)
    assert marker.read_text() == f"{result.parent.parent.id} ZeroDivisionError: division by zero"


def test_group_results_in_submission_order(app: App, start_worker) -> None:
    start_worker(app, concurrency=8)
    add = t(app, "add")
    result = group(add.s(i, i) for i in range(10)).apply_async()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=10) == [2 * i for i in range(10)]
    assert result.ready()
    assert result.successful()
    assert not result.failed()
    assert result.completed_count() == 10
    assert [r.state for r in result.results] == [states.SUCCESS] * 10
    assert result.join(timeout=1) == result.get(timeout=1)


async def test_group_from_asyncio(app: App, start_worker) -> None:
    start_worker(app)
    add = t(app, "add")
    result = await group(add.s(i, 1) for i in range(5)).aapply_async()
    assert await result.aget(timeout=10) == [1, 2, 3, 4, 5]
    await app.aclose()


def test_chord_of_a_hundred(app: App, start_worker) -> None:
    start_worker(app, concurrency=8)
    add, tsum = t(app, "add"), t(app, "tsum")
    assert chord(add.s(i, i) for i in range(100))(tsum.s()).get(timeout=30) == 9900
    assert chord([add.s(i, i) for i in range(5)], tsum.s()).apply_async().get(timeout=10) == 20


def test_group_piped_into_a_task_is_a_chord(app: App, start_worker) -> None:
    start_worker(app)
    add, tsum = t(app, "add"), t(app, "tsum")
    result = (group(add.s(i, i) for i in range(4)) | tsum.s()).apply_async()
    assert result.get(timeout=10) == 12
    assert result.parent.get(timeout=10) == [0, 2, 4, 6]


def test_chord_then_more_steps(app: App, start_worker) -> None:
    start_worker(app)
    add, tsum = t(app, "add"), t(app, "tsum")
    result = (chord([add.s(1, 1), add.s(2, 2)], tsum.s()) | add.s(10)).apply_async()
    assert result.get(timeout=10) == 16


def test_failing_header_fails_the_chord_without_running_the_body(
    app: App, start_worker, tmp_path: Path
) -> None:
    start_worker(app)
    runs, marker = tmp_path / "body-runs", tmp_path / "errback"
    add, div = t(app, "add"), t(app, "div")
    body = t(app, "sum_once").s(str(runs)).on_error(t(app, "record_error").s(str(marker)))
    result = chord([add.s(1, 1), div.s(1, 0), add.s(2, 2)], body).apply_async()
    with pytest.raises(ZeroDivisionError):
        result.get(timeout=15)
    assert result.state == states.FAILURE
    assert not runs.exists()
    # The errback runs after the join committed; the caller may hear of the failure first.
    wait_for(lambda: marker.exists(), 10, "the chord's errback")
    assert "ZeroDivisionError: division by zero" in marker.read_text()


def test_chunks_and_a_chord_over_chunks(app: App, start_worker) -> None:
    start_worker(app)
    add = t(app, "add")
    parts = add.chunks(zip(range(100), range(100), strict=True), 10)().get(timeout=20)
    assert [value for part in parts for value in part] == [2 * i for i in range(100)]
    grouped = add.chunks(zip(range(10), range(10), strict=True), 3).group()
    assert len(grouped.tasks) == 4
    flat = chord(add.chunks(zip(range(100), range(100), strict=True), 10), t(app, "flatten").s())
    assert flat.apply_async().get(timeout=20) == [2 * i for i in range(100)]


def test_map_and_starmap(app: App, start_worker) -> None:
    start_worker(app)
    tsum, add = t(app, "tsum"), t(app, "add")
    assert tsum.map([range(10), range(100)])() == [45, 4950]
    assert tsum.map([range(10), range(100)]).delay().get(timeout=10) == [45, 4950]
    assert add.starmap(zip(range(10), range(10), strict=True)).delay().get(timeout=10) == [
        2 * i for i in range(10)
    ]


def test_link_and_link_error_callbacks(app: App, start_worker, tmp_path: Path) -> None:
    start_worker(app)
    marker = tmp_path / "errback"
    add, div = t(app, "add"), t(app, "div")
    callback = t(app, "touch").si(str(tmp_path / "linked"))
    assert add.apply_async((4, 4), link=callback).get(timeout=10) == 8
    failing = div.apply_async((1, 0), link_error=t(app, "record_error").s(str(marker)))
    with pytest.raises(ZeroDivisionError):
        failing.get(timeout=10)
    chained = add.apply_async((4, 4), link=add.s(8))
    assert chained.get(timeout=10) == 8
    wait_for(lambda: (tmp_path / "linked").exists(), 10, "the linked callback")
    wait_for(lambda: marker.exists(), 10, "the errback")
    assert marker.read_text().startswith(failing.id)


def test_then_calls_back_when_ready(app: App, start_worker) -> None:
    start_worker(app)
    done = threading.Event()
    seen: list[object] = []
    result = t(app, "add").delay(1, 2)
    result.then(lambda r: (seen.append(r.result), done.set()))
    assert done.wait(10)
    assert seen == [3]


def test_signature_options_and_set(app: App, start_worker) -> None:
    start_worker(app)
    add = t(app, "add")
    s = add.signature((2, 2), countdown=0)
    assert s.options == {"countdown": 0}
    assert s.set(priority=5).options["priority"] == 5
    assert s.delay().get(timeout=10) == 4
    assert "task_id" not in s.options, "calling a signature does not change it"


async def test_chain_from_asyncio(app: App, start_worker) -> None:
    start_worker(app)
    add = t(app, "add")
    result = await (add.s(1, 1) | add.s(1)).aapply_async()
    assert await asyncio.wait_for(result.aget(), 10) == 3
    await app.aclose()


def test_a_step_that_runs_out_of_retries_fails_the_rest_of_its_chain(
    app: App, start_worker
) -> None:
    from amqpworker.exceptions import MaxRetriesExceededError

    start_worker(app)
    result = (t(app, "always_retry").s() | t(app, "add").s(1)).apply_async()
    with pytest.raises(MaxRetriesExceededError):
        result.get(timeout=20)


@pytest.mark.parametrize("pool", ["threads", "asyncio"])
def test_steps_name_their_parent_and_root(app: App, start_worker, pool: str) -> None:
    start_worker(app, pool=pool)
    add, whoami = t(app, "add"), t(app, "whoami")
    result = (add.s(1, 1) | add.s(1) | whoami.s()).apply_async()
    seen = result.get(timeout=10)
    assert seen["args"] == [3]
    assert seen["parent_id"] == result.parent.id
    assert seen["root_id"] == result.parent.parent.id


def test_a_datetime_eta_travels_in_a_workflow_header(app: App, start_worker) -> None:
    import datetime as dt

    start_worker(app)
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(milliseconds=300)
    result = (t(app, "add").s(1, 1) | t(app, "add").s(1).set(eta=soon)).apply_async()
    assert result.get(timeout=10) == 3


def test_task_signature_with_immutable_sets_the_flag(app: App, start_worker) -> None:
    start_worker(app)
    add = t(app, "add")
    workflow = add.s(2, 2) | add.signature(args=(5, 5), immutable=True)
    assert workflow.apply_async().get(timeout=10) == 10


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"no_such_option": 1}, TypeError),
        ({"countdown": 2**29}, ValueError),
        ({"exchange": "amqpworker-test-no-such-exchange"}, PublishError),
    ],
)
def test_every_step_of_a_chain_is_checked_when_it_is_sent(
    app: App, start_worker, tmp_path: Path, options: dict, error: type
) -> None:
    start_worker(app)
    first = t(app, "touch").si(str(tmp_path / "ran"))
    with pytest.raises(error):
        (first | t(app, "add").signature(args=(1, 1), immutable=True, **options)).apply_async()
    assert not (tmp_path / "ran").exists(), "no step ran"


def test_a_step_whose_next_step_cannot_be_sent_is_not_run_again(
    app: App, start_worker, tmp_path: Path, admin, queue: str
) -> None:
    exchange = admin.new_exchange()

    async def declare(channel) -> None:  # type: ignore[no-untyped-def]
        await channel.declare_exchange(exchange, "direct")

    async def delete(channel) -> None:  # type: ignore[no-untyped-def]
        await channel.exchange_delete(exchange)

    admin.run(admin._with_channel(declare))
    running = start_worker(app)
    first = t(app, "record_and_wait").si(str(tmp_path), "first")
    then = t(app, "add").signature(args=(1, 1), immutable=True, exchange=exchange)
    result = (first | then).apply_async()
    wait_for(lambda: (tmp_path / "first.run1").exists(), 10, "the first step to start")
    admin.run(admin._with_channel(delete))  # the next step can no longer be sent
    (tmp_path / "first.release").write_text("go")

    with pytest.raises(WorkflowError, match="could not continue"):
        result.get(timeout=15)
    assert result.parent.get(timeout=5) == 1  # the first step's own result stands
    wait_for(lambda: admin.message_count(f"{queue}.dlq") == 1, 10, "the dead-lettered step")
    [dead] = admin.get_all(f"{queue}.dlq")
    assert dead.headers["x-amqpworker-reason"] == "workflow-failed"
    assert admin.message_count(queue) == 0
    assert sorted(p.name for p in tmp_path.glob("first.run*")) == ["first.run1"]
    assert running.worker.stats.requeued == 0
