"""A delivery's way through a worker: an ordered list of small steps.

Each step is a :class:`Step` that does its part and either hands the job on (``await
self.proceed(job)``), possibly doing more when that returns, or stops there.
A step that stops says how the delivery ends in ``job.ending``; the
:class:`~.steps.acks.Acknowledge` step, the outermost, carries that out, so settling
is decided in one place. ``amqpworker/worker/steps/`` has one module per step, and
:func:`~.steps.default_steps` their order.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..app.task import Request, Task
from ..broker import Delivery
from ..wire import TaskMessage
from .execution import Outcome

Proceed = Callable[["Job"], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Ack:
    """End the delivery with an ack (the default)."""


@dataclass(frozen=True, slots=True)
class Requeue:
    """Put it back in its queue, for a reason that is not the task's fault."""

    because: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Copy it into ``<queue>.dlq`` with the reason, then ack it."""

    reason: str
    detail: str
    exception: str | None = None


#: ``None``: a step settled the delivery itself (or must not: the broker has it again).
Ending = Ack | Requeue | DeadLetter | None
ACK = Ack()


@dataclass(slots=True, eq=False)
class Job:
    """One delivery on its way; each step fills in what the later ones need."""

    delivery: Delivery
    ending: Ending = ACK
    #: Set by the decode step.
    message: TaskMessage = field(init=False)
    #: Set by the lookup step.
    task: Task = field(init=False)
    #: Set when the job is admitted to run.
    request: Request = field(init=False)
    #: Set by the execute step once the task ran.
    outcome: Outcome | None = None
    #: Why it did not run, or stopped, as REVOKED: "expired", "revoked" or "terminated".
    revoked: str | None = None

    @property
    def retrying(self) -> bool:
        """The task asked to run again later: its result is not final."""
        return self.outcome is not None and self.outcome.retry is not None


class Step:
    """One step; :func:`compose` sets ``proceed``, which hands the job to the next one."""

    proceed: Proceed

    async def __call__(self, job: Job) -> None:
        await self.proceed(job)


def compose(steps: Sequence[Step]) -> Proceed:
    """Link ``steps`` in order; the first one runs a job through all of them."""

    async def end(job: Job) -> None:
        return None

    following: Proceed = end
    for step in reversed(steps):
        step.proceed = following
        following = step.__call__  # bound once: no attribute lookup per call
    return following
