"""The worker's thread pool: jobs run in a copy of the caller's context."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
import structlog

from amqpworker.log import bound
from amqpworker.worker.pool import TaskThreads, Terminated

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


async def _started(threads: TaskThreads, function, *args):  # type: ignore[no-untyped-def]
    started = threading.Event()

    def run() -> object:
        started.set()
        return function(*args)

    future = threads.run(run)
    assert await asyncio.to_thread(started.wait, 5), "the job did not start"
    return future


async def test_interrupt_stops_a_thread_running_python() -> None:
    threads = TaskThreads(asyncio.get_running_loop(), 1)
    try:

        def spin() -> None:
            while True:
                sum(range(100))

        running = await _started(threads, spin)
        threads.interrupt(running, grace=5)
        with pytest.raises(Terminated):
            await asyncio.wait_for(running, 5)
        assert await asyncio.wait_for(threads.run(lambda: "still serving"), 5) == "still serving"
    finally:
        threads.shutdown()


async def test_a_thread_blocked_in_c_is_abandoned_and_replaced() -> None:
    threads = TaskThreads(asyncio.get_running_loop(), 1)
    release = threading.Event()
    try:
        running = await _started(threads, release.wait, 30)  # blocked in C
        threads.interrupt(running, grace=0.2)
        with pytest.raises(Terminated):
            await asyncio.wait_for(running, 5)
        # The pool has a thread again while the abandoned one is still blocked.
        assert await asyncio.wait_for(threads.run(lambda: "replaced"), 5) == "replaced"
    finally:
        release.set()
        threads.shutdown()
