"""The worker's thread pool: jobs run in a copy of the caller's context."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
import structlog

from amqpworker.log import bound
from amqpworker.worker.pool import TaskThreads

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


async def test_a_job_sees_the_callers_context_and_log_binding() -> None:
    threads = TaskThreads(asyncio.get_running_loop(), 2)
    try:
        marker.set("from the handler")
        with bound(task_id="t-1"):
            seen = await threads.run(
                lambda: (
                    marker.get(),
                    structlog.contextvars.get_contextvars().get("task_id"),
                    threading.current_thread().name,
                )
            )
    finally:
        threads.shutdown()
    assert seen[:2] == ("from the handler", "t-1")
    assert seen[2].startswith("task-")  # it ran in a pool thread


async def test_a_job_that_raises_hands_the_exception_to_the_caller() -> None:
    threads = TaskThreads(asyncio.get_running_loop(), 1)
    try:
        with pytest.raises(ZeroDivisionError):
            await threads.run(lambda: 1 / 0)
        assert await threads.run(lambda: 2) == 2  # and the thread goes on
    finally:
        threads.shutdown()
