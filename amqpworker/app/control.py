"""Remote control from the caller's side: ``app.control.inspect().ping()`` and friends.

Replies come back as Celery shapes them: ``inspect()`` calls return ``{worker_name:
value}`` (``None`` when no worker answered in time), ``broadcast(..., reply=True)`` a
list of ``{worker_name: value}``. A command a worker could not carry out answers
``{"error": "..."}``. Every call has a sync form and an ``a``-prefixed async one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .. import rates
from ..broker import control as broker_control
from ..broker import revocations as broker_revocations
from ..wire import Envelope
from ..wire.control import ControlRequest, decode_reply
from ..wire.revocations import Revocation
from .task import check_time_limit

if TYPE_CHECKING:
    from .app import App

#: What ``inspect()`` asks; each is a method of :class:`Inspect`.
INSPECT_COMMANDS = (
    "ping",
    "registered",
    "active",
    "reserved",
    "scheduled",
    "stats",
    "active_queues",
    "revoked",
    "conf",
    "report",
)


class Control:
    """``app.control``: commands to running workers over the broker."""

    def __init__(self, app: App) -> None:
        self.app = app

    def inspect(self, destination: Sequence[str] | None = None, timeout: float = 1.0) -> Inspect:
        return Inspect(self, destination, timeout)

    def broadcast(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]] | None:
        """Send ``command`` to every worker (or those named); their replies if ``reply``."""
        return self.app.portal.call(
            self.abroadcast(command, arguments, destination, reply, timeout, limit)
        )

    async def abroadcast(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]] | None:
        if isinstance(destination, str):
            destination = [destination]
        if limit is None and destination is not None:
            limit = len(destination)
        request = ControlRequest(command, dict(arguments or {}), destination)
        client = await self.app.client()

        def make(reply_to: str | None) -> Envelope:
            return replace(request, reply_to=reply_to).encode(timeout)

        envelopes = await broker_control.broadcast(
            client.broker, make, reply=reply, timeout=timeout, limit=limit
        )
        if not reply:
            return None
        replies = [decode_reply(e) for e in envelopes if e.correlation_id == request.id]
        return [reply for reply in replies if reply]

    def revoke(
        self,
        task_id: str | Sequence[str],
        destination: Sequence[str] | None = None,
        terminate: bool = False,
        signal: str | int | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]] | None:
        """Tasks with these ids never start, on any worker, for ``worker_revoke_expires``.

        The revoke is stored in the broker first (workers that start later read it),
        then sent to running workers for an immediate answer. ``terminate`` also stops
        a task that runs now. A bad id or signal raises ``ValueError``.
        """
        return self.app.portal.call(
            self.arevoke(task_id, destination, terminate, signal, reply, timeout)
        )

    async def arevoke(
        self,
        task_id: str | Sequence[str],
        destination: Sequence[str] | None = None,
        terminate: bool = False,
        signal: str | int | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]] | None:
        holds_for = self.app.conf.worker_revoke_expires
        revocation = Revocation.of(task_id, terminate=terminate, signal=signal, holds_for=holds_for)
        client = await self.app.client()
        await broker_revocations.publish(client.broker, revocation, holds_for)
        arguments = {
            "task_id": list(revocation.ids),
            "terminate": revocation.terminate,
            "signal": revocation.signal,
        }
        return await self.abroadcast("revoke", arguments, destination, reply, timeout)

    def ping(
        self, destination: Sequence[str] | None = None, timeout: float = 1.0
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("ping", destination=destination, reply=True, timeout=timeout)

    def shutdown(
        self, destination: Sequence[str] | None = None, reply: bool = False, timeout: float = 1.0
    ) -> list[dict[str, Any]] | None:
        """Ask workers to stop gracefully, as SIGTERM does."""
        return self.broadcast("shutdown", None, destination, reply, timeout)

    def pool_grow(
        self,
        n: int = 1,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]] | None:
        """Workers run ``n`` more tasks at once (threads and asyncio pools)."""
        return self.broadcast("pool_grow", {"n": n}, destination, reply, timeout)

    def pool_shrink(
        self,
        n: int = 1,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]] | None:
        """Workers run ``n`` fewer tasks at once, as running ones give their slots back."""
        return self.broadcast("pool_shrink", {"n": n}, destination, reply, timeout)

    def add_consumer(
        self,
        queue: str,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]] | None:
        """Workers start consuming ``queue`` (declared as the routing file says)."""
        return self.broadcast("add_consumer", {"queue": queue}, destination, reply, timeout)

    def cancel_consumer(
        self,
        queue: str,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]] | None:
        """Workers stop consuming ``queue``; what they hold from it still runs."""
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, reply, timeout)

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]] | None:
        """Change a task's rate limit on running workers (``"200/m"``; ``None``/0: none).

        Per worker, as in Celery: each worker runs at most that many of the task. A rate
        that is not one is an error raised here, before anything is sent.
        """
        rates.check(rate_limit)
        arguments = {"task_name": task_name, "rate_limit": rate_limit}
        return self.broadcast("rate_limit", arguments, destination, reply, timeout)

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]] | None:
        """Change a task's soft and hard time limits (seconds; None: none) on running workers.

        They apply to runs that start afterwards, where the message carries no limit of
        its own (as in Celery).
        """
        for value, name in ((soft, "soft"), (hard, "hard")):
            check_time_limit(value, name)
        arguments = {"task_name": task_name, "soft": soft, "hard": hard}
        return self.broadcast("time_limit", arguments, destination, reply, timeout)


class Inspect:
    """``app.control.inspect(destination, timeout)``: questions to running workers."""

    def __init__(self, control: Control, destination: Sequence[str] | None, timeout: float) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout

    def _ask(self, command: str) -> dict[str, Any] | None:
        return self.control.app.portal.call(self._aask(command))

    async def _aask(self, command: str) -> dict[str, Any] | None:
        replies = await self.control.abroadcast(
            command, None, self.destination, reply=True, timeout=self.timeout
        )
        merged = {name: value for reply in replies or [] for name, value in reply.items()}
        return merged or None

    def ping(self) -> dict[str, Any] | None:
        return self._ask("ping")

    def registered(self) -> dict[str, Any] | None:
        return self._ask("registered")

    def active(self) -> dict[str, Any] | None:
        return self._ask("active")

    def reserved(self) -> dict[str, Any] | None:
        return self._ask("reserved")

    def scheduled(self) -> dict[str, Any] | None:
        return self._ask("scheduled")

    def stats(self) -> dict[str, Any] | None:
        return self._ask("stats")

    def active_queues(self) -> dict[str, Any] | None:
        return self._ask("active_queues")

    def revoked(self) -> dict[str, Any] | None:
        return self._ask("revoked")

    def conf(self) -> dict[str, Any] | None:
        return self._ask("conf")

    def report(self) -> dict[str, Any] | None:
        return self._ask("report")

    async def aask(self, command: str) -> dict[str, Any] | None:
        """The async form of every question: ``await inspect.aask("ping")``."""
        if command not in INSPECT_COMMANDS:
            raise ValueError(f"unknown inspect command {command!r}; one of {INSPECT_COMMANDS}")
        return await self._aask(command)
