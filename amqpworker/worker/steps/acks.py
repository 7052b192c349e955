"""The outermost step: every delivery ends here, the way the steps inside decided.

``job.ending`` says how: an ack after the task ran (``acks_late``) is what makes a crash
redeliver the message rather than lose it; a dead-letter is a confirmed copy into
``<queue>.dlq`` and then an ack; a requeue carries its reason for the redelivery count
(see ``worker/settle.py``). Whatever goes wrong meanwhile, no delivery is left
unsettled: an error no step expected (a bug) would leave it unacknowledged for good, and
a prefetch's worth of them would stop the worker; it is dead-lettered as
``worker-error`` with the traceback instead, never looped.
"""

from __future__ import annotations

import traceback

from ...log import get_logger
from ..pipeline import Ack, DeadLetter, Job, Requeue, Step
from ..settle import Settler

log = get_logger(__name__)


class Acknowledge(Step):
    def __init__(self, settle: Settler) -> None:
        self.settle = settle

    async def __call__(self, job: Job) -> None:
        try:
            await self.proceed(job)
            if job.ending is not None:
                await end(job, self.settle)
        except Exception as exc:
            await self._worker_error(job, exc)

    async def _worker_error(self, job: Job, exc: Exception) -> None:
        delivery = job.delivery
        log.exception("could not handle a delivery", message_id=delivery.envelope.message_id)
        if delivery.settled:
            return
        try:
            await self.settle.dead_letter(
                delivery,
                "worker-error",
                f"{type(exc).__name__}: {exc}",
                exception=traceback.format_exc(),
            )
        except Exception:
            log.exception("could not dead-letter it either; it goes back to its queue")
            await self.settle.requeue(delivery, "worker-error")


async def end(job: Job, settle: Settler) -> None:
    """Carry out ``job.ending``, once: afterwards there is nothing left to do."""
    ending, job.ending = job.ending, None
    if isinstance(ending, Ack):
        await settle.ack(job.delivery)
    elif isinstance(ending, DeadLetter):
        await settle.dead_letter(
            job.delivery, ending.reason, ending.detail, exception=ending.exception
        )
    elif isinstance(ending, Requeue):
        await settle.requeue(job.delivery, ending.because)
