"""Failures reach the caller as the task's own exception type, with the remote traceback."""

from __future__ import annotations

import pytest

from amqpworker import App, TaskError, states
from amqpworker.exceptions import TimeoutError as AmqpTimeoutError

from .sample_app import CustomError


def test_zero_division_is_reraised(app: App, start_worker) -> None:
    start_worker(app)
    result = app.tasks["tests.integration.sample_app.div"].delay(1, 0)
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        result.get(timeout=10)
    assert result.state == states.FAILURE
    assert result.failed()
    assert result.ready()
    assert not result.successful()
    assert isinstance(result.get(propagate=False), ZeroDivisionError)
    assert isinstance(result.result, ZeroDivisionError)
    assert result.traceback is not None
    assert "ZeroDivisionError" in result.traceback
    assert "return x / y" in result.traceback


def test_importable_custom_exception_keeps_its_type(app: App, start_worker) -> None:
    start_worker(app)
    with pytest.raises(CustomError, match="boom"):
        app.tasks["tests.integration.sample_app.raise_custom"].delay("boom").get(timeout=10)


def test_unimportable_exception_becomes_task_error_naming_it(app: App, start_worker) -> None:
    start_worker(app)
    with pytest.raises(TaskError, match="LocalError") as caught:
        app.tasks["tests.integration.sample_app.raise_local"].delay().get(timeout=10)
    assert "LocalError" in caught.value.exc_type


def test_wrong_arguments_give_a_failure_not_a_crash(app: App, start_worker) -> None:
    worker = start_worker(app)
    add = app.tasks["tests.integration.sample_app.add"]
    with pytest.raises(TypeError):
        add.delay(1, 2, 3).get(timeout=10)
    assert add.delay(1, 2).get(timeout=10) == 3
    assert worker.worker.stats.failed == 1


def test_get_timeout_raises_our_timeout_error_which_is_builtin(app: App) -> None:
    # No worker: the task waits in its queue.
    result = app.tasks["tests.integration.sample_app.add"].delay(1, 1)
    with pytest.raises(AmqpTimeoutError):
        result.get(timeout=0.3)
    with pytest.raises(TimeoutError):
        result.get(timeout=0.1)
    assert result.state == states.PENDING
