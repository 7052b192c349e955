"""Running one task: call it, run its hooks, and say what happened. No broker here.

The same :func:`finish` serves plain functions (in a thread, or inline on the loop) and
coroutines, so a task behaves the same whatever pool runs it.
"""

from __future__ import annotations

import traceback as tb
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..app.task import Request, Task, current_request
from ..exceptions import Retry
from ..log import get_logger
from ..wire.results import FAILURE, RETRY, SUCCESS, ResultMessage, exception_to_data, now_iso
from .limits import Interruption, interruptible

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended. A RETRY outcome carries the :class:`Retry` as ``retry``."""

    status: str
    value: Any = None
    exception: BaseException | None = None
    traceback: str | None = None
    retry: Retry | None = None

    def as_result(self, request: Request) -> ResultMessage:
        result = exception_to_data(self.exception) if self.exception is not None else self.value
        return ResultMessage(
            task_id=request.id or "",
            status=self.status,
            result=result,
            traceback=self.traceback,
            date_done=now_iso(),
            task_name=request.task,
        )


def run_sync(task: Task, request: Request) -> Outcome:
    """Run a plain-function task in the calling thread and context.

    The caller's context carries the log binding (task id and name); a pool thread gets
    a copy of it.
    """
    token = current_request.set(request)
    try:
        try:
            value = task.run(*request.args, **request.kwargs)
        except Exception as exc:
            return finish(task, request, _failed_or_retried(task, exc))
        return finish(task, request, Outcome(SUCCESS, value))
    finally:
        current_request.reset(token)


async def run_async(
    task: Task, request: Request, interruption: Interruption | None = None
) -> Outcome:
    """Run a coroutine task on the running loop (in the caller's task context).

    With an ``interruption``, a cancel may reach the task as another exception (a soft
    time limit, see :func:`~.limits.interruptible`).
    """
    token = current_request.set(request)
    try:
        try:
            coroutine: Awaitable[Any] = task.run(*request.args, **request.kwargs)
            if interruption is not None:
                coroutine = interruptible(coroutine, interruption)  # type: ignore[arg-type]
            value = await coroutine
        except Exception as exc:
            return finish(task, request, _failed_or_retried(task, exc))
        return finish(task, request, Outcome(SUCCESS, value))
    finally:
        current_request.reset(token)


def failure(exc: BaseException) -> Outcome:
    return Outcome(FAILURE, exception=exc, traceback=tb.format_exc())


def _failed_or_retried(task: Task, exc: Exception) -> Outcome:
    """A raised Retry, or an ``autoretry_for`` exception, is a retry; the rest fail."""
    if isinstance(exc, Retry):
        return Outcome(RETRY, exception=exc.exc or exc, traceback=tb.format_exc(), retry=exc)
    if task.autoretry_for and isinstance(exc, task.autoretry_for):
        trace = tb.format_exc()
        try:
            task.retry(exc=exc)
        except Retry as retry:
            return Outcome(RETRY, exception=exc, traceback=trace, retry=retry)
        except Exception as final:
            return Outcome(FAILURE, exception=final, traceback=trace)
    return failure(exc)


def finish(task: Task, request: Request, outcome: Outcome) -> Outcome:
    """Run the task's hooks, each on its own: one that raises is logged, the rest still run."""
    task_id = request.id or ""
    args, kwargs = request.args, request.kwargs
    if outcome.retry is not None:
        log.warning("task will be retried", reason=str(outcome.retry))
        assert outcome.exception is not None
        _hook(task.on_retry, outcome.exception, task_id, args, kwargs, outcome.traceback or "")
        return outcome
    if outcome.exception is None:
        _hook(task.on_success, outcome.value, task_id, args, kwargs)
    else:
        log.error("task failed", error=f"{type(outcome.exception).__name__}: {outcome.exception}")
        _hook(task.on_failure, outcome.exception, task_id, args, kwargs, outcome.traceback or "")
    retval = outcome.exception if outcome.exception is not None else outcome.value
    _hook(task.after_return, outcome.status, retval, task_id, args, kwargs, outcome.traceback)
    return outcome


def _hook(hook: Callable[..., object], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        log.exception("a task hook raised; the task's outcome stands", hook=hook.__name__)
