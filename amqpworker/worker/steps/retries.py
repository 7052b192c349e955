"""Retries, in one place: a task that asked to run again, and one that ran out of tries.

A retry is the task published again with ``retries + 1`` through the delay levels,
then this delivery acked; its caller sees RETRY, then the final state of the later run.
A retry that can never be published (an eta past the delay levels' reach) fails the
task; one that cannot be published now puts the message back. A task that failed with
no retries left goes to ``<queue>.dlq`` with its traceback (its caller got FAILURE).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from ...app.publisher import Publisher
from ...log import get_logger
from ...wire import ResultMessage
from ...wire.results import RETRY, exception_to_data, now_iso
from ..execution import Outcome
from ..pipeline import DeadLetter, Job, Requeue, Step
from .copies import Ledger
from .results import Reporter

log = get_logger(__name__)


class Retries(Step):
    def __init__(
        self, publisher: Publisher, reporter: Reporter, ledger: Ledger, timezone: dt.tzinfo
    ) -> None:
        self.publisher = publisher
        self.reporter = reporter
        self.ledger = ledger
        self.timezone = timezone

    async def __call__(self, job: Job) -> None:
        await self.proceed(job)
        outcome = job.outcome
        if outcome is None:
            return
        if outcome.retry is not None:
            await self._retry(job, outcome)
        elif job.request.retries_exhausted and outcome.exception is not None:
            exception = outcome.exception
            job.ending = DeadLetter(
                "failed-after-retries",
                f"{type(exception).__name__}: {exception} (after {job.message.retries} retries)",
                exception=outcome.traceback,
            )

    async def _retry(self, job: Job, outcome: Outcome) -> None:
        retry, message = outcome.retry, job.message
        assert retry is not None
        if isinstance(retry.when, dt.datetime):
            # A naive datetime is in the app's time zone, as everywhere else.
            when = retry.when
            eta = when if when.tzinfo else when.replace(tzinfo=self.timezone)
        else:
            eta = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=float(retry.when or 0))
        again = replace(
            message,
            retries=message.retries + 1,
            eta=eta,
            args=message.args if retry.retry_args is None else tuple(retry.retry_args),
            kwargs=message.kwargs if retry.retry_kwargs is None else dict(retry.retry_kwargs),
        )
        # RETRY goes out before the retry itself: a short retry can run, and report its
        # final state, before a RETRY sent after it would arrive (and then be ignored).
        await self.reporter.report(
            message,
            ResultMessage(
                message.id,
                RETRY,
                exception_to_data(outcome.exception or retry),
                outcome.traceback,
                now_iso(),
                message.task,
            ),
        )
        try:
            await self.publisher.publish_to_queue(
                job.delivery.queue, again, job.delivery.envelope.content_type, announce=True
            )
        except (TypeError, ValueError) as exc:
            # Not the broker's fault (an eta past the delay levels' reach): it never will be.
            self.ledger.remember(message, await self.reporter.fail(message, exc))
            job.ending = DeadLetter("retry-not-published", f"the retry cannot be published: {exc}")
            return
        except Exception as exc:
            log.error("could not publish the retry; the message goes back", error=str(exc))
            job.ending = Requeue("retry-not-published")
            return
        self.ledger.remember(message, None)  # the retry is out: this copy is done
