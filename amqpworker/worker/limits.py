"""Time limits: which apply to a run, and the timers that enforce them. No broker here.

A message's own limits (``apply_async(time_limit=...)``, or the task's options as the
caller knew them) come first, then the task's options as this worker knows them (which
``app.control.time_limit`` changes), then the ``task_time_limit`` and
``task_soft_time_limit`` settings. A run without any limit costs no timer.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import TYPE_CHECKING, Any

from ..exceptions import SoftTimeLimitExceeded

if TYPE_CHECKING:
    from ..app.task import Task
    from ..settings import Settings
    from ..wire import TaskMessage

Limits = tuple[float | None, float | None]


def limits_for(message: TaskMessage, task: Task, conf: Settings) -> Limits | None:
    """``(soft, hard)`` seconds for this run, or None when it has neither."""
    soft = message.soft_time_limit or task.soft_time_limit or conf.task_soft_time_limit
    hard = message.time_limit or task.time_limit or conf.task_time_limit
    if soft is None and hard is None:
        return None
    return soft, hard


def seconds(value: Any, name: str) -> float | None:
    """A limit given by remote control: positive seconds, or None/0 for none."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be seconds (a number), not {value!r}") from None
    if number < 0 or number != number or number == float("inf"):
        raise ValueError(f"{name} must be positive seconds, or 0 for none, not {value!r}")
    return number or None


class Clock:
    """The timers of one run: ``on_soft`` at the soft limit, ``on_hard`` at the hard one."""

    def __init__(
        self,
        limits: Limits,
        on_soft: Callable[[], None],
        on_hard: Callable[[], None],
    ) -> None:
        soft, hard = limits
        loop = asyncio.get_running_loop()
        self.hard = hard
        #: Set when the hard limit was reached: the run's end is a TimeLimitExceeded.
        self.expired = False
        self._on_hard = on_hard
        self._timers = [
            loop.call_later(limit, action)
            for limit, action in ((soft, on_soft), (hard, self._expire))
            if limit is not None
        ]

    def _expire(self) -> None:
        self.expired = True
        self._on_hard()

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()


class Interruption:
    """What a cancellation of a coroutine task means: ``None`` is a plain cancel."""

    __slots__ = ("replacement",)

    def __init__(self) -> None:
        self.replacement: BaseException | None = None


@types.coroutine
def interruptible(
    coroutine: Coroutine[Any, Any, Any], interruption: Interruption
) -> Generator[Any, Any, Any]:
    """Await ``coroutine``, turning a cancel into ``interruption.replacement`` if set.

    A soft time limit cancels the task; the task's code then sees
    :class:`~amqpworker.exceptions.SoftTimeLimitExceeded` where it waits, instead of
    ``CancelledError``, and may catch it and go on. Costs a little per await, so only
    runs with a soft limit go through here.
    """
    to_send: Any = None
    to_throw: BaseException | None = None
    while True:
        try:
            yielded = coroutine.send(to_send) if to_throw is None else coroutine.throw(to_throw)
        except StopIteration as stop:
            return stop.value
        to_send = to_throw = None
        try:
            to_send = yield yielded
        except GeneratorExit:
            coroutine.close()
            raise
        except asyncio.CancelledError as cancel:
            to_throw, interruption.replacement = interruption.replacement, None
            if to_throw is None:
                to_throw = cancel
            else:
                uncancel()
        except BaseException as exc:
            to_throw = exc


def soft_limit_error(task_name: str, soft: float | None) -> SoftTimeLimitExceeded:
    return SoftTimeLimitExceeded(f"{task_name} ran past its soft time limit ({soft}s)")


def uncancel() -> None:
    """Let the current task go on normally after a cancel that was handled (3.11+)."""
    current = asyncio.current_task()
    if current is not None and hasattr(current, "uncancel"):
        current.uncancel()


def start_up_warnings(tasks: Iterable[Task], conf: Settings, pool: str) -> list[str]:
    """What a pool cannot do about the limits configured, said once at start-up."""
    tasks = list(tasks)
    hard = conf.task_time_limit is not None or any(task.time_limit for task in tasks)
    limited = (
        hard or conf.task_soft_time_limit is not None or any(task.soft_time_limit for task in tasks)
    )
    warnings = []
    if pool == "threads" and hard:
        warnings.append(
            "hard time limits with the threads pool cannot stop a thread stuck in a C call:"
            " the task is reported failed and its thread abandoned (it runs on, replaced in"
            " the pool); use --pool process to kill it"
        )
    if pool == "asyncio" and limited and any(not task.is_coroutine for task in tasks):
        warnings.append(
            "time limits do not apply to plain (sync) tasks with --pool asyncio: they run on"
            " the event loop, which nothing can interrupt; only async tasks are limited"
        )
    return warnings
