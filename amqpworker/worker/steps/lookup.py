"""Finding the task a message names; a name this worker does not know is dead-lettered."""

from __future__ import annotations

from ...app import App
from ...exceptions import NotRegistered
from ..pipeline import DeadLetter, Job, Step
from .results import Reporter


class Lookup(Step):
    def __init__(self, app: App, reporter: Reporter) -> None:
        self.app = app
        self.reporter = reporter

    async def __call__(self, job: Job) -> None:
        task = self.app.get_task(job.message.task)
        if task is None:
            error = NotRegistered(f"task {job.message.task!r} is not registered on this worker")
            await self.reporter.fail(job.message, error)
            job.ending = DeadLetter("unknown-task", str(error))
            return
        job.task = task
        await self.proceed(job)
