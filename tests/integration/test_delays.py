"""Countdown, eta, expiry and retries: waiting happens in the broker, not in workers.

Timing assertions here check correctness (never early; never absurdly late), with
generous upper bounds; precision is measured by `python -m bench.delays`.
"""

from __future__ import annotations

import datetime as dt
import textwrap
import time
from pathlib import Path

import aio_pika
import pytest

from amqpworker import App, AsyncResult, states
from amqpworker import delay as delay_names
from amqpworker.exceptions import MaxRetriesExceededError, TaskRevokedError

from .conftest import BrokerAdmin, wait_for
from .sample_app import create_app

CLOCK = "tests.integration.sample_app.clock"
ADD = "tests.integration.sample_app.add"
TOUCH = "tests.integration.sample_app.touch"
SLACK = 0.05  # clocks of caller and worker are the same host's, up to timer resolution


def forget_landing(admin: BrokerAdmin, exchange: str, routing_key: str) -> None:
    """The test's landing queue is the test's to delete (the delay levels are shared)."""
    admin.created.add(delay_names.landing_queue(exchange, routing_key))


def test_countdown_runs_no_earlier_than_asked(app: App, queue: str, admin, start_worker) -> None:
    forget_landing(admin, "", queue)
    start_worker(app)
    sent = time.time()
    ran = app.tasks[CLOCK].apply_async(countdown=3).get(timeout=20)
    assert 3 - SLACK <= ran - sent < 3 + 3


def test_eta_in_the_past_runs_at_once(app: App, queue: str, start_worker) -> None:
    start_worker(app)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    sent = time.time()
    ran = app.tasks[CLOCK].apply_async(eta=past).get(timeout=10)
    assert ran - sent < 1


def test_a_long_delay_does_not_block_a_short_one(app: App, queue: str, admin, start_worker) -> None:
    forget_landing(admin, "", queue)
    start_worker(app)
    long = app.tasks[CLOCK].apply_async(countdown=3600)
    sent = time.time()
    short = app.tasks[CLOCK].apply_async(countdown=2)
    assert 2 - SLACK <= short.get(timeout=15) - sent < 2 + 3
    assert long.state == states.PENDING
    # The hour-long message waits in the delay levels, not in the worker or its queue.
    assert admin.message_count(queue) == 0


def test_a_delayed_task_is_not_held_by_the_worker(
    app: App, queue: str, admin, start_worker
) -> None:
    forget_landing(admin, "", queue)
    worker = start_worker(app)
    # Few and short: once the test queue is gone these land in amqpworker.delay.unroutable.
    results = app.send_many([(CLOCK, (), {}, {"countdown": 120}) for _ in range(50)])
    assert len(results) == 50
    assert admin.message_count(queue) == 0
    assert worker.worker.stats.received == 0


def test_delays_reach_priority_quorum_direct_and_default_destinations(
    broker_url: str, admin: BrokerAdmin, tmp_path: Path, start_worker
) -> None:
    direct = admin.new_exchange("direct")
    priority, quorum, bound = (admin.new_queue(p) for p in ("prio", "quorum", "bound"))
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        textwrap.dedent(
            f"""
            exchanges: [{{name: {direct}, type: direct}}]
            queues:
              - {{name: {priority}, max_priority: 10}}
              - {{name: {quorum}, type: quorum}}
              - {{name: {bound}}}
            bindings: [{{exchange: {direct}, queue: {bound}, routing_key: jobs}}]
            """
        )
    )
    app = create_app(broker_url=broker_url, routing_file=routing)
    for destination in (("", priority), ("", quorum), (direct, "jobs")):
        forget_landing(admin, *destination)
    start_worker(app, queues=[priority, quorum, bound])
    clock = app.tasks[CLOCK]
    sent = time.time()
    results = [
        clock.apply_async(countdown=1, queue=priority, priority=7),
        clock.apply_async(countdown=1, queue=quorum),
        clock.apply_async(countdown=1, exchange=direct, routing_key="jobs"),
    ]
    for result in results:
        assert 1 - SLACK <= result.get(timeout=15) - sent < 1 + 3
    app.close()


def test_retry_with_backoff_reports_retry_twice_then_success(
    app: App, queue: str, admin, start_worker
) -> None:
    forget_landing(admin, "", queue)
    start_worker(app)
    seen: list[str] = []
    result = app.tasks["tests.integration.sample_app.flaky"].delay(2)
    assert result.get(timeout=20, on_message=lambda body: seen.append(body["status"])) == 2
    assert seen == [states.RETRY, states.RETRY, states.SUCCESS]


