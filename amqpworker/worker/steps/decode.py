"""Reading the message: anything that breaks the wire format is dead-lettered with a reason."""

from __future__ import annotations

import datetime as dt

from ...exceptions import MessageError
from ...wire import SerializerRegistry, TaskMessage
from ..pipeline import DeadLetter, Job, Step
from .results import Reporter


class Decode(Step):
    def __init__(
        self,
        serializers: SerializerRegistry,
        accepted: frozenset[str],
        timezone: dt.tzinfo,
        reporter: Reporter,
    ) -> None:
        self.serializers = serializers
        self.accepted = accepted
        self.timezone = timezone
        self.reporter = reporter

    async def __call__(self, job: Job) -> None:
        try:
            job.message = TaskMessage.decode(
                job.delivery.envelope, self.serializers, self.accepted, self.timezone
            )
        except MessageError as exc:
            await self.reporter.tell_caller_it_failed(job.delivery, exc)
            job.ending = DeadLetter(exc.reason, str(exc))
            return
        await self.proceed(job)
