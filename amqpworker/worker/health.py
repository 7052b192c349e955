"""Whether a worker is fit: judged on its event loop, read from any thread.

Once a second the worker's loop records what it sees: connected to the broker (both
connections), consuming each of its queues, not stopping. The HTTP thread
(``worker/monitoring.py``) reads that record, and its age: a record older than
``loop_timeout`` means the loop has stopped turning (a task blocking it, a bug), which
no answer computed on the loop itself could report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Seconds between two looks at the worker.
INTERVAL = 1.0


@dataclass(frozen=True)
class Look:
    """What the loop saw at one tick."""

    #: ``time.monotonic()`` when it looked.
    at: float
    #: Why the worker cannot take work now, or None.
    problem: str | None = "starting: not consuming yet"
    #: Each consumed queue, and whether the broker delivers to it.
    consuming: dict[str, bool] = field(default_factory=dict)
    #: Each broker connection ("consumer", "publisher"), and whether it is up.
    connected: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    body: dict[str, Any]


class Health:
    """Looks at the worker once a second on its loop; answers probes from any thread."""

    def __init__(self, name: str, look: Callable[[float], Look], loop_timeout: float) -> None:
        self.name = name
        self.loop_timeout = loop_timeout
        self._look_now = look
        self._last = Look(time.monotonic())
        self._late = 0.0
        self._handle: asyncio.Handle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = loop.call_soon(self._tick, loop, None)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float | None) -> None:
        now = time.monotonic()
        self._late = 0.0 if due is None else max(now - due, 0.0)
        self._last = self._look_now(now)
        self._handle = loop.call_later(INTERVAL, self._tick, loop, now + INTERVAL)

    def refresh(self) -> None:
        """Look again now, on the loop (the worker started or began to stop)."""
        self._last = self._look_now(time.monotonic())

    @property
    def last(self) -> Look:
        return self._last

    def loop_lag(self) -> float:
        """Seconds the loop is behind: how late the last tick ran, or the next one is."""
        overdue = time.monotonic() - self._last.at - INTERVAL
        return max(self._late, overdue, 0.0)

    def liveness(self) -> Verdict:
        """Fails only when the loop has stopped turning: the case a restart mends."""
        stalled = self._stalled()
        body: dict[str, Any] = {"status": "ok" if stalled is None else "stalled"}
        body["worker"] = self.name
        if stalled is not None:
            body["reason"] = stalled
        body["loop_lag_seconds"] = round(self.loop_lag(), 3)
        return Verdict(stalled is None, body)

    def readiness(self) -> Verdict:
        """Connected and consuming every queue, not stopping, and the loop turning."""
        look = self._last
        problem = self._stalled() or look.problem
        body: dict[str, Any] = {"status": "ok" if problem is None else "unavailable"}
        body["worker"] = self.name
        if problem is not None:
            body["reason"] = problem
        body.update(
            connected=dict(look.connected),
            consuming=dict(look.consuming),
            loop_lag_seconds=round(self.loop_lag(), 3),
        )
        return Verdict(problem is None, body)

    def _stalled(self) -> str | None:
        silent = time.monotonic() - self._last.at
        if silent <= self.loop_timeout:
            return None
        return (
            f"the event loop has not turned for {silent:.1f}s (limit {self.loop_timeout:g}s, "
            "worker_health_loop_timeout); a task may be blocking it"
        )
