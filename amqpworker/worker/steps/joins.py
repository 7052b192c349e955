"""Chord joins: the built-in task a chord member sends after recording its result."""

from __future__ import annotations

from ...log import get_logger
from ..pipeline import Job, Requeue, Step
from ..workflow import JOIN_TASK, Workflow

log = get_logger(__name__)


class Joins(Step):
    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow

    async def __call__(self, job: Job) -> None:
        if job.message.task != JOIN_TASK:
            await self.proceed(job)
            return
        try:
            await self.workflow.join(job.message, job.delivery.queue)
        except Exception as exc:
            log.error("chord join failed; it will be tried again", error=str(exc))
            job.ending = Requeue("chord-join-failed")
