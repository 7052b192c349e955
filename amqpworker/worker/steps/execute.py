"""Running the task: the innermost step.

Plain functions run in the thread pool (or inline on the loop with ``--pool asyncio``),
coroutines on the loop. A task with ``acks_late=False`` is acked just before it runs.
Progress states it sent go out before anything reports its outcome.

``terminate`` stops a running task for ``revoke(terminate=True)``: a coroutine is
cancelled; a thread gets :class:`~..pool.Terminated` raised in it, and is abandoned
(replaced in the pool) if it does not stop within :data:`TERMINATE_GRACE` seconds, as
a thread blocked in C never sees it. A task inline on the loop (``--pool asyncio``)
cannot be stopped: the loop runs nothing else meanwhile.

Time limits (see :mod:`..limits`) use the same means: at the soft limit the task sees
:class:`~amqpworker.exceptions.SoftTimeLimitExceeded`; at the hard limit it is stopped
as by ``terminate`` but without grace, and ends as FAILURE with ``TimeLimitExceeded``.
A run without a limit sets no timer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ...exceptions import (
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from ...log import get_logger
from ...settings import Settings
from ...wire.results import FAILURE, REVOKED
from ..execution import Outcome, finish, run_async, run_sync
from ..limits import Clock, Interruption, Limits, limits_for, soft_limit_error
from ..limits import uncancel as _uncancel
from ..pipeline import DeadLetter, Job, Requeue, Step
from ..pool import TaskThreads, Terminated
from ..processes import ChildLost, ProcessPool
from ..settle import Settler
from ..stats import WorkerStats
from .results import StatePublisher

log = get_logger(__name__)

#: Seconds a thread has to stop after ``Terminated`` was raised in it.
TERMINATE_GRACE = 1.0


class Execute(Step):
    def __init__(
        self,
        threads: TaskThreads | None,
        settle: Settler,
        stats: WorkerStats,
        conf: Settings,
        processes: ProcessPool | None = None,
    ) -> None:
        self.threads = threads
        self.processes = processes
        self.settle = settle
        self.stats = stats
        self.conf = conf
        #: What runs now, by task id: the job and what to stop it by.
        self._running: dict[str, tuple[Job, asyncio.Future[Any] | None]] = {}

    async def __call__(self, job: Job) -> None:
        task, request = job.task, job.request
        if not task.effective_acks_late:
            await self.settle.ack(job.delivery)
        self.stats.running += 1
        task_id = job.message.id
        limits = limits_for(job.message, task, self.conf)
        clock: Clock | None = None
        outcome: Outcome | None
        try:
            if task.is_coroutine:
                current = asyncio.current_task()
                self._running[task_id] = (job, current)
                if limits is None:
                    outcome = await run_async(task, request)
                else:
                    assert current is not None
                    interruption = Interruption()
                    clock = _coroutine_clock(limits, task.name, current, interruption)
                    outcome = await run_async(task, request, interruption)
            elif self.processes is not None:
                self._running[task_id] = (job, None)
                try:
                    outcome = await self.processes.run(task, request, limits)
                except ChildLost as lost:
                    outcome = await self._child_lost(job, lost, limits)
            elif self.threads is None:
                outcome = run_sync(task, request)  # nothing can stop it: no entry
            else:
                running = self.threads.run(run_sync, task, request)
                self._running[task_id] = (job, running)
                if limits is not None:
                    clock = _thread_clock(limits, self.threads, running)
                outcome = await running
        except (asyncio.CancelledError, Terminated):
            if clock is not None and clock.expired:
                _uncancel()
                outcome = await self._over_time(job, clock.hard)
            elif job.revoked != "terminated":
                raise  # a shutdown: the task runs again elsewhere
            else:
                _uncancel()
                outcome = Outcome(REVOKED, exception=TaskRevokedError(f"task {task_id} terminated"))
        finally:
            if clock is not None:
                clock.stop()
            self.stats.running -= 1
            self._running.pop(task_id, None)
        if outcome is not None:  # None: it goes back to its queue, not run here
            self.stats.count(task.name, outcome.status)
        publisher = request.publish_state
        if isinstance(publisher, StatePublisher):
            await publisher.flush()
        job.outcome = outcome

    async def _child_lost(self, job: Job, lost: ChildLost, limits: Limits | None) -> Outcome | None:
        """What the end of a child that ran a task means for the task and its message.

        Killed at the hard limit: FAILURE with TimeLimitExceeded. Terminated by revoke:
        REVOKED. Died: FAILURE with WorkerLostError, as in Celery; with ``acks_late``
        the message goes to ``<queue>.dlq``, or back to its queue once (the first time it
        is delivered) with ``task_reject_on_worker_lost``, then no result is reported.
        """
        task, message = job.task, job.message
        if lost.why == "time-limit":
            return await self._over_time(job, limits[1] if limits else None)
        if lost.why == "terminated":
            return Outcome(REVOKED, exception=TaskRevokedError(f"task {message.id} terminated"))
        detail = f"the child process running {task.name} ended (exit code {lost.exitcode})"
        if task.effective_acks_late:
            reject = task.reject_on_worker_lost
            if reject is None:
                reject = self.conf.task_reject_on_worker_lost
            if reject and not job.delivery.redelivered:
                log.warning("child process lost; the task goes back to its queue", detail=detail)
                job.ending = Requeue("worker-lost")
                return None
            job.ending = DeadLetter("worker-lost", detail, exception="WorkerLostError")
        error = WorkerLostError(detail)
        outcome = Outcome(FAILURE, exception=error)
        return await asyncio.to_thread(finish, task, job.request, outcome)

    async def _over_time(self, job: Job, hard: float | None) -> Outcome:
        """FAILURE with TimeLimitExceeded, after the task's hooks (in a thread if sync)."""
        task, request = job.task, job.request
        log.error("task stopped at its hard time limit", hard_time_limit=hard)
        error = TimeLimitExceeded(f"{task.name} ran past its hard time limit ({hard}s)")
        outcome = Outcome(FAILURE, exception=error)
        if task.is_coroutine:
            return finish(task, request, outcome)
        if self.threads is None:  # the process pool: the task's child is gone
            return await asyncio.to_thread(finish, task, request, outcome)
        return await self.threads.run(finish, task, request, outcome)

    def terminate(self, task_id: str, signal_name: str = "SIGTERM") -> bool:
        """Stop ``task_id`` if it runs here and can be stopped; True if it is being stopped.

        ``signal_name`` is what a child process gets (``--pool process``).
        """
        entry = self._running.get(task_id)
        if entry is None:
            return False
        job, running = entry
        if job.revoked == "terminated":  # by the other way a revoke comes
            return True
        if running is None:
            if self.processes is not None and self.processes.terminate(task_id, signal_name):
                job.revoked = "terminated"
                return True
            return False
        job.revoked = "terminated"
        if isinstance(running, asyncio.Task):
            running.cancel()
            return True
        assert self.threads is not None
        self.threads.interrupt(running, TERMINATE_GRACE)
        return True


def _coroutine_clock(
    limits: Limits, name: str, running: asyncio.Task[Any], interruption: Interruption
) -> Clock:
    """Soft: the task sees SoftTimeLimitExceeded where it waits. Hard: it is cancelled."""
    soft = limits[0]

    def on_soft() -> None:
        interruption.replacement = soft_limit_error(name, soft)
        running.cancel()

    def on_hard() -> None:
        interruption.replacement = None
        running.cancel()

    return Clock(limits, on_soft, on_hard)


def _thread_clock(limits: Limits, threads: TaskThreads, running: asyncio.Future[Any]) -> Clock:
    """Soft: SoftTimeLimitExceeded raised in the thread. Hard: the thread is abandoned.

    A thread cannot be killed: at the hard limit ``Terminated`` is raised in it (it
    stops there if it runs Python) and it is replaced in the pool at once.
    """
    return Clock(
        limits,
        lambda: threads.interrupt(running, None, SoftTimeLimitExceeded),
        lambda: threads.interrupt(running, 0),
    )
