"""Continuing a workflow after its step ran: next steps, callbacks, errbacks, chord records.

After the step's own state (a caller sees a failing step fail first) and before its ack
(a crash continues the workflow again, never not at all). When the next steps cannot be
sent, the step is not run again: the workflow's caller gets FAILURE for every later
result, and the message goes to ``<queue>.dlq`` once as ``workflow-failed``.
"""

from __future__ import annotations

import traceback

from ...app.task import current_request
from ...exceptions import WorkflowError
from ...log import get_logger
from ..pipeline import DeadLetter, Job, Step
from ..workflow import Workflow

log = get_logger(__name__)


class ContinueWorkflow(Step):
    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow

    async def __call__(self, job: Job) -> None:
        await self.proceed(job)
        message, outcome = job.message, job.outcome
        if outcome is None or job.retrying or not self.workflow.involved(message):
            return
        token = current_request.set(job.request)  # next steps name this one as parent
        try:
            await self.workflow.after(message, job.request, outcome, job.delivery.queue)
        except Exception as error:
            failure = WorkflowError(
                f"the workflow could not continue after {message.task}: {error}"
            )
            log.error("could not continue the workflow", task_id=message.id, error=str(error))
            trace = traceback.format_exc()
            try:
                await self.workflow.fail_remaining(message, failure, None)
            except Exception as exc:
                log.warning("could not tell the caller that its workflow failed", error=str(exc))
            job.ending = DeadLetter("workflow-failed", str(failure), exception=trace)
        finally:
            current_request.reset(token)
