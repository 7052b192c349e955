"""The live view: a :class:`MonitorState` drawn with rich, redrawn a few times a second."""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .state import STATES, MonitorState

RUNNING_SHOWN = 10
FAILURES_SHOWN = 5


def render(state: MonitorState, source: str, now: float | None = None) -> RenderableType:
    now = time.time() if now is None else now
    header = Text.assemble(
        ("amqpworker events", "bold"),
        f"  {source}  events {state.events}",
        (f"  malformed {state.malformed}" if state.malformed else "", "yellow"),
        "  (Ctrl-C to quit)",
    )
    return Group(
        header,
        _workers(state, now),
        _tasks(state, now),
        _running(state, now),
        _failures(state, now),
    )


def _workers(state: MonitorState, now: float) -> Table:
    table = Table(title="Workers", title_justify="left", expand=True)
    for column in ("worker", "status", "heartbeat", "active", "processed", "load"):
        table.add_column(column, no_wrap=column != "worker")
    if not state.workers:
        table.add_row("(none seen yet)", "", "", "", "", "")
    styles = {"online": "green", "silent": "yellow", "offline": "red"}
    for name in sorted(state.workers):
        worker = state.workers[name]
        status = worker.status(now)
        table.add_row(
            name,
            Text(status, style=styles[status]),
            f"{now - worker.last_seen:.1f}s ago",
            str(worker.active),
            str(worker.processed),
            " ".join(f"{load:.2f}" for load in worker.loadavg),
        )
    return table


def _tasks(state: MonitorState, now: float) -> Table:
    table = Table(title="Tasks", title_justify="left")
    table.add_column("state")
    table.add_column("total", justify="right")
    table.add_column("per second", justify="right")
    for name in STATES:
        table.add_row(name, str(state.totals[name]), f"{state.rate(name, now):.1f}")
    return table


def _running(state: MonitorState, now: float) -> Table:
    table = Table(title=f"Running ({len(state.running)})", title_justify="left", expand=True)
    for column in ("task", "id", "worker", "for"):
        table.add_column(column)
    runs = sorted(state.running.values(), key=lambda run: run.since)[:RUNNING_SHOWN]
    for run in runs:
        table.add_row(run.name, run.uuid, run.hostname, f"{now - run.since:.1f}s")
    return table


def _failures(state: MonitorState, now: float) -> Table:
    table = Table(title="Last failures", title_justify="left", expand=True)
    for column in ("when", "task", "id", "worker", "exception"):
        table.add_column(column)
    for failure in list(state.failures)[:FAILURES_SHOWN]:
        table.add_row(
            f"{now - failure.at:.0f}s ago",
            failure.name,
            failure.uuid,
            failure.hostname,
            Text(failure.exception, style="red"),
        )
    return table