def test_retries_exhausted_fail_and_dead_letter(app: App, queue: str, admin, start_worker) -> None:
    forget_landing(admin, "", queue)
    start_worker(app)
    seen: list[str] = []
    result = app.tasks["tests.integration.sample_app.always_retry"].delay()
    with pytest.raises(MaxRetriesExceededError):
        result.get(timeout=20, on_message=lambda body: seen.append(body["status"]))
    assert seen == [states.RETRY, states.RETRY, states.FAILURE]
    wait_for(lambda: admin.message_count(f"{queue}.dlq") == 1, 10, "the message in the DLQ")
    [message] = admin.get_all(f"{queue}.dlq")
    assert message.headers["x-amqpworker-reason"] == "failed-after-retries"
    assert message.headers["retries"] == 2
    assert "MaxRetriesExceededError" in message.headers["x-amqpworker-exception"]


def test_autoretry_that_runs_out_raises_the_original_exception(
    app: App, queue: str, admin, start_worker
) -> None:
    forget_landing(admin, "", queue)
    start_worker(app)
    with pytest.raises(ConnectionError, match="attempt 6 failed"):
        app.tasks["tests.integration.sample_app.flaky"].delay(10).get(timeout=30)
    wait_for(lambda: admin.message_count(f"{queue}.dlq") == 1, 10, "the message in the DLQ")


def test_expired_task_never_runs_and_is_revoked(
    app: App, queue: str, start_worker, tmp_path: Path
) -> None:
    path = tmp_path / "ran"
    result = app.send_task(TOUCH, (str(path),), expires=1, ignore_result=False)
    time.sleep(1.2)  # the task must be past its expiry when a worker first sees it
    start_worker(app)
    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=10)
    assert result.state == states.REVOKED
    assert not path.exists()


def test_retry_keeps_the_message_id_and_counts_retries(
    app: App, queue: str, admin, start_worker
) -> None:
    forget_landing(admin, "", queue)
    start_worker(app)
    result = app.tasks["tests.integration.sample_app.flaky"].delay(1)
    assert result.get(timeout=20) == 1
    assert admin.message_count(queue) == 0


def test_a_vanished_destination_does_not_hold_up_other_delays(
    app: App, broker_url: str, admin: BrokerAdmin, start_worker
) -> None:
    gone = admin.new_queue("gone")
    app.send_task(CLOCK, queue=gone, countdown=1)

    async def delete_destination(channel) -> None:  # type: ignore[no-untyped-def]
        await channel.queue_delete(delay_names.landing_queue("", gone))

    admin.run(admin._with_channel(delete_destination))
    # At-least-once dead-lettering would retry the stranded message forever and hold up
    # the level behind it; the deliver exchange's alternate exchange takes it instead.
    start_worker(app)
    sent = time.time()
    assert app.tasks[CLOCK].apply_async(countdown=2).get(timeout=15) - sent < 2 + 3


def test_a_delay_past_the_levels_reach_is_refused_when_published(app: App) -> None:
    with pytest.raises(ValueError, match="past the longest delay"):
        app.tasks["tests.integration.sample_app.add"].apply_async((1, 1), countdown=2**29)


def test_an_eta_past_the_levels_reach_is_dead_lettered_and_its_caller_told(
    app: App, admin, queue: str, start_worker
) -> None:
    running = start_worker(app)
    reply_to = app.portal.call(app.portal_client().reply_to())
    admin.publish_raw(
        queue,
        aio_pika.Message(
            body=b"[[1, 1], {}]",
            headers={
                "task": "tests.integration.sample_app.add",
                "id": "far",
                "eta": "2100-01-01T00:00:00+00:00",  # from a producer that did not check
            },
            content_type="application/json",
            correlation_id="far",
            reply_to=reply_to,
        ),
    )

    with pytest.raises(ValueError, match="past the delay levels' reach"):
        AsyncResult("far", app=app).get(timeout=10)
    wait_for(lambda: admin.message_count(f"{queue}.dlq") == 1, 10, "the dead-lettered message")
    [dead] = admin.get_all(f"{queue}.dlq")
    assert dead.headers["x-amqpworker-reason"] == "eta-out-of-range"
    assert running.worker.stats.requeued == 0
