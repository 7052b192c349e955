"""Task events, from three places in the pipeline; only there when events are on.

:func:`~amqpworker.worker.steps.default_steps` adds these steps only for a worker that
sends task events (``serve -E``), so a worker without events does not pay for them.
Each one hands its event to the :class:`~amqpworker.broker.events.EventSender`, which
only buffers it: nothing here waits for the broker.

- :class:`AnnounceReceived`, right after the message is read: task-received; on the way
  out, task-rejected or task-revoked for a message that never got a slot to run in.
- :class:`AnnounceEnding`, right inside the slot: task-revoked (expired, revoked or
  terminated) and task-rejected (dead-lettered or put back) for an admitted one.
- :class:`AnnounceRun`, right around the run: task-started, then task-succeeded,
  task-failed or task-retried.
"""

from __future__ import annotations

import time

from ...broker.events import EventSender
from ...wire.events import describe_task, short_repr
from ..pipeline import DeadLetter, Job, Requeue, Step


class AnnounceReceived(Step):
    def __init__(self, events: EventSender) -> None:
        self.events = events

    async def __call__(self, job: Job) -> None:
        self.events.send("task-received", describe_task(job.message))
        await self.proceed(job)
        if not admitted(job):  # else AnnounceEnding told how it ended
            announce_ending(self.events, job)


class AnnounceEnding(Step):
    def __init__(self, events: EventSender) -> None:
        self.events = events

    async def __call__(self, job: Job) -> None:
        await self.proceed(job)
        announce_ending(self.events, job)


class AnnounceRun(Step):
    def __init__(self, events: EventSender) -> None:
        self.events = events

    async def __call__(self, job: Job) -> None:
        task_id = job.message.id
        self.events.send("task-started", {"uuid": task_id})
        started = time.perf_counter()
        await self.proceed(job)
        runtime = time.perf_counter() - started
        outcome = job.outcome
        if outcome is None or job.revoked is not None:
            return  # task-revoked says how it ended
        if outcome.retry is not None:
            self.events.send(
                "task-retried",
                {
                    "uuid": task_id,
                    "exception": short_repr(outcome.exception or outcome.retry),
                    "traceback": outcome.traceback,
                },
            )
        elif outcome.exception is not None:
            self.events.send(
                "task-failed",
                {
                    "uuid": task_id,
                    "exception": short_repr(outcome.exception),
                    "traceback": outcome.traceback,
                    "runtime": runtime,
                },
            )
        else:
            self.events.send(
                "task-succeeded",
                {"uuid": task_id, "result": short_repr(outcome.value), "runtime": runtime},
            )


def admitted(job: Job) -> bool:
    """Whether the job got a slot to run in (the slots step gives it its request then)."""
    return hasattr(job, "request")


def announce_ending(events: EventSender, job: Job) -> None:
    """task-revoked and task-rejected: how a job that did not end with a run ended.

    task-revoked for one that did not run, or stopped, as REVOKED; task-rejected for one
    that ends dead-lettered or put back in its queue.
    """
    task_id = job.message.id
    if job.revoked is not None:
        events.send(
            "task-revoked",
            {
                "uuid": task_id,
                "terminated": job.revoked == "terminated",
                "signum": None,
                "expired": job.revoked == "expired",
            },
        )
    ending = job.ending
    if isinstance(ending, DeadLetter):
        events.send("task-rejected", {"uuid": task_id, "requeue": False, "reason": ending.reason})
    elif isinstance(ending, Requeue):
        events.send("task-rejected", {"uuid": task_id, "requeue": True, "reason": ending.because})
