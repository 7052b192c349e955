"""Measuring each run: how long its message waited, and how long it ran.

Only in the pipeline when metrics are served (``worker_metrics_port``), just around
the run, so with metrics off nothing is measured. Counts need no step: the metrics
read the worker's own counters when scraped.

The wait is from when the message was published (its ``x-amqpworker-sent-at`` header,
by the publisher's clock) or from its eta, whichever is later, to the start of the
run; a message without that header (a Celery client's) is not measured.
"""

from __future__ import annotations

import time
from typing import Protocol

from ...wire.message import SENT_AT_HEADER
from ..pipeline import Job, Step


class RunObserver(Protocol):
    def observe_wait(self, task_name: str, seconds: float) -> None: ...

    def observe_run(self, task_name: str, seconds: float) -> None: ...


class Measure(Step):
    def __init__(self, observer: RunObserver) -> None:
        self.observer = observer

    async def __call__(self, job: Job) -> None:
        name = job.task.name
        waited = queue_wait(job, time.time())
        if waited is not None:
            self.observer.observe_wait(name, waited)
        started = time.perf_counter()
        await self.proceed(job)
        if job.outcome is not None:
            self.observer.observe_run(name, time.perf_counter() - started)


def queue_wait(job: Job, now: float) -> float | None:
    """Seconds from publish (or eta, if later) to ``now``; None when unknown."""
    sent = job.delivery.envelope.headers.get(SENT_AT_HEADER)
    if not isinstance(sent, int) or isinstance(sent, bool):
        return None
    since = sent / 1000
    eta = job.message.eta
    if eta is not None:
        since = max(since, eta.timestamp())
    # Clocks of publisher and worker hosts differ a little: never a negative wait.
    return max(now - since, 0.0)
