"""The process pool: ``size`` child processes running plain tasks for the worker's loop.

The loop, the consumers and the acks stay in this process; each child has a pipe, read
on the loop (no thread per child), and runs one task at a time (:mod:`.child`). Children
start once and serve many tasks; one is replaced when it dies, when it is killed at a
hard time limit or by ``revoke(terminate=True)``, and when it retires after
``worker_max_tasks_per_child`` tasks or past ``worker_max_memory_per_child``.

Children are started by the ``forkserver`` method: the parent runs an event loop, broker
connections and threads, none of which a plain ``fork`` would copy safely (a lock held
by another thread stays held in the child forever). The fork server is a clean process
that imports the app once; each child is a fork of it, so a replacement starts in
milliseconds without importing the app again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from ..app import App
from ..app.task import Request, Task
from ..log import get_logger
from .child import SOFT_LIMIT_SIGNAL, ChildSpec, main
from .execution import Outcome
from .limits import Clock, Limits

log = get_logger(__name__)

#: Seconds a child gets to leave when the worker stops, before it is killed.
STOP_GRACE = 5.0


class ChildLost(Exception):
    """The child running a task ended before the task did.

    ``why`` is "time-limit" (killed at the hard limit), "terminated" (by revoke) or
    "lost" (it died: killed from outside, crashed, exited).
    """

    def __init__(self, why: str, exitcode: int | None) -> None:
        super().__init__(f"child process ended ({why}, exit code {exitcode})")
        self.why = why
        self.exitcode = exitcode


@dataclass(eq=False)
class _Child:
    process: BaseProcess
    connection: Connection
    #: The running task: its id, the future its outcome settles, where its states go.
    task_id: str | None = None
    future: asyncio.Future[Outcome] | None = None
    request: Request | None = None
    #: Why we ended it, if we did.
    ended_by: str | None = None

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid


def app_location(app: object) -> str:
    """``module:attribute`` where ``app`` can be imported from, for the children."""
    import sys

    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None:
            continue
        for attribute, value in list(vars(module).items()):
            if value is app:
                return f"{name}:{attribute}"
    raise ValueError(
        "the process pool needs the app at module level in an importable module "
        "(as `amqpworker serve -A module` finds it), so that its children can import it"
    )


def child_spec(app: App, pool: str) -> ChildSpec | None:
    """What the children need, for ``--pool process``; per-child limits need that pool."""
    conf = app.conf
    if pool != "process":
        for name in ("worker_max_tasks_per_child", "worker_max_memory_per_child"):
            if getattr(conf, name) is not None:
                raise ValueError(f"{name} applies to the process pool only (--pool process)")
        return None
    return ChildSpec(
        app=app_location(app),
        settings=conf.model_dump(exclude_unset=True),
        max_tasks=conf.worker_max_tasks_per_child,
        max_memory_kib=conf.worker_max_memory_per_child,
    )


class ProcessPool:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        size: int,
        spec: ChildSpec,
    ) -> None:
        self._loop = loop
        self._size = size
        self._spec = spec
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([spec.app.partition(":")[0]])
        self._children: set[_Child] = set()
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._by_task: dict[str, _Child] = {}
        self._closing = False

    async def start(self) -> None:
        """Start every child (the first start also starts the fork server)."""
        for _ in range(self._size):
            await self._add_child()

    def pids(self) -> list[int]:
        return sorted(child.pid for child in self._children)

    async def run(self, task: Task, request: Request, limits: Limits | None) -> Outcome:
        """Run ``task`` in a child; raises :class:`ChildLost` if the child ends first."""
        child = await self._idle.get()
        future: asyncio.Future[Outcome] = self._loop.create_future()
        task_id = request.id or ""
        child.task_id, child.future, child.request = task_id, future, request
        self._by_task[task_id] = child
        clock = None
        # One that died while idle fails here; its reader then fails the task and replaces it.
        with contextlib.suppress(OSError, ValueError):
            child.connection.send((task.name, dataclasses.replace(request, publish_state=None)))
        if limits is not None:
            clock = Clock(
                limits, lambda: self._signal(child, future), lambda: self._kill(child, future)
            )
        try:
            return await future
        finally:
            if clock is not None:
                clock.stop()
            if self._by_task.get(task_id) is child:
                del self._by_task[task_id]

    def terminate(self, task_id: str, signal_name: str = "SIGTERM") -> bool:
        """Signal the child running ``task_id`` (revoke with terminate); True if there is one.

        It is replaced once it ended; a signal it survives (SIGUSR1, SIGHUP with a
        handler...) leaves the task running, and reported as it ends.
        """
        child = self._by_task.get(task_id)
        if child is None or child.future is None:
            return False
        child.ended_by = "terminated"
        _kill(child.pid, signal.Signals[signal_name])
        return True

    async def close(self) -> None:
        """Tell idle children to leave, kill busy ones (their tasks run again elsewhere)."""
        self._closing = True
        for child in list(self._children):
            if child.future is None:
                with contextlib.suppress(OSError, ValueError):
                    child.connection.send(None)
            else:
                _kill(child.pid, signal.SIGKILL)
        await asyncio.to_thread(self._join_all)

    def _join_all(self) -> None:
        for child in list(self._children):
            child.process.join(STOP_GRACE)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(STOP_GRACE)
            self._forget(child)

    # Children.

    async def _add_child(self) -> None:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=main, args=(self._spec, theirs), name="amqpworker-child", daemon=True
        )
        await asyncio.to_thread(process.start)
        theirs.close()
        child = _Child(process, ours)
        self._children.add(child)
        self._loop.add_reader(ours.fileno(), self._on_readable, child)
        self._idle.put_nowait(child)

    def _on_readable(self, child: _Child) -> None:
        try:
            kind, *rest = child.connection.recv()
        except (EOFError, OSError):
            self._ended(child)
            return
        except Exception as exc:  # a state or result that does not unpickle here
            log.error("a child sent what cannot be read", error=f"{type(exc).__name__}: {exc}")
            self._settle(child, error=exc)
            child.ended_by = "unreadable"  # out of step with us: replaced
            _kill(child.pid, signal.SIGKILL)
            return
        if kind == "state":
            request = child.request
            if request is not None and request.publish_state is not None:
                request.publish_state(rest[0])
            return
        outcome, retiring = rest
        child.ended_by = None  # a signal it survived: the task ended its own way
        self._settle(child, outcome=outcome)
        if not retiring:
            self._idle.put_nowait(child)
        # A retiring child leaves by itself; its end (EOF) starts the next one.

    def _settle(
        self, child: _Child, outcome: Outcome | None = None, error: BaseException | None = None
    ) -> None:
        future = child.future
        child.task_id = child.future = child.request = None
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)  # type: ignore[arg-type]

    def _ended(self, child: _Child) -> None:
        """The child's pipe closed: it left or died. Fail its task, start another."""
        self._forget(child)
        child.process.join(1.0)  # it is gone or going: reap it
        exitcode = child.process.exitcode
        if child.future is not None:
            why = child.ended_by or "lost"
            if why == "lost":
                log.error("a child process died running a task", pid=child.pid, exitcode=exitcode)
            self._settle(child, error=ChildLost(why, exitcode))
        if not self._closing:
            self._loop.create_task(self._add_child())

    def _forget(self, child: _Child) -> None:
        if child in self._children:
            self._children.discard(child)
            self._loop.remove_reader(child.connection.fileno())
            child.connection.close()

    # Limits.

    def _signal(self, child: _Child, future: asyncio.Future[Outcome]) -> None:
        if child.future is future:
            _kill(child.pid, SOFT_LIMIT_SIGNAL)

    def _kill(self, child: _Child, future: asyncio.Future[Outcome]) -> None:
        if child.future is future:
            child.ended_by = "time-limit"
            _kill(child.pid, signal.SIGKILL)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone: its pipe tells
        os.kill(pid, signum)
