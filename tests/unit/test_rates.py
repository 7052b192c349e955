"""Rate limits: Celery's rate strings, the token arithmetic, and where a bad rate is refused."""

from __future__ import annotations

from typing import Any, cast

import pytest

from amqpworker import App, rates
from amqpworker.app.publisher import Publisher
from amqpworker.exceptions import ImproperlyConfigured
from amqpworker.worker.steps import rate_limits
from amqpworker.worker.steps.rate_limits import RateLimits


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("10/s", 10.0),
        ("120/m", 2.0),
        ("1800/h", 0.5),
        ("0.5/s", 0.5),
        (" 30 / m ", 0.5),
        ("7", 7.0),
        (3, 3.0),
        (2.5, 2.5),
        ("0", None),
        ("0/m", None),
        (0, None),
        (None, None),
    ],
)
def test_celery_rates_in_tasks_per_second(rate: rates.Rate, expected: float | None) -> None:
    assert rates.per_second(rate) == expected


@pytest.mark.parametrize(
    "rate", ["ten per minute", "5/d", "10/sec", "-1", -1, "1e3", "", "/s", True, float("nan")]
)
def test_a_bad_rate_is_an_error_naming_it(rate: object) -> None:
    with pytest.raises(ValueError, match="is not a rate limit") as info:
        rates.per_second(cast(Any, rate))
    assert repr(rate) in str(info.value)
    assert "'10/s'" in str(info.value)  # and says what a rate looks like


def test_tokens_are_spaced_by_the_interval_without_a_burst() -> None:
    bucket = rates.Bucket(10.0)
    waits = [bucket.reserve(now=100.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    # 50 asked at once: the last is due 4.9 s later, so 50 take at least 4.5 s.
    many = rates.Bucket(10.0)
    assert [many.reserve(now=0.0) for _ in range(50)][-1] == pytest.approx(4.9)


def test_a_token_unused_for_a_while_does_not_pile_up() -> None:
    bucket = rates.Bucket(2.0)
    assert bucket.reserve(now=0.0) == 0.0
    assert bucket.reserve(now=60.0) == 0.0  # a minute idle saves no tokens
    assert bucket.reserve(now=60.0) == pytest.approx(0.5)
    assert bucket.reserve(now=60.2) == pytest.approx(0.8)  # booked behind the one before


def test_a_new_rate_keeps_booked_tokens_but_never_waits_longer_than_its_interval() -> None:
    slow = rates.Bucket(1 / 3600)  # 1/h: the second token is an hour away
    slow.reserve(now=0.0)
    assert slow.reserve(now=0.0) == pytest.approx(3600)
    faster = rates.Bucket(10.0, after=slow, now=1.0)
    assert faster.reserve(now=1.0) == pytest.approx(0.1)
    assert faster.reserve(now=1.0) == pytest.approx(0.2)

    busy = rates.Bucket(10.0)
    for _ in range(3):
        busy.reserve(now=0.0)  # booked up to 0.3
    slower = rates.Bucket(1.0, after=busy, now=0.0)
    assert slower.reserve(now=0.0) == pytest.approx(0.3)  # behind what was booked
    assert slower.reserve(now=0.0) == pytest.approx(1.3)


def test_task_option_is_checked_when_the_task_is_made() -> None:
    app = App()
    with pytest.raises(ImproperlyConfigured, match=r"task 'job'.*'ten per minute'"):
        app.task(name="job", rate_limit="ten per minute")(lambda: None)
    limited = app.task(name="ok", rate_limit="10/s")(lambda: None)
    assert limited.effective_rate_limit == "10/s"


def test_a_base_class_rate_limit_is_checked_too() -> None:
    from amqpworker import Task

    class Limited(Task):
        rate_limit = "5/d"

    with pytest.raises(ImproperlyConfigured, match="'5/d' is not a rate limit"):
        App().task(name="job", base=Limited)(lambda: None)


def test_default_rate_limit_setting_is_checked_and_used() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"'task_default_rate_limit'.*'5/d'"):
        App(task_default_rate_limit="5/d")
    app = App(task_default_rate_limit="100/m")
    own = app.task(name="own", rate_limit="1/s")(lambda: None)
    default = app.task(name="default")(lambda: None)
    assert (own.effective_rate_limit, default.effective_rate_limit) == ("1/s", "100/m")


def test_a_per_call_rate_limit_is_refused_as_in_celery() -> None:
    app = App()
    job = app.task(name="job")(lambda: None)
    with pytest.raises(TypeError, match="rate_limit= is not a per-call option"):
        app.prepare("job", (), None, job, {"rate_limit": "1/s"})


def test_control_rate_limit_refuses_a_bad_rate_before_sending() -> None:
    with pytest.raises(ValueError, match="'ten per minute' is not a rate limit"):
        App().control.rate_limit("job", "ten per minute")


def _publisher() -> Publisher:
    return cast(Publisher, object())  # the step only publishes when a message must wait


def test_the_step_limits_only_tasks_with_a_rate() -> None:
    app = App(task_default_rate_limit=None)
    app.task(name="slow", rate_limit="2/s")(lambda: None)
    app.task(name="free")(lambda: None)
    step = RateLimits(app, _publisher())
    assert set(step.buckets) == {"slow"}
    assert step.set_rate("free", "100/m") == pytest.approx(100 / 60)
    assert step.set_rate("slow", 0) is None
    assert set(step.buckets) == {"free"}


def test_the_step_is_left_out_when_rate_limits_are_disabled_or_cannot_be_set() -> None:
    app = App()
    app.task(name="slow", rate_limit="2/s")(lambda: None)
    assert rate_limits(app, _publisher())
    app.conf.worker_disable_rate_limits = True
    assert rate_limits(app, _publisher()) == []

    unlimited = App(worker_enable_remote_control=False)
    unlimited.task(name="free")(lambda: None)
    assert rate_limits(unlimited, _publisher()) == []  # nothing could ever be limited
    unlimited.conf.worker_enable_remote_control = True
    assert rate_limits(unlimited, _publisher())  # app.control.rate_limit may limit it
