"""A process pool child: runs plain tasks it is sent, one at a time, until told to stop.

The parent sends ``(task name, request)`` over a pipe; the child runs the task as the
threads pool would (:func:`~.execution.run_sync`, hooks included) and sends back
``("state", ResultMessage)`` for each ``update_state`` and then ``("done", outcome,
retiring)``. ``retiring`` says the child leaves after this task (it reached
``worker_max_tasks_per_child`` or ``worker_max_memory_per_child``), so the parent starts
another. No broker here: the parent publishes states and results.

SIGUSR1 is the soft time limit: :class:`~amqpworker.exceptions.SoftTimeLimitExceeded`
is raised where the task is, even in ``time.sleep``. The hard limit is SIGKILL.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pickle
import resource
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from ..app import App
from ..app.task import Request
from ..exceptions import ImproperlyConfigured, SoftTimeLimitExceeded
from ..log import bound, configure_logging, get_logger
from ..wire.results import FAILURE
from .execution import Outcome, failure, run_sync

log = get_logger(__name__)

SOFT_LIMIT_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class ChildSpec:
    """What a child needs to start: where the app is, its settings, and when to leave."""

    app: str
    settings: dict[str, Any]
    max_tasks: int | None
    max_memory_kib: int | None


def locate(spec: str) -> App:
    """The app at ``module:attribute``."""
    module_name, _, attribute = spec.partition(":")
    found = getattr(importlib.import_module(module_name), attribute, None)
    if not isinstance(found, App):
        raise ImproperlyConfigured(f"{spec!r} is not an amqpworker App")
    return found


class _Running:
    """Whether a task runs now: a soft limit signal outside a task is ignored."""

    task = False


def _soft_limit(signum: int, frame: FrameType | None) -> None:
    if _Running.task:
        _Running.task = False
        raise SoftTimeLimitExceeded("the task ran past its soft time limit")


def main(spec: ChildSpec, connection: Connection) -> None:
    """The child's life; returns (and the process ends) when it retires or is told to."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(SOFT_LIMIT_SIGNAL, _soft_limit)
    app = locate(spec.app)
    app.conf.update(spec.settings)
    configure_logging(app.conf.log_level, app.conf.log_format)
    app.import_includes()
    done = 0
    while True:
        try:
            item = connection.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if item is None:
            return
        _Running.task = True
        name, request = item
        outcome = _run(app, name, request, connection)
        done += 1
        retiring = _retiring(spec, done)
        _send(connection, outcome, retiring)
        if retiring:
            log.info("child retires", tasks=done, pid=os.getpid())
            return


def _run(app: App, name: str, request: Request, connection: Connection) -> Outcome:
    outcome: Outcome | None = None
    try:
        task = app.tasks.get(name) or app.builtin_tasks[name]
        request.publish_state = lambda state: connection.send(("state", state))
        with bound(task_id=request.id, task_name=name):
            outcome = run_sync(task, request)
        _Running.task = False
    except SoftTimeLimitExceeded as exc:  # the signal came just after the task ended
        _Running.task = False
        return outcome or failure(exc)
    except Exception as exc:
        _Running.task = False
        return failure(exc)
    return outcome


def _retiring(spec: ChildSpec, done: int) -> bool:
    if spec.max_tasks is not None and done >= spec.max_tasks:
        return True
    if spec.max_memory_kib is not None:
        # Linux gives the peak resident size in KiB, the unit of the setting.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > spec.max_memory_kib
    return False


def _send(connection: Connection, outcome: Outcome, retiring: bool) -> None:
    """Send the outcome; one that does not pickle becomes a FAILURE saying so."""
    try:
        data = pickle.dumps(("done", outcome, retiring))
    except Exception as exc:
        what = "exception" if outcome.exception is not None else "result"
        replacement = TypeError(
            f"the task's {what} cannot be sent from the child process: {type(exc).__name__}: {exc}"
        )
        stripped = dataclasses.replace(outcome, status=FAILURE, value=None, retry=None)
        data = pickle.dumps(
            ("done", dataclasses.replace(stripped, exception=replacement), retiring)
        )
    connection.send_bytes(data)
