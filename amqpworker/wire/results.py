"""Result state messages, published by a worker to the caller's ``reply_to`` queue.

Body: ``{"task_id", "status", "result", "traceback", "date_done", "task_name"}``,
serialized with ``result_serializer``; ``correlation_id`` is the task id. A FAILURE's
``result`` is the exception as data (``exc_type``, ``exc_module``, ``exc_message``), the
same shape Celery uses, so the caller can rebuild the exception type.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..exceptions import DecodeError
from .message import Envelope
from .serializers import Serializer, SerializerRegistry

PENDING = "PENDING"
STARTED = "STARTED"
PROGRESS = "PROGRESS"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
EXCEPTION_STATES = frozenset({FAILURE, RETRY, REVOKED})
_PLAIN = (str, int, float, bool, type(None))


@dataclass(frozen=True, slots=True)
class ResultMessage:
    """One state change of a task, as the caller receives it."""

    task_id: str
    status: str
    result: Any = None
    traceback: str | None = None
    date_done: str | None = None
    task_name: str | None = None

    def as_body(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "status": self.status,
            "result": self.result,
            "traceback": self.traceback,
            "date_done": self.date_done,
            "task_name": self.task_name,
        }

    def encode(self, serializer: Serializer) -> Envelope:
        return Envelope(
            body=serializer.dumps(self.as_body()),
            content_type=serializer.content_type,
            content_encoding=serializer.content_encoding,
            correlation_id=self.task_id,
            headers={"task_id": self.task_id, "status": self.status},
            persistent=False,
        )

    @classmethod
    def decode(
        cls, envelope: Envelope, serializers: SerializerRegistry, accepted: frozenset[str]
    ) -> ResultMessage:
        body = serializers.decode(envelope.body, envelope.content_type, accepted)
        if not isinstance(body, Mapping):
            raise DecodeError("result body must be a mapping")
        task_id = body.get("task_id") or envelope.correlation_id
        status = body.get("status")
        if not isinstance(task_id, str) or not isinstance(status, str):
            raise DecodeError("result body needs string 'task_id' and 'status'")
        return cls(
            task_id=task_id,
            status=status,
            result=body.get("result"),
            traceback=body.get("traceback"),
            date_done=body.get("date_done"),
            task_name=body.get("task_name"),
        )


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def exception_to_data(exc: BaseException) -> dict[str, Any]:
    """An exception as plain data; arguments that do not serialize become their repr."""
    kind = type(exc)
    return {
        "exc_type": kind.__qualname__,
        "exc_module": kind.__module__,
        "exc_message": [arg if isinstance(arg, _PLAIN) else repr(arg) for arg in exc.args],
    }
