"""What a monitor knows from the events it read: workers, counts, running tasks, failures.

Pure bookkeeping, no I/O, so the live view only draws it. Times a person reads (a
heartbeat's age, a task's time running) are counted from when the monitor received
the event, so clocks that differ between hosts do not matter.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..wire.events import HEARTBEAT_FREQ

#: Task states counted, in the order a task goes through them.
STATES = ("sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected")
#: Seconds over which tasks per second are counted.
RATE_WINDOW = 5.0
#: Heartbeats a worker may miss before it is shown as silent.
MISSED_HEARTBEATS = 3
#: Task names remembered by id (task-started and later events do not carry it).
NAME_MEMORY = 10_000
FAILURES_KEPT = 10
ENDED = ("task-succeeded", "task-failed", "task-retried", "task-revoked", "task-rejected")


@dataclass
class WorkerView:
    hostname: str
    last_seen: float
    online: bool = True
    freq: float = HEARTBEAT_FREQ
    active: int = 0
    processed: int = 0
    loadavg: list[float] = field(default_factory=list)
    sw: str = ""

    def status(self, now: float) -> str:
        if not self.online:
            return "offline"
        if now - self.last_seen > self.freq * MISSED_HEARTBEATS:
            return "silent"
        return "online"


@dataclass
class Running:
    uuid: str
    name: str
    hostname: str
    since: float


@dataclass
class Failure:
    at: float
    uuid: str
    name: str
    hostname: str
    exception: str


class MonitorState:
    """Fed one decoded event at a time (:meth:`feed`)."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerView] = {}
        self.totals: dict[str, int] = dict.fromkeys(STATES, 0)
        self.running: dict[str, Running] = {}
        self.failures: deque[Failure] = deque(maxlen=FAILURES_KEPT)
        self.events = 0
        self.malformed = 0
        self._recent: dict[str, deque[float]] = {state: deque() for state in STATES}
        self._names: OrderedDict[str, str] = OrderedDict()

    def feed(self, event: Mapping[str, Any], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.events += 1
        kind = str(event.get("type", ""))
        hostname = str(event.get("hostname", ""))
        if kind.startswith("worker-"):
            self._worker(kind, hostname, event, now)
            return
        state = kind.removeprefix("task-")
        if not kind.startswith("task-") or state not in self.totals:
            return
        self.totals[state] += 1
        self._recent[state].append(now)
        self._task(kind, hostname, event, now)

    def rate(self, state: str, now: float | None = None) -> float:
        """Tasks per second that reached ``state`` over the last :data:`RATE_WINDOW`."""
        now = time.time() if now is None else now
        recent = self._recent[state]
        while recent and recent[0] < now - RATE_WINDOW:
            recent.popleft()
        return len(recent) / RATE_WINDOW

    def name_of(self, task_id: str) -> str:
        return self._names.get(task_id, "?")

    def _worker(self, kind: str, hostname: str, event: Mapping[str, Any], now: float) -> None:
        worker = self.workers.get(hostname)
        if worker is None:
            worker = self.workers[hostname] = WorkerView(hostname, now)
        worker.last_seen = now
        worker.online = kind != "worker-offline"
        freq = event.get("freq")
        if isinstance(freq, (int, float)) and freq > 0:
            worker.freq = float(freq)
        for name in ("active", "processed"):
            value = event.get(name)
            if isinstance(value, int):
                setattr(worker, name, value)
        loadavg = event.get("loadavg")
        if isinstance(loadavg, list):
            worker.loadavg = [load for load in loadavg if isinstance(load, (int, float))]
        if event.get("sw_ident"):
            worker.sw = f"{event.get('sw_ident')} {event.get('sw_ver') or ''}".strip()
        if not worker.online:
            for task_id in [i for i, run in self.running.items() if run.hostname == hostname]:
                del self.running[task_id]

    def _task(self, kind: str, hostname: str, event: Mapping[str, Any], now: float) -> None:
        task_id = str(event["uuid"])
        name = event.get("name")
        if isinstance(name, str):
            self._names[task_id] = name
            if len(self._names) > NAME_MEMORY:
                self._names.popitem(last=False)
        if kind == "task-started":
            self.running[task_id] = Running(task_id, self.name_of(task_id), hostname, now)
        elif kind in ENDED:
            self.running.pop(task_id, None)
        if kind == "task-failed":
            exception = event.get("exception")
            self.failures.appendleft(
                Failure(now, task_id, self.name_of(task_id), hostname, str(exception or "?"))
            )
