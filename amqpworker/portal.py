"""One background event loop that lets synchronous code use the async implementation.

amqpworker has a single, async implementation of publishing and result waiting. Sync
callers (Django views, scripts, a Flask handler) reach it through a :class:`Portal`: a
daemon thread running an event loop. Each sync call is one hop into that loop, so bulk
operations are written as one coroutine that does all the work, never as a loop of hops.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class Portal:
    """A lazily started event loop on a daemon thread."""

    def __init__(
        self,
        name: str = "amqpworker-portal",
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        self._name = name
        self._loop_factory = loop_factory
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The portal's loop, started on first use."""
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                ready = threading.Event()
                loop = self._loop_factory()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def loop_if_started(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def in_portal_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the portal loop and return a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the portal loop and block until it returns.

        Raises:
            RuntimeError: when called from the portal's own thread, which would deadlock.
        """
        if self.in_portal_thread():
            coro.close()
            raise RuntimeError(
                "a blocking amqpworker call was made on its own event loop; "
                "use the async variant (aapply_async, aget) there"
            )
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def close(self, shutdown: Coroutine[Any, Any, object] | None = None) -> None:
        """Run an optional shutdown coroutine, then stop the loop and join the thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            if shutdown is not None:
                shutdown.close()
            return
        if shutdown is not None:
            with contextlib.suppress(Exception):  # best effort, often at interpreter exit
                asyncio.run_coroutine_threadsafe(shutdown, loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not loop.is_running():
            loop.close()
