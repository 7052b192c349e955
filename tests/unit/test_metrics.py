"""Metrics without a broker: the counters they read, the wait they compute, the step's place."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any, cast

from amqpworker import App
from amqpworker.wire import SerializerRegistry, TaskMessage
from amqpworker.wire.message import SENT_AT_HEADER
from amqpworker.wire.results import FAILURE, RETRY, REVOKED, SUCCESS
from amqpworker.worker.health import Health, Look
from amqpworker.worker.pipeline import Job
from amqpworker.worker.stats import WorkerStats
from amqpworker.worker.steps.execute import Execute
from amqpworker.worker.steps.measure import Measure, queue_wait

from .conftest import stub_steps


class Envelope:
    def __init__(self, headers: dict[str, Any]) -> None:
        self.headers = headers


class Delivery:
    def __init__(self, headers: dict[str, Any]) -> None:
        self.envelope = Envelope(headers)


def _job(headers: dict[str, Any], eta: dt.datetime | None = None) -> Job:
    job = Job(cast(Any, Delivery(headers)))
    job.message = TaskMessage("t", eta=eta)
    return job


def test_stats_count_each_run_by_task_and_state() -> None:
    stats = WorkerStats()
    for status in (SUCCESS, SUCCESS, FAILURE, RETRY, REVOKED):
        stats.count("a", status)
    stats.count("b", SUCCESS)
    stats.count_dead_letter("unknown-task")
    stats.count_dead_letter("unknown-task")
    assert stats.outcomes == {
        ("a", "succeeded"): 2,
        ("a", "failed"): 1,
        ("a", "retried"): 1,
        ("a", "revoked"): 1,
        ("b", "succeeded"): 1,
    }
    assert (stats.succeeded, stats.failed, stats.retried, stats.revoked) == (3, 1, 1, 1)
    assert stats.by_task == {"a": 5, "b": 1}
    assert stats.dead_letter_reasons == {"unknown-task": 2}
    assert stats.counters()["dead_lettered"] == 2
    assert "outcomes" not in stats.counters()


def test_queue_wait_counts_from_publish_or_from_a_later_eta() -> None:
    now = 1_000_000.0
    assert queue_wait(_job({SENT_AT_HEADER: 999_998_500}), now) == 1.5
    eta = dt.datetime.fromtimestamp(now - 0.25, dt.timezone.utc)
    assert queue_wait(_job({SENT_AT_HEADER: 999_000_000}, eta), now) == 0.25


def test_queue_wait_is_unknown_without_the_header_and_never_negative() -> None:
    assert queue_wait(_job({}), 10.0) is None
    assert queue_wait(_job({SENT_AT_HEADER: "yesterday"}), 10.0) is None
    assert queue_wait(_job({SENT_AT_HEADER: True}), 10.0) is None
    # The publisher's clock ahead of the worker's.
    assert queue_wait(_job({SENT_AT_HEADER: 20_000}), 10.0) == 0.0


def test_a_message_carries_the_time_it_was_sent_and_the_task_does_not_see_it(
    serializers: SerializerRegistry,
) -> None:
    before = time.time_ns() // 1_000_000
    envelope = TaskMessage("t").encode(serializers.get("json"))
    sent = envelope.headers[SENT_AT_HEADER]
    assert isinstance(sent, int)
    assert before <= sent <= time.time_ns() // 1_000_000
    decoded = TaskMessage.decode(envelope, serializers, serializers.content_types(["json"]))
    assert SENT_AT_HEADER not in decoded.headers


def _steps(app: App, metrics: Any = None) -> list[Any]:
    return stub_steps(app, metrics=metrics)


class Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def observe_wait(self, task_name: str, seconds: float) -> None:
        self.seen.append(("wait", task_name))

    def observe_run(self, task_name: str, seconds: float) -> None:
        self.seen.append(("run", task_name))


def test_the_measuring_step_is_in_the_pipeline_only_with_metrics() -> None:
    app = App("m")
    assert not any(isinstance(step, Measure) for step in _steps(app))
    steps = _steps(app, Observer())
    assert isinstance(steps[-1], Execute)
    assert isinstance(steps[-2], Measure)


def test_the_measuring_step_observes_the_wait_and_a_finished_run() -> None:
    observer = Observer()
    step = Measure(observer)
    job = _job({SENT_AT_HEADER: time.time_ns() // 1_000_000})
    job.task = cast(Any, type("T", (), {"name": "t"})())

    async def run(job: Job) -> None:
        job.outcome = cast(Any, object())

    step.proceed = run
    asyncio.run(step(job))
    assert observer.seen == [("wait", "t"), ("run", "t")]


def test_health_says_the_loop_stalled_once_it_stops_looking() -> None:
    health = Health("w@h", lambda now: Look(now, None, {"q": True}, {"consumer": True}), 0.05)

    async def look_once() -> None:
        health.start(asyncio.get_running_loop())
        await asyncio.sleep(0)
        health.stop()

    asyncio.run(look_once())
    assert health.readiness().ok
    assert health.liveness().ok
    time.sleep(0.1)  # nothing turns the (closed) loop: the look grows old
    stalled = health.liveness()
    assert not stalled.ok
    assert "has not turned" in stalled.body["reason"]
    assert not health.readiness().ok
