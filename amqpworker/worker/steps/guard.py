"""The outermost step: whatever goes wrong, no delivery is left unsettled.

An error no step expected (a bug) would otherwise leave the delivery unacknowledged
for good, and a prefetch's worth of them stops a worker from taking more work. It is
dead-lettered as ``worker-error`` with the traceback instead, never looped.
"""

from __future__ import annotations

import traceback

from ...log import get_logger
from ..pipeline import Job, Step
from ..settle import Settler

log = get_logger(__name__)


class Guard(Step):
    def __init__(self, settle: Settler) -> None:
        self.settle = settle

    async def __call__(self, job: Job) -> None:
        try:
            await self.proceed(job)
        except Exception as exc:
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
