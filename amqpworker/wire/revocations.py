"""Revocations: which task ids must never start, as kept in the broker.

A revocation is one message in the stream queue :data:`REVOCATIONS_QUEUE` with a JSON
body ``{"ids": [...], "terminate": bool, "signal": "SIGTERM", "expires": <unix time>}``.
Every worker reads the stream from a point in the past when it starts, so a revoke
holds for workers that start later, or restart, until ``expires``.
"""

from __future__ import annotations

import json
import signal as signals
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..exceptions import MalformedMessage
from .message import Envelope
from .serializers import json_object

REVOCATIONS_QUEUE = "amqpworker.revocations"
CONTENT_TYPE = "application/json"
#: A message a worker publishes to the stream to know when it has read up to now.
MARKER_TYPE = "amqpworker.revocations.marker"
#: Longest task id accepted (AMQP short strings carry at most 255 bytes).
MAX_ID_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Revocation:
    ids: tuple[str, ...]
    #: Stop the task if it is running (not only keep it from starting).
    terminate: bool = False
    signal: str = "SIGTERM"
    #: Unix time after which the revoke no longer holds.
    expires: float = 0.0

    @classmethod
    def of(
        cls,
        ids: str | Iterable[str],
        *,
        terminate: bool = False,
        signal: str | int | None = None,
        holds_for: float,
    ) -> Revocation:
        """Check what a caller asked for; bad ids or signals raise ``ValueError`` saying which."""
        wanted = (ids,) if isinstance(ids, str) else tuple(ids)
        if not wanted:
            raise ValueError("revoke needs at least one task id")
        for task_id in wanted:
            check_task_id(task_id)
        return cls(wanted, bool(terminate), signal_name(signal), time.time() + holds_for)

    def encode(self) -> Envelope:
        body = {
            "ids": list(self.ids),
            "terminate": self.terminate,
            "signal": self.signal,
            "expires": self.expires,
        }
        return Envelope(body=json.dumps(body).encode(), content_type=CONTENT_TYPE)

    @classmethod
    def decode(cls, envelope: Envelope) -> Revocation:
        """Read a revocation; anything malformed raises :class:`MalformedMessage`."""
        body = json_object(envelope.body, "revocation")
        ids, expires = body.get("ids"), body.get("expires")
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise MalformedMessage("revocation 'ids' must be a list of task ids")
        if not isinstance(expires, (int, float)) or isinstance(expires, bool):
            raise MalformedMessage("revocation 'expires' must be a unix time")
        try:
            name = signal_name(body.get("signal"))
        except ValueError as exc:
            raise MalformedMessage(str(exc)) from None
        return cls(tuple(ids), body.get("terminate") is True, name, float(expires))


def check_task_id(task_id: object) -> str:
    if not isinstance(task_id, str) or not task_id.strip():
        raise ValueError(f"{task_id!r} is not a task id: a task id is a non-empty string")
    if len(task_id.encode()) > MAX_ID_LENGTH or any(c.isspace() for c in task_id):
        raise ValueError(
            f"{task_id[:60]!r} is not a task id: at most {MAX_ID_LENGTH} bytes, no spaces"
        )
    return task_id


def signal_name(value: str | int | None) -> str:
    """``"SIGKILL"``, ``"KILL"``, ``9`` -> ``"SIGKILL"``; None is SIGTERM, as in Celery."""
    if value is None:
        return "SIGTERM"
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return signals.Signals(value).name
        if isinstance(value, str):
            upper = value.upper()
            return signals.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"].name
    except (KeyError, ValueError):
        pass
    raise ValueError(f"{value!r} is not a signal (use a name such as 'SIGTERM' or 'SIGKILL')")


def marker(token: str) -> Envelope:
    return Envelope(body=b"", type=MARKER_TYPE, message_id=token, persistent=False)
