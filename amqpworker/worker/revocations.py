"""The revoked task ids this worker knows, read from the broker's revocations stream.

A revoke holds until its ``expires``; the newest :data:`MEMORY` ids are kept (Celery
keeps 50,000 too). A revoke with ``terminate`` also stops the task if it runs here now
(``on_terminate``, set by the worker to the execute step's).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import OrderedDict
from collections.abc import Callable

from ..broker import Broker, Consumer
from ..broker import revocations as stream
from ..log import get_logger
from ..wire.revocations import Revocation

log = get_logger(__name__)

MEMORY = 50_000
#: How long a starting worker waits to read the revocations before it consumes tasks.
CATCH_UP_TIMEOUT = 10.0


class Revocations:
    def __init__(self, memory: int = MEMORY) -> None:
        self._memory = memory
        self._expires: OrderedDict[str, float] = OrderedDict()
        #: Stops a running task: (task id, signal name for a child process) -> stopped.
        self.on_terminate: Callable[[str, str], bool] | None = None
        self._consumer: Consumer | None = None

    def holds(self, task_id: str) -> bool:
        expires = self._expires.get(task_id)
        return expires is not None and expires > time.time()

    def ids(self) -> list[str]:
        now = time.time()
        return [task_id for task_id, expires in self._expires.items() if expires > now]

    def add(self, revocation: Revocation) -> list[str]:
        """Hold ``revocation``; returns the ids it terminated here."""
        if revocation.expires <= time.time():
            return []
        terminated = []
        for task_id in revocation.ids:
            self._expires[task_id] = max(revocation.expires, self._expires.get(task_id, 0.0))
            self._expires.move_to_end(task_id)
            stop = self.on_terminate if revocation.terminate else None
            if stop is not None and stop(task_id, revocation.signal):
                terminated.append(task_id)
        while len(self._expires) > self._memory:
            self._expires.popitem(last=False)
        return terminated

    def _on_revocation(self, revocation: Revocation) -> None:
        terminated = self.add(revocation)
        if terminated:
            log.warning("terminated revoked tasks", task_ids=terminated)

    async def follow(self, broker: Broker, holds_for: float) -> None:
        """Read what was revoked in the last ``holds_for`` seconds, then keep reading."""
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=holds_for)
        try:
            await stream.declare(broker, holds_for)
            self._consumer = await stream.follow(
                broker, since, self._on_revocation, CATCH_UP_TIMEOUT
            )
        except Exception as exc:  # a broker without streams (before RabbitMQ 3.9)
            log.warning(
                "cannot read the revocations stream; only revokes sent while this worker "
                "runs will hold here",
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        log.info("revocations read", revoked=len(self._expires))
