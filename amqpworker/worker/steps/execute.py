"""Running the task: the innermost step.

Plain functions run in the thread pool (or inline on the loop with ``--pool asyncio``),
coroutines on the loop. A task with ``acks_late=False`` is acked just before it runs.
Progress states it sent go out before anything reports its outcome.

``terminate`` stops a running task for ``revoke(terminate=True)``: a coroutine is
cancelled; a thread gets :class:`~..pool.Terminated` raised in it, and is abandoned
(replaced in the pool) if it does not stop within :data:`TERMINATE_GRACE` seconds, as
a thread blocked in C never sees it. A task inline on the loop (``--pool asyncio``)
cannot be stopped: the loop runs nothing else meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ...exceptions import TaskRevokedError
from ...log import get_logger
from ...wire.results import REVOKED
from ..execution import Outcome, run_async, run_sync
from ..pipeline import Job, Step
from ..pool import TaskThreads, Terminated
from ..settle import Settler
from ..stats import WorkerStats
from .results import StatePublisher

log = get_logger(__name__)

#: Seconds a thread has to stop after ``Terminated`` was raised in it.
TERMINATE_GRACE = 1.0


class Execute(Step):
    def __init__(self, threads: TaskThreads | None, settle: Settler, stats: WorkerStats) -> None:
        self.threads = threads
        self.settle = settle
        self.stats = stats
        #: What runs now, by task id: the job and what to stop it by.
        self._running: dict[str, tuple[Job, asyncio.Future[Any] | None]] = {}

    async def __call__(self, job: Job) -> None:
        task, request = job.task, job.request
        if not task.effective_acks_late:
            await self.settle.ack(job.delivery)
        self.stats.running += 1
        task_id = job.message.id
        try:
            if task.is_coroutine:
                self._running[task_id] = (job, asyncio.current_task())
                outcome = await run_async(task, request)
            elif self.threads is None:
                outcome = run_sync(task, request)  # nothing can stop it: no entry
            else:
                running = self.threads.run(run_sync, task, request)
                self._running[task_id] = (job, running)
                outcome = await running
        except (asyncio.CancelledError, Terminated):
            if job.revoked != "terminated":
                raise  # a shutdown: the task runs again elsewhere
            _uncancel()
            outcome = Outcome(REVOKED, exception=TaskRevokedError(f"task {task_id} terminated"))
        finally:
            self.stats.running -= 1
            self._running.pop(task_id, None)
        self.stats.count(task.name, outcome.status)
        publisher = request.publish_state
        if isinstance(publisher, StatePublisher):
            await publisher.flush()
        job.outcome = outcome

    def terminate(self, task_id: str) -> bool:
        """Stop ``task_id`` if it runs here and can be stopped; True if it is being stopped."""
        entry = self._running.get(task_id)
        if entry is None:
            return False
        job, running = entry
        if job.revoked == "terminated":  # by the other way a revoke comes
            return True
        if running is None:
            return False
        job.revoked = "terminated"
        if isinstance(running, asyncio.Task):
            running.cancel()
            return True
        assert self.threads is not None
        self.threads.interrupt(running, TERMINATE_GRACE)
        return True


def _uncancel() -> None:
    """Let the job's handler go on normally after its task was cancelled (3.11+)."""
    current = asyncio.current_task()
    if current is not None and hasattr(current, "uncancel"):
        current.uncancel()
