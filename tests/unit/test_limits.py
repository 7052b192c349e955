"""Time limits as pure logic: which apply, what remote control accepts, and interruptions."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from amqpworker import App
from amqpworker.exceptions import SoftTimeLimitExceeded
from amqpworker.wire import TaskMessage
from amqpworker.worker.limits import (
    Interruption,
    interruptible,
    limits_for,
    seconds,
    start_up_warnings,
)
from amqpworker.worker.pool import TaskThreads


def test_the_message_then_the_task_then_the_setting_decide() -> None:
    app = App(task_soft_time_limit=30, task_time_limit=60)
    task = app.task(name="t", time_limit=50)(lambda: None)
    plain = TaskMessage(task="t", args=(), kwargs={}, id="1")
    per_call = TaskMessage(task="t", args=(), kwargs={}, id="2", soft_time_limit=5)

    assert limits_for(plain, task, app.conf) == (30, 50)
    assert limits_for(per_call, task, app.conf) == (5, 50)
    assert limits_for(plain, app.task(name="u")(lambda: None), App().conf) is None


@pytest.mark.parametrize(("given", "expected"), [(None, None), ("0", None), ("2.5", 2.5), (3, 3.0)])
def test_remote_control_limits_are_seconds_or_none(given: object, expected: float | None) -> None:
    assert seconds(given, "soft") == expected


@pytest.mark.parametrize("given", ["soon", -1, float("nan"), float("inf"), [1]])
def test_remote_control_refuses_what_is_not_seconds(given: object) -> None:
    with pytest.raises(ValueError, match="soft must be"):
        seconds(given, "soft")


def test_start_up_warns_where_a_pool_cannot_enforce_a_limit() -> None:
    app = App()
    app.task(name="plain", time_limit=5)(lambda: None)

    assert "cannot stop a thread" in start_up_warnings(app.tasks.values(), app.conf, "threads")[0]
    assert "--pool asyncio" in start_up_warnings(app.tasks.values(), app.conf, "asyncio")[0]
    assert start_up_warnings(app.tasks.values(), app.conf, "process") == []
    assert start_up_warnings([], App().conf, "threads") == []


async def test_a_cancel_with_a_replacement_reaches_the_coroutine_as_that_exception() -> None:
    interruption = Interruption()

    async def task() -> str:
        try:
            await asyncio.sleep(30)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(0)  # it may still wait while cleaning up
            return "cleaned up"
        return "slept"

    async def run() -> str:
        result: str = await interruptible(task(), interruption)
        return result

    running = asyncio.create_task(run())
    await asyncio.sleep(0.01)
    interruption.replacement = SoftTimeLimitExceeded()
    running.cancel()
    assert await asyncio.wait_for(running, 5) == "cleaned up"
    assert not running.cancelled()


async def test_a_plain_cancel_still_cancels() -> None:
    running = asyncio.create_task(interruptible(asyncio.sleep(30), Interruption()))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_soft_limit_in_a_thread_is_an_exception_the_function_catches() -> None:
    threads = TaskThreads(asyncio.get_running_loop(), 1)
    started = threading.Event()

    def work() -> str:
        started.set()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "finished"

    try:
        future = threads.run(work)
        assert await asyncio.to_thread(started.wait, 5)
        threads.interrupt(future, None, SoftTimeLimitExceeded)
        assert await asyncio.wait_for(future, 5) == "cleaned up"
        # An interrupt after the function ended lands nowhere: the thread serves on.
        threads.interrupt(future, None, SoftTimeLimitExceeded)
        assert await asyncio.wait_for(threads.run(lambda: 2), 5) == 2
    finally:
        threads.shutdown()
