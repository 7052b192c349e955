"""Revoked or expired: a task that must not start any more; its caller gets REVOKED.

Checked at the last moment before the run, once the job has its slot, so a revoke that
arrived while it waited still holds. RabbitMQ drops expired messages only at the head
of a queue, and not at all for a message a caller waits on (it would never hear of it),
so expiry is checked here too.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from ...exceptions import TaskRevokedError
from ...wire.results import REVOKED
from ..pipeline import Job, Step
from ..revocations import Revocations
from ..stats import WorkerStats
from .results import Reporter, failure


class Revoked(Step):
    def __init__(self, revocations: Revocations, reporter: Reporter, stats: WorkerStats) -> None:
        self.revocations = revocations
        self.reporter = reporter
        self.stats = stats

    async def __call__(self, job: Job) -> None:
        message = job.message
        if self.revocations.holds(message.id):
            await self._revoked(job, "revoked", f"task {message.id} was revoked")
        elif message.expires is not None and message.expires <= dt.datetime.now(dt.timezone.utc):
            await self._revoked(job, "expired", f"task {message.id} expired at {message.expires}")
        else:
            await self.proceed(job)

    async def _revoked(self, job: Job, why: str, detail: str) -> None:
        message = job.message
        error = TaskRevokedError(detail)
        await self.reporter.report(message, replace(failure(message, error), status=REVOKED))
        job.revoked = why  # acked, never run
        self.stats.count(job.task.name, REVOKED)
