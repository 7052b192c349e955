"""A worker's own events: worker-online, a heartbeat every two seconds, worker-offline.

A monitor learns from them which workers run, how loaded each is (tasks running now,
tasks run so far, the host's load average), and when one is gone: gracefully (offline)
or not (its heartbeats stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..broker.events import EventSender
from ..wire.events import HEARTBEAT_FREQ


class Presence:
    """Announces one worker while it runs."""

    def __init__(
        self,
        events: EventSender,
        active: Callable[[], int],
        processed: Callable[[], int],
        freq: float = HEARTBEAT_FREQ,
    ) -> None:
        self.events = events
        self.active = active
        self.processed = processed
        self.freq = freq
        self._beating: asyncio.Task[None] | None = None

    def online(self) -> None:
        self._send("worker-online")
        self._beating = asyncio.get_running_loop().create_task(self._beat())

    def offline(self) -> None:
        """A graceful stop: no more heartbeats, and worker-offline."""
        self.stop()
        self._send("worker-offline")

    def stop(self) -> None:
        """No more heartbeats (a worker that fails says nothing more)."""
        if self._beating is not None:
            self._beating.cancel()
            self._beating = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.freq)
            self._send("worker-heartbeat")

    def _send(self, event_type: str) -> None:
        self.events.send(event_type, self._fields())

    def _fields(self) -> dict[str, Any]:
        loadavg: list[float] = []
        with contextlib.suppress(OSError):
            loadavg = [round(load, 2) for load in os.getloadavg()]
        return {
            "freq": self.freq,
            "active": self.active(),
            "processed": self.processed(),
            "loadavg": loadavg,
            "sw_ident": "amqpworker",
            "sw_ver": __version__,
            "sw_sys": platform.system(),
        }
