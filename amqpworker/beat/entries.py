"""Beat's entries: ``beat_schedule`` (and ``add_periodic_task``) checked all at once.

Every entry is checked before beat starts, and every problem is reported together, each
naming its entry: beat never runs with part of its schedule.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..app import App
from ..app.routing import Destination
from ..exceptions import AmqpWorkerError, ImproperlyConfigured
from ..schedules import Schedule, as_schedule, zone_for
from ..wire import Serializer, TaskMessage
from ..wire.beat import DUE_HEADER, ENTRY_HEADER, tick_id

ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative"})
#: Send options an entry may give (as ``apply_async`` takes them).
ENTRY_OPTIONS = frozenset(
    {"queue", "exchange", "routing_key", "priority", "expires", "headers", "serializer"}
)
#: Options beat sets itself, or that make no sense for a periodic run.
REFUSED_OPTIONS = {
    "task_id": "beat sets a run's id (ENTRY@DUE-TIME)",
    "countdown": "a periodic run goes out when it is due",
    "eta": "a periodic run goes out when it is due",
    "ignore_result": "beat's runs never send results (nobody reads them)",
}


@dataclass(frozen=True)
class Entry:
    """One periodic task: what to send, and when."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def message(self, app: App, due: dt.datetime) -> tuple[TaskMessage, Destination, Serializer]:
        """This entry's task for one due time: (message, destination, serializer)."""
        options = dict(self.options)
        options["headers"] = {
            **(options.get("headers") or {}),
            ENTRY_HEADER: self.name,
            DUE_HEADER: due.isoformat(),
        }
        options["task_id"] = tick_id(self.name, due)
        options["ignore_result"] = True
        return app.prepare(self.task, self.args, self.kwargs, app.get_task(self.task), options)


def schedule_zone(app: App) -> dt.tzinfo:
    """The zone crontabs are read in: ``timezone``, or as ``enable_utc`` says."""
    conf = app.conf
    return zone_for(conf.timezone, conf.enable_utc, "timezone" in conf.model_fields_set)


def load_entries(app: App) -> list[Entry]:
    """Every entry of ``beat_schedule``, checked; one error listing every problem."""
    entries, problems = [], []
    for name, spec in app.conf.beat_schedule.items():
        try:
            entries.append(_entry(app, name, spec))
        except (AmqpWorkerError, TypeError, ValueError) as exc:
            problems.append(f"beat_schedule entry {name!r}: {exc}")
    if problems:
        raise ImproperlyConfigured("; ".join(problems))
    return entries


def _entry(app: App, name: Any, spec: Any) -> Entry:
    if not isinstance(name, str) or not name or len(name) > 150:
        raise ValueError("an entry's name is a string of 1 to 150 characters")
    if not isinstance(spec, Mapping):
        raise TypeError(f"an entry is a dict (task, schedule, ...), not {type(spec).__name__}")
    unknown = sorted(set(spec) - ENTRY_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; an entry has {sorted(ENTRY_KEYS)}")
    for needed in ("task", "schedule"):
        if needed not in spec:
            raise ValueError(f"{needed!r} is missing")
    task = spec["task"]
    if not isinstance(task, str) or app.get_task(task) is None:
        close = difflib.get_close_matches(str(task), list(app.tasks), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown task {task!r} (not registered in {app!r}){hint}")
    relative = spec.get("relative", False)
    if not isinstance(relative, bool):
        raise TypeError(f"relative is True or False, not {relative!r}")
    schedule = as_schedule(spec["schedule"], relative)
    args = spec.get("args") or ()
    if not isinstance(args, Sequence) or isinstance(args, (str, bytes)):
        raise TypeError(f"args is a list or tuple, not {args!r}")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"kwargs is a dict, not {kwargs!r}")
    options = spec.get("options") or {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options is a dict, not {options!r}")
    for option in options:
        if option in REFUSED_OPTIONS:
            raise ValueError(
                f"option {option!r} is not for beat entries: {REFUSED_OPTIONS[option]}"
            )
        if option not in ENTRY_OPTIONS:
            raise ValueError(
                f"unknown option {option!r}; beat entries take {sorted(ENTRY_OPTIONS)}"
            )
    entry = Entry(name, task, schedule, tuple(args), dict(kwargs), dict(options))
    message, _, serializer = entry.message(app, dt.datetime.now(dt.timezone.utc))
    message.encode(serializer)  # arguments the serializer cannot carry fail now
    return entry
