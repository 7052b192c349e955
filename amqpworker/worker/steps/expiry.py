"""Expiry: a task past its ``expires`` does not run; its caller gets REVOKED.

RabbitMQ drops expired messages only at the head of a queue, and not at all for a
message a caller waits on (it would never hear of it), so the worker checks just
before running.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from ...exceptions import TaskRevokedError
from ...wire.results import REVOKED
from ..pipeline import Job, Step
from ..stats import WorkerStats
from .results import Reporter, failure


class Expiry(Step):
    def __init__(self, reporter: Reporter, stats: WorkerStats) -> None:
        self.reporter = reporter
        self.stats = stats

    async def __call__(self, job: Job) -> None:
        message = job.message
        if message.expires is not None and message.expires <= dt.datetime.now(dt.timezone.utc):
            revoked = TaskRevokedError(f"task {message.id} expired at {message.expires}")
            await self.reporter.report(message, replace(failure(message, revoked), status=REVOKED))
            job.revoked = "expired"
            self.stats.count(job.task.name, REVOKED)
            return  # acked
        await self.proceed(job)
