"""The steps a delivery passes through, one module each; :func:`default_steps` orders them.

Outermost first. Steps up to ``RateLimits`` decide whether and when the message runs
at all; ``Slots`` admits it to run; the steps after it wrap the run itself, and those that
act after it (``Retries``, ``Report``, ``ContinueWorkflow``) do so innermost first, so
the order after a run is: retry, result, workflow, then the ending.
"""

from __future__ import annotations

import datetime as dt

from ...app import App
from ...app.publisher import Publisher
from ...broker.events import EventSender
from ...topology import QueueSpec
from ..pipeline import Step
from ..pool import TaskThreads
from ..processes import ProcessPool
from ..revocations import Revocations
from ..settle import Settler
from ..stats import WorkerStats
from ..workflow import Workflow
from .acks import Acknowledge
from .continuation import ContinueWorkflow
from .copies import Copies, Ledger
from .decode import Decode
from .eta import Eta
from .events import AnnounceEnding, AnnounceReceived, AnnounceRun
from .execute import Execute
from .joins import Joins
from .lookup import Lookup
from .measure import Measure, RunObserver
from .rate_limits import RateLimits
from .redeliveries import Redeliveries
from .results import Report, Reporter
from .retries import Retries
from .revoked import Revoked
from .slots import Slots

__all__ = [
    "Eta",
    "Execute",
    "Ledger",
    "RateLimits",
    "Redeliveries",
    "RunObserver",
    "Slots",
    "default_steps",
]


def default_steps(
    *,
    app: App,
    publisher: Publisher,
    settle: Settler,
    stats: WorkerStats,
    specs: dict[str, QueueSpec],
    threads: TaskThreads | None,
    concurrency: int,
    hostname: str,
    timezone: dt.tzinfo,
    accepted: frozenset[str],
    revocations: Revocations,
    metrics: RunObserver | None = None,
    events: EventSender | None = None,
    processes: ProcessPool | None = None,
) -> list[Step]:
    """The steps in order.

    Only when asked for: ``metrics`` adds the step that times each run, ``events`` the
    three that send task events.
    """
    reporter = Reporter(publisher)
    ledger = Ledger()
    workflow = Workflow(app, publisher)
    redeliveries = Redeliveries(settle, specs)
    received: list[Step] = [AnnounceReceived(events)] if events else []
    ending: list[Step] = [AnnounceEnding(events)] if events else []
    run: list[Step] = [AnnounceRun(events)] if events else []
    return [
        Acknowledge(settle),
        redeliveries,
        Decode(app.serializers, accepted, timezone, reporter),
        *received,
        Copies(ledger, reporter),
        Eta(publisher, reporter),
        Joins(workflow),
        Lookup(app, reporter),
        *rate_limits(app, publisher),
        Slots(concurrency, ledger, reporter, redeliveries, hostname, settle),
        *ending,
        Revoked(revocations, reporter, stats),
        ContinueWorkflow(workflow),
        Report(reporter, ledger),
        Retries(publisher, reporter, ledger, timezone),
        *([Measure(metrics)] if metrics is not None else []),
        *run,
        Execute(threads, settle, stats, app.conf, processes),
    ]


def rate_limits(app: App, publisher: Publisher) -> list[Step]:
    """The rate limit step, where a task has a limit or remote control may give it one."""
    conf = app.conf
    if conf.worker_disable_rate_limits:
        return []
    step = RateLimits(app, publisher)
    return [step] if step.buckets or conf.worker_enable_remote_control else []
