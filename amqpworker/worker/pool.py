"""The thread pool for plain-function tasks, with one loop wake-up for many completions.

``loop.run_in_executor`` wakes the event loop once per finished task (a write to its
self-pipe, and a callback). With short tasks that hand-off costs more than the tasks.
Here finished tasks queue their results, and the loop is woken only when no wake-up is
already pending, so a busy worker settles many completions per wake-up.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class TaskThreads:
    """``size`` daemon threads running functions for one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, name: str = "task") -> None:
        self._loop = loop
        self._work: queue.SimpleQueue[
            tuple[contextvars.Context, Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]
            | None
        ] = queue.SimpleQueue()
        self._done: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self._wake_pending = threading.Lock()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``function(*args)`` in a pool thread, in a copy of the caller's context.

        Await the returned future on the loop.
        """
        future: asyncio.Future[T] = self._loop.create_future()
        self._work.put((contextvars.copy_context(), function, args, future))
        return future

    def shutdown(self) -> None:
        for _ in self._threads:
            self._work.put(None)

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            context, function, args, future = item
            try:
                outcome: tuple[asyncio.Future[Any], bool, Any] = (
                    future,
                    True,
                    context.run(function, *args),
                )
            except BaseException as exc:  # handed to the awaiting coroutine
                outcome = (future, False, exc)
            self._done.append(outcome)
            if self._wake_pending.acquire(blocking=False):
                try:
                    self._loop.call_soon_threadsafe(self._settle)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    self._wake_pending.release()

    def _settle(self) -> None:
        # Release first: a completion appended after the drain below wakes us again.
        self._wake_pending.release()
        while self._done:
            future, ok, value = self._done.popleft()
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
