"""RPC results: state messages arrive on the client's reply queue and wake the waiters.

Each client keeps a :class:`ResultHub`: the state history of every task it published,
fed from its reply queue on its event loop. Waiters attach a *sink* (a callable) to a
task id and get the history replayed, then every new state, so a result awaited after
the task finished, or a PROGRESS update sent before ``get()`` was called, is never
missed. The hub is guarded by a lock, so a synchronous ``get()`` waits in its own
thread without any hop into the event loop.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..exceptions import ResultLost, TaskError, TimeoutError
from ..wire.results import (
    EXCEPTION_STATES,
    FAILURE,
    PENDING,
    READY_STATES,
    STARTED,
    SUCCESS,
    ResultMessage,
)

if TYPE_CHECKING:
    from .app import App
    from .client import Client

Sink = Callable[[ResultMessage], None]
OnMessage = Callable[[dict[str, Any]], Any]
HISTORY_LIMIT = 1000
#: States kept for tasks nobody holds a result handle for (the most recent ones).
UNCLAIMED_LIMIT = 1000
#: Not a task state: what a waiter is handed when the reply queue was lost.
LOST = "amqpworker.LOST"


def _lost(task_id: str, why: str) -> ResultMessage:
    return ResultMessage(task_id, LOST, why)


class ResultHub:
    """Task states seen by one client, and the waiters that want them.

    A task's states are kept while something can still ask for them: a live
    :class:`AsyncResult` (tracked through a weak reference) or a waiter. States nobody
    holds a handle for (``delay()`` whose result is dropped, or arrives before the handle
    exists) wait in a bounded list of the most recent ones, so a caller that never reads
    its results uses bounded memory.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, unclaimed_limit: int = UNCLAIMED_LIMIT
    ) -> None:
        self.loop = loop
        self._unclaimed_limit = unclaimed_limit
        # Reentrant: a sink (a then() callback) may read the hub while it is replayed.
        self._lock = threading.RLock()
        self._history: dict[str, list[ResultMessage]] = {}
        self._sinks: dict[str, list[Sink]] = {}
        #: Live AsyncResult handles per task id.
        self._handles: dict[str, int] = {}
        #: Ids with states but no handle and no waiter, oldest first.
        self._unclaimed: OrderedDict[str, None] = OrderedDict()
        #: Handles collected by the garbage collector; appended from any thread.
        self._released: deque[str] = deque()
        #: Pending tasks whose states went with a lost reply queue: id -> why.
        self._lost: dict[str, str] = {}

    def record(self, message: ResultMessage) -> None:
        """Store a state and hand it to the task's waiters, in arrival order; final is final."""
        task_id = message.task_id
        with self._lock:
            self._collect()
            history = self._history.setdefault(task_id, [])
            if history and history[-1].status in READY_STATES:
                # At-least-once delivery can run a task twice (a worker lost its channel
                # mid-task); the first final state a caller saw stays the answer.
                return
            history.append(message)
            if len(history) > HISTORY_LIMIT:
                del history[0]
            self._lost.pop(task_id, None)
            sinks = list(self._sinks.get(task_id, ()))
            if task_id not in self._handles and not sinks:
                self._unclaim(task_id)
        for sink in sinks:
            sink(message)

    def track(self, task_id: str, handle: object) -> None:
        """Keep the task's states while ``handle`` (an AsyncResult) lives."""
        with self._lock:
            self._collect()
            self._handles[task_id] = self._handles.get(task_id, 0) + 1
            self._unclaimed.pop(task_id, None)
        weakref.finalize(handle, self._released.append, task_id)

    def watch(self, task_id: str, sink: Sink) -> Callable[[], None]:
        """Replay the task's states into ``sink`` and follow new ones until unwatched."""
        with self._lock:
            self._unclaimed.pop(task_id, None)
            history = self._history.get(task_id, ())
            for message in history:
                sink(message)
            why = self._lost.get(task_id)
            if why is not None:
                sink(_lost(task_id, why))
            self._sinks.setdefault(task_id, []).append(sink)

        def unwatch() -> None:
            with self._lock:
                sinks = self._sinks.get(task_id, [])
                if sink in sinks:
                    sinks.remove(sink)
                if not sinks:
                    self._sinks.pop(task_id, None)
                    if task_id not in self._handles:
                        self._unclaim(task_id)

        return unwatch

    def history(self, task_id: str) -> list[ResultMessage]:
        with self._lock:
            return list(self._history.get(task_id, ()))

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._history.pop(task_id, None)
            self._unclaimed.pop(task_id, None)
            self._lost.pop(task_id, None)

    def reply_queue_lost(self, why: str) -> None:
        """The reply queue was gone: every task still pending here may never report.

        Its waiters, now and later, get :class:`ResultLost` instead of waiting forever;
        a state that still arrives (published after the queue came back) wins.
        """
        with self._lock:
            self._collect()
            pending = [
                task_id
                for task_id in {*self._handles, *self._sinks}
                if not any(m.status in READY_STATES for m in self._history.get(task_id, ()))
            ]
            for task_id in pending:
                self._lost[task_id] = why
            sinks = [(task_id, list(self._sinks.get(task_id, ()))) for task_id in pending]
        for task_id, waiting in sinks:
            for sink in waiting:
                sink(_lost(task_id, why))

    def _unclaim(self, task_id: str) -> None:
        if task_id not in self._history and task_id not in self._lost:
            return
        self._unclaimed[task_id] = None
        self._unclaimed.move_to_end(task_id)
        while len(self._unclaimed) > self._unclaimed_limit:
            oldest, _ = self._unclaimed.popitem(last=False)
            self._history.pop(oldest, None)
            self._lost.pop(oldest, None)

    def _collect(self) -> None:
        """Let go of the states of tasks whose last handle was garbage-collected."""
        while self._released:
            task_id = self._released.popleft()
            left = self._handles.get(task_id, 0) - 1
            if left > 0:
                self._handles[task_id] = left
                continue
            self._handles.pop(task_id, None)
            if task_id not in self._sinks:
                self._unclaim(task_id)

    def wait_sync(
        self, task_id: str, timeout: float | None, on_message: OnMessage | None
    ) -> ResultMessage:
        """Block this thread until the task is ready; no hop into the event loop."""
        inbox: queue.SimpleQueue[ResultMessage] = queue.SimpleQueue()
        unwatch = self.watch(task_id, inbox.put)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise _timed_out(task_id, timeout)
                try:
                    message = inbox.get(timeout=remaining)
                except queue.Empty:
                    raise _timed_out(task_id, timeout) from None
                if message.status == LOST:
                    raise _result_lost(message)
                if on_message is not None:
                    on_message(message.as_body())
                if message.status in READY_STATES:
                    return message
        finally:
            unwatch()

    async def wait_async(
        self, task_id: str, timeout: float | None, on_message: OnMessage | None
    ) -> ResultMessage:
        """Await readiness on the running loop, which may differ from the hub's loop."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[ResultMessage] = asyncio.Queue()
        if loop is self.loop:
            unwatch = self.watch(task_id, inbox.put_nowait)
        else:

            def forward(message: ResultMessage) -> None:
                loop.call_soon_threadsafe(inbox.put_nowait, message)

            unwatch = self.watch(task_id, forward)
        try:
            return await asyncio.wait_for(_drain(inbox, on_message), timeout)
        except asyncio.TimeoutError:
            raise _timed_out(task_id, timeout) from None
        finally:
            unwatch()


async def _drain(
    inbox: asyncio.Queue[ResultMessage], on_message: OnMessage | None
) -> ResultMessage:
    while True:
        message = await inbox.get()
        if message.status == LOST:
            raise _result_lost(message)
        if on_message is not None:
            outcome = on_message(message.as_body())
            if asyncio.iscoroutine(outcome):
                await outcome
        if message.status in READY_STATES:
            return message


def _timed_out(task_id: str, timeout: float | None) -> TimeoutError:
    return TimeoutError(f"task {task_id} not ready within {timeout}s")


def _result_lost(message: ResultMessage) -> ResultLost:
    return ResultLost(
        f"task {message.task_id}: {message.result}; its result may be lost (it may have run)",
        exc_type="ResultLost",
    )


class AsyncResult:
    """The caller's handle on a published task; its states arrive RPC-style."""

    def __init__(
        self,
        id: str,
        app: App | None = None,
        *,
        task_name: str | None = None,
        client: Client | None = None,
        parent: AsyncResult | None = None,
    ) -> None:
        if app is None and client is None:
            raise TypeError("AsyncResult needs app= (or a client)")
        self.id = id
        self.app = app
        self.task_name = task_name
        self.parent = parent
        self._client: Client | None = None
        if client is not None:
            self._attach(client)

    def _attach(self, client: Client) -> Client:
        """Use ``client``'s states; they are kept while this handle lives."""
        self._client = client
        client.hub.track(self.id, self)
        return client

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id} {self.state}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def task_id(self) -> str:
        return self.id

    # States, as far as this process has seen them.

    def _hub(self) -> ResultHub | None:
        if self._client is None and self.app is not None:
            started = self.app.portal_client_if_started()
            if started is not None:
                self._attach(started)
        return None if self._client is None else self._client.hub

    def _history(self) -> list[ResultMessage]:
        hub = self._hub()
        return [] if hub is None else hub.history(self.id)

    def _latest(self) -> ResultMessage | None:
        history = self._history()
        return history[-1] if history else None

    @property
    def state(self) -> str:
        latest = self._latest()
        return PENDING if latest is None else latest.status

    status = state

    def ready(self) -> bool:
        return self.state in READY_STATES

    def successful(self) -> bool:
        return self.state == SUCCESS

    def failed(self) -> bool:
        return self.state == FAILURE

    @property
    def result(self) -> Any:
        """The return value, the exception of a failure, or the meta of a PROGRESS state."""
        latest = self._latest()
        if latest is None:
            return None
        return _value_of(latest)

    info = result

    @property
    def traceback(self) -> str | None:
        latest = self._latest()
        return None if latest is None else latest.traceback

    @property
    def date_done(self) -> str | None:
        latest = self._latest()
        return latest.date_done if latest is not None and latest.status in READY_STATES else None

    @property
    def started_at(self) -> str | None:
        for message in self._history():
            if message.status == STARTED:
                return message.date_done
        return None

    # Waiting.

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        on_message: OnMessage | None = None,
    ) -> Any:
        """Block until the task is ready and return its value (or raise its exception)."""
        client = self._client_for_wait()
        return _outcome(client.hub.wait_sync(self.id, timeout, on_message), propagate)

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        on_message: OnMessage | None = None,
    ) -> Any:
        if self._client is None and self.app is not None:
            self._attach(await self.app.client())
        client = self._client_for_wait()
        return _outcome(await client.hub.wait_async(self.id, timeout, on_message), propagate)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.aget().__await__()

    def revoke(
        self,
        connection: object = None,
        terminate: bool = False,
        signal: str | int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Keep this task from starting on any worker (and stop it with ``terminate``).

        ``wait`` waits up to ``timeout`` seconds for the workers' replies, as in
        Celery; the caller's ``get()`` raises :class:`TaskRevokedError` once a worker
        met it. ``connection`` is in Celery's signature (a kombu connection); amqpworker
        uses the app's, and a connection given is refused rather than ignored.
        """
        _revoke(self._app_for("revoke"), [self.id], connection, terminate, signal, wait, timeout)

    def _app_for(self, what: str) -> App:
        if self.app is None:
            raise TypeError(f"{what}() needs the AsyncResult to have an app (app=...)")
        return self.app

    def forget(self) -> None:
        hub = self._hub()
        if hub is not None:
            hub.forget(self.id)

    def then(self, callback: Callable[[AsyncResult], Any]) -> AsyncResult:
        """Call ``callback(result)`` once the task is ready (on the client's loop thread)."""
        hub = self._client_for_wait().hub
        fired = threading.Event()
        unwatch: Callable[[], None] | None = None

        def on_state(message: ResultMessage) -> None:
            if message.status in READY_STATES and not fired.is_set():
                fired.set()
                callback(self)
                if unwatch is not None:
                    unwatch()

        unwatch = hub.watch(self.id, on_state)
        if fired.is_set():
            unwatch()
        return self

    def _client_for_wait(self) -> Client:
        if self._client is None:
            assert self.app is not None
            return self._attach(self.app.portal_client())
        return self._client


def _value_of(message: ResultMessage) -> Any:
    if message.status in EXCEPTION_STATES and isinstance(message.result, Mapping):
        return rebuild_exception(message.result, message.traceback)
    return message.result


def _outcome(message: ResultMessage, propagate: bool) -> Any:
    value = _value_of(message)
    if propagate and isinstance(value, BaseException):
        raise value
    return value


def rebuild_exception(data: Mapping[str, Any], traceback: str | None = None) -> BaseException:
    """The remote exception as its own type when this process knows it, else a TaskError.

    Known means a builtin, or a class in a module this process has already imported: a
    result message never makes the caller import anything (whoever can publish to a
    reply queue would otherwise run a module's top-level code in the caller).
    """
    module_name = str(data.get("exc_module") or "builtins")
    qualname = str(data.get("exc_type") or "Exception")
    raw_args = data.get("exc_message") or ()
    args = tuple(raw_args) if isinstance(raw_args, (list, tuple)) else (raw_args,)
    kind = _exception_class(module_name, qualname)
    if kind is not None:
        try:
            exc = kind(*args)
        except Exception:
            pass
        else:
            add_note = getattr(exc, "add_note", None)  # Python 3.11+
            if traceback and add_note is not None:
                add_note(f"Remote traceback:\n{traceback}")
            return exc
    full_name = qualname if module_name == "builtins" else f"{module_name}.{qualname}"
    detail = ", ".join(str(arg) for arg in args)
    return TaskError(f"{full_name}: {detail}" if detail else full_name, exc_type=full_name)


def _exception_class(module_name: str, qualname: str) -> type[Exception] | None:
    module = sys.modules.get(module_name)
    if module is None:
        return None
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            return None
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    return None


class GroupResult:
    """The results of a group, in the order its tasks were given."""

    def __init__(
        self,
        id: str,
        results: list[AsyncResult],
        app: App | None = None,
        parent: AsyncResult | None = None,
    ) -> None:
        self.id = id
        self.results = results
        self.app = app
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{len(self.results)} results]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    def revoke(
        self,
        connection: object = None,
        terminate: bool = False,
        signal: str | int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Revoke every task of the group (see :meth:`AsyncResult.revoke`)."""
        app = self.app or next((r.app for r in self.results if r.app is not None), None)
        if app is None:
            raise TypeError("revoke() needs the GroupResult to have an app (app=...)")
        ids = [result.id for result in self.results]
        _revoke(app, ids, connection, terminate, signal, wait, timeout)

    def ready(self) -> bool:
        return all(result.ready() for result in self.results)

    def successful(self) -> bool:
        return all(result.successful() for result in self.results)

    def failed(self) -> bool:
        return any(result.failed() for result in self.results)

    def waiting(self) -> bool:
        return not self.ready()

    def completed_count(self) -> int:
        return sum(1 for result in self.results if result.successful())

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        on_message: OnMessage | None = None,
    ) -> list[Any]:
        """Every result in order; ``timeout`` bounds the whole wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
            values.append(result.get(remaining, propagate, on_message))
        return values

    join = get

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        on_message: OnMessage | None = None,
    ) -> list[Any]:
        waits = [result.aget(None, propagate, on_message) for result in self.results]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*waits), timeout))
        except asyncio.TimeoutError:
            raise TimeoutError(f"group {self.id} not ready within {timeout}s") from None

    def __await__(self) -> Generator[Any, None, list[Any]]:
        return self.aget().__await__()


def _revoke(
    app: App,
    ids: list[str],
    connection: object,
    terminate: bool,
    signal: str | int | None,
    wait: bool,
    timeout: float | None,
) -> None:
    if connection is not None:
        raise TypeError("revoke(connection=...) is not supported: the app's connection is used")
    app.control.revoke(ids, terminate=terminate, signal=signal, reply=wait, timeout=timeout or 1.0)
