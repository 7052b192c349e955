"""The thread pool for plain-function tasks, with one loop wake-up for many completions.

``loop.run_in_executor`` wakes the event loop once per finished task (a write to its
self-pipe, and a callback). With short tasks that hand-off costs more than the tasks.
Here finished tasks queue their results, and the loop is woken only when no wake-up is
already pending, so a busy worker settles many completions per wake-up.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from ..exceptions import SoftTimeLimitExceeded

T = TypeVar("T")
_numbers = itertools.count()


class Terminated(BaseException):
    """Raised inside a task's thread to stop it (``revoke(terminate=True)``).

    A BaseException, so a task's ``except Exception`` does not swallow it.
    """


#: What :meth:`TaskThreads.interrupt` raises; one that lands between tasks is dropped.
_INTERRUPTS = (Terminated, SoftTimeLimitExceeded)


def _raise_in(ident: int, exception: type[BaseException] | None) -> None:
    """Raise ``exception`` in thread ``ident`` when it next runs Python; None clears it."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exception) if exception else None
    )


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
        self._name = name
        #: Which thread runs which future now, for :meth:`interrupt`.
        self._running_in: dict[asyncio.Future[Any], int] = {}
        #: Held while an exception is raised in a thread, and while one leaves its task.
        self._interrupting = threading.Lock()
        #: Runs an exception was raised in, until they leave (see _stop_interrupts).
        self._raised: set[asyncio.Future[Any]] = set()
        #: Threads abandoned to a task that would not stop; they end after it.
        self._retired: set[int] = set()
        self._threads = [self._start_thread() for _ in range(size)]

    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(
            target=self._serve, name=f"{self._name}-{next(_numbers)}", daemon=True
        )
        thread.start()
        return thread

    def run(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``function(*args)`` in a pool thread, in a copy of the caller's context.

        Await the returned future on the loop.
        """
        future: asyncio.Future[T] = self._loop.create_future()
        self._work.put((contextvars.copy_context(), function, args, future))
        return future

    def grow(self, n: int) -> None:
        for _ in range(n):
            self._threads.append(self._start_thread())

    def shrink(self, n: int) -> None:
        """``n`` threads end once they reach this in the queue (after the work before it)."""
        for _ in range(n):
            self._work.put(None)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._work.put(None)

    def interrupt(
        self,
        future: asyncio.Future[Any],
        grace: float | None,
        exception: type[BaseException] = Terminated,
    ) -> None:
        """Raise ``exception`` in the thread running ``future``'s function.

        A thread blocked in C sees it only when it returns to Python. With a ``grace``
        (seconds; 0 is at once), if the function has not ended by then ``future`` fails
        with :class:`Terminated` anyway and the thread is abandoned, replaced by a new
        one; with ``None`` the function is left to deal with it (a soft time limit).
        Call on the loop.
        """
        with self._interrupting:
            ident = self._running_in.get(future)
            if ident is not None:
                _raise_in(ident, exception)
                self._raised.add(future)
        if ident is None:  # not started yet, or just finished
            if grace is not None and not future.done():
                future.set_exception(Terminated())
            return
        if grace == 0:
            self._abandon(future, ident)
        elif grace is not None:
            self._loop.call_later(grace, self._abandon, future, ident)

    def _abandon(self, future: asyncio.Future[Any], ident: int) -> None:
        if future.done():
            return
        future.set_exception(Terminated())
        self._retired.add(ident)
        self._threads.append(self._start_thread())

    def _serve(self) -> None:
        ident = threading.get_ident()
        while ident not in self._retired:
            try:
                item = self._work.get()
                if item is None:
                    return
                self._run(ident, *item)
            except _INTERRUPTS:  # came after its function ended; the future is settled
                continue
        self._retired.discard(ident)

    def _run(
        self,
        ident: int,
        context: contextvars.Context,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        future: asyncio.Future[Any],
    ) -> None:
        self._running_in[future] = ident
        try:
            outcome: tuple[asyncio.Future[Any], bool, Any] = (
                future,
                True,
                context.run(function, *args),
            )
        except BaseException as exc:  # handed to the awaiting coroutine
            outcome = (future, False, exc)
        self._stop_interrupts(ident, future)
        self._done.append(outcome)
        if self._wake_pending.acquire(blocking=False):
            try:
                self._loop.call_soon_threadsafe(self._settle)
            except RuntimeError:  # the loop is closed: nobody waits any more
                self._wake_pending.release()

    def _stop_interrupts(self, ident: int, future: asyncio.Future[Any]) -> None:
        """Leave the interruptible state: no exception meant for ``future`` lands later.

        Under the lock :meth:`interrupt` takes, so none is raised after this; one raised
        just before is cleared, or caught here while leaving.
        """
        while True:
            try:
                with self._interrupting:
                    self._running_in.pop(future, None)
                    if future in self._raised:  # rare: only then the cost of ctypes
                        self._raised.discard(future)
                        _raise_in(ident, None)
                return
            except _INTERRUPTS:
                continue

    def _settle(self) -> None:
        # Release first: a completion appended after the drain below wakes us again.
        self._wake_pending.release()
        while self._done:
            future, ok, value = self._done.popleft()
            if future.done():  # cancelled, or given up on (see _abandon)
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
