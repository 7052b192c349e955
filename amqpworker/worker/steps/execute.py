"""Running the task: the innermost step.

Plain functions run in the thread pool (or inline on the loop with ``--pool asyncio``),
coroutines on the loop. A task with ``acks_late=False`` is acked just before it runs.
Progress states it sent go out before anything reports its outcome.
"""

from __future__ import annotations

from ...app.task import Request, Task
from ..execution import Outcome, run_async, run_sync
from ..pipeline import Job, Step
from ..pool import TaskThreads
from ..settle import Settler
from ..stats import WorkerStats
from .results import StatePublisher


class Execute(Step):
    def __init__(self, threads: TaskThreads | None, settle: Settler, stats: WorkerStats) -> None:
        self.threads = threads
        self.settle = settle
        self.stats = stats

    async def __call__(self, job: Job) -> None:
        task, request = job.task, job.request
        if not task.effective_acks_late:
            await self.settle.ack(job.delivery)
        self.stats.running += 1
        try:
            outcome = await self._run(task, request)
        finally:
            self.stats.running -= 1
        self.stats.count(task.name, outcome.status)
        publisher = request.publish_state
        if isinstance(publisher, StatePublisher):
            await publisher.flush()
        job.outcome = outcome

    async def _run(self, task: Task, request: Request) -> Outcome:
        if task.is_coroutine:
            return await run_async(task, request)
        if self.threads is None:
            return run_sync(task, request)
        return await self.threads.run(run_sync, task, request)
