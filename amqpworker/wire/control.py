"""Remote-control messages: a command to every worker (or some), and their replies.

A request is published to the fanout exchange :data:`CONTROL_EXCHANGE` with a JSON body
``{"command", "arguments", "destination"}``, the caller's ``reply_to`` and a
``correlation_id``; it expires after the caller's timeout, so a worker that starts
later never acts on it. Each worker that takes it (``destination`` is null or names it)
replies to ``reply_to`` with the same ``correlation_id`` and a body ``{worker_name:
value}``; a command that failed replies ``{worker_name: {"error": "..."}}``, as Celery does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import MalformedMessage
from .message import Envelope
from .serializers import json_default, json_object

CONTROL_EXCHANGE = "amqpworker.control"
CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class ControlRequest:
    command: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    #: Worker names that should act on it; None for every worker.
    destination: Sequence[str] | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    reply_to: str | None = None

    def encode(self, expires_in: float) -> Envelope:
        body = {
            "command": self.command,
            "arguments": dict(self.arguments),
            "destination": list(self.destination) if self.destination is not None else None,
        }
        return Envelope(
            body=_dumps(body),
            content_type=CONTENT_TYPE,
            correlation_id=self.id,
            message_id=self.id,
            reply_to=self.reply_to,
            expiration=max(expires_in, 0.001),
            type="amqpworker.control",
            persistent=False,
        )

    @classmethod
    def decode(cls, envelope: Envelope) -> ControlRequest:
        """Read a request; anything malformed raises :class:`MalformedMessage` saying what."""
        body = json_object(envelope.body, "control message")
        command, arguments = body.get("command"), body.get("arguments") or {}
        destination = body.get("destination")
        if not isinstance(command, str) or not command:
            raise MalformedMessage("control message needs a 'command' string")
        if not isinstance(arguments, dict):
            raise MalformedMessage("control 'arguments' must be a JSON object")
        if destination is not None and not (
            isinstance(destination, list) and all(isinstance(name, str) for name in destination)
        ):
            raise MalformedMessage("control 'destination' must be a list of worker names")
        return cls(
            command=command,
            arguments=arguments,
            destination=destination,
            id=envelope.correlation_id or "",
            reply_to=envelope.reply_to,
        )


def encode_reply(request_id: str, worker: str, value: Any) -> Envelope:
    return Envelope(
        body=_dumps({worker: value}),
        content_type=CONTENT_TYPE,
        correlation_id=request_id,
        persistent=False,
    )


def decode_reply(envelope: Envelope) -> dict[str, Any]:
    """A reply's ``{worker_name: value}``; an unreadable one is an empty dict."""
    try:
        body = json.loads(envelope.body)
    except (ValueError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, default=_lenient, separators=(",", ":")).encode()


def _lenient(value: Any) -> Any:
    try:
        return json_default(value)
    except TypeError:
        return repr(value)
