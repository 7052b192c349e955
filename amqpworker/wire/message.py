"""Wire format v1 of a task message (see ``docs/protocol.md``).

The body holds only ``[args, kwargs]``. Everything a router, a monitor or a broker tool
needs is in AMQP properties and headers, readable without decoding the body. Header
names follow Celery's message protocol v2 where the meaning is the same.

:class:`Envelope` is an AMQP message without the transport: the broker layer turns it
into a frame on the way out and builds one from each delivery on the way in, so this
module never touches a socket.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import MalformedMessage, MessageError
from .deadletter import UNDECODABLE_HEADERS, fresh_headers
from .serializers import Serializer, SerializerRegistry, json_default

PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "x-amqpworker-protocol"
#: When the message was published, in whole milliseconds since the Unix epoch (the
#: publisher's clock): a worker's queue-wait metric reads it. AMQP's own ``timestamp``
#: property holds whole seconds only.
SENT_AT_HEADER = "x-amqpworker-sent-at"

#: Headers left out when null: (header, TaskMessage field, kind). A new header of this
#: sort is a field on TaskMessage and a line here (and, for a task to read it as
#: ``self.request.<field>``, a field of the same name on Request).
OPTIONAL_HEADERS: tuple[tuple[str, str, str], ...] = (
    ("parent_id", "parent_id", "str"),
    ("group", "group_id", "str"),
    ("group_index", "group_index", "int"),
    ("eta", "eta", "time"),
    ("expires", "expires", "time"),
)
#: Headers written by amqpworker itself; everything else in ``headers`` is the user's.
CORE_HEADERS = frozenset(
    {
        "lang",
        "task",
        "id",
        "root_id",
        *(header for header, _, _ in OPTIONAL_HEADERS),
        "retries",
        "timelimit",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "group_index",
        *("callbacks", "errbacks", "chain", "chord"),
        PROTOCOL_HEADER,
        SENT_AT_HEADER,
    }
)
#: Canvas headers: JSON text, so that float arguments keep their precision (AMQP tables
#: would carry them as 32-bit floats) and any tool can read them.
CANVAS_HEADERS = ("callbacks", "errbacks", "chain", "chord")

_ORIGIN = f"{socket.gethostname()}"
_REPR_LIMIT = 200


@dataclass(frozen=True, slots=True)
class Envelope:
    """An AMQP message as data: body, properties and headers."""

    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    content_encoding: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    priority: int | None = None
    expiration: float | None = None
    type: str | None = None
    persistent: bool = True


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One task invocation, as it travels between a caller and a worker."""

    task: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    retries: int = 0
    eta: dt.datetime | None = None
    expires: dt.datetime | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    reply_to: str | None = None
    priority: int | None = None
    ignore_result: bool = False
    group_index: int | None = None
    #: Signatures (as dicts) to publish with the result when this task succeeds.
    callbacks: Sequence[Mapping[str, Any]] = ()
    #: Signatures to call with (request, exc, traceback) when it fails.
    errbacks: Sequence[Mapping[str, Any]] = ()
    #: The chain's remaining steps, next one first.
    chain: Sequence[Mapping[str, Any]] = ()
    #: Chord membership: {"id", "size", "index", "body"}.
    chord: Mapping[str, Any] | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)

    def encode(self, serializer: Serializer) -> Envelope:
        """Serialize the arguments into the body and the rest into properties/headers."""
        body = serializer.dumps([list(self.args), dict(self.kwargs)])
        headers: dict[str, Any] = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in self.headers.items()
        }
        headers.update(
            {
                "lang": "py",
                "task": self.task,
                "id": self.id,
                "root_id": self.root_id or self.id,
                "retries": self.retries,
                "argsrepr": _short_repr(self.args),
                "kwargsrepr": _short_repr(self.kwargs),
                "origin": _ORIGIN,
                "ignore_result": self.ignore_result,
                PROTOCOL_HEADER: PROTOCOL_VERSION,
                SENT_AT_HEADER: time.time_ns() // 1_000_000,
            }
        )
        # Absent rather than null: every header costs encoding on both sides, and a
        # decoder (ours, Celery's) reads a missing one as null.
        for header, name, kind in OPTIONAL_HEADERS:
            value = getattr(self, name)
            if value is not None:
                headers[header] = value.isoformat() if kind == "time" else value
        if self.time_limit is not None or self.soft_time_limit is not None:
            headers["timelimit"] = [self.time_limit, self.soft_time_limit]
        for name in CANVAS_HEADERS:
            value = getattr(self, name)
            if value:
                headers[name] = json.dumps(value, separators=(",", ":"), default=json_default)
        return Envelope(
            body=body,
            headers=headers,
            content_type=serializer.content_type,
            content_encoding=serializer.content_encoding,
            message_id=self.id,
            correlation_id=self.id,
            reply_to=None if self.ignore_result else self.reply_to,
            priority=self.priority,
            expiration=self._broker_expiration(),
            type=self.task,
        )

    def _broker_expiration(self) -> float | None:
        """Seconds until the broker may drop the message, where that is safe.

        Only without a delay (a per-message TTL in a delay level would cut the delay
        short) and without a caller waiting (a message the broker drops, or moves to the
        DLQ, never tells its caller REVOKED; the worker's ``expires`` check does).
        """
        if self.expires is None or self.eta is not None or not self.ignore_result:
            return None
        remaining = (self.expires - dt.datetime.now(dt.timezone.utc)).total_seconds()
        return max(remaining, 0.001)

    @classmethod
    def decode(
        cls,
        envelope: Envelope,
        serializers: SerializerRegistry,
        accepted: frozenset[str],
        timezone: dt.tzinfo = dt.timezone.utc,
    ) -> TaskMessage:
        """Validate headers, then decode the body; anything wrong raises a MessageError.

        The content type is checked against ``accepted`` before the body is touched.
        Naive times in ``eta``/``expires`` are in ``timezone`` (the app's).

        Raises:
            ContentDisallowed: the content type is not accepted.
            DecodeError: the body cannot be decoded.
            MalformedMessage: a header is missing or of the wrong type, the body is not
                ``[args, kwargs]``, or anything else in the message cannot be read (a
                header nested too deep raises RecursionError in the JSON parser).
        """
        try:
            return cls._decode(envelope, serializers, accepted, timezone)
        except MessageError:
            raise
        except Exception as exc:
            raise MalformedMessage(
                f"cannot read the message: {type(exc).__name__}: {str(exc)[:200]}"
            ) from None

    @classmethod
    def _decode(
        cls,
        envelope: Envelope,
        serializers: SerializerRegistry,
        accepted: frozenset[str],
        timezone: dt.tzinfo,
    ) -> TaskMessage:
        headers = envelope.headers
        if UNDECODABLE_HEADERS in headers:
            raise MalformedMessage(str(headers[UNDECODABLE_HEADERS]))
        task = headers.get("task") or envelope.type
        if not isinstance(task, str) or not task:
            raise MalformedMessage("header 'task' is missing or not a string")
        task_id = headers.get("id") or envelope.correlation_id or envelope.message_id
        if not isinstance(task_id, str) or not task_id:
            raise MalformedMessage("header 'id' is missing or not a string")
        version = headers.get(PROTOCOL_HEADER, PROTOCOL_VERSION)
        if not isinstance(version, int) or version > PROTOCOL_VERSION:
            raise MalformedMessage(
                f"wire format version {version!r} is newer than this worker understands "
                f"({PROTOCOL_VERSION}); upgrade the worker"
            )
        retries = headers.get("retries")
        retries = 0 if retries is None else retries
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise MalformedMessage(
                f"header 'retries' must be a non-negative integer, not {retries!r}"
            )
        hard, soft = _time_limits(headers.get("timelimit"))
        payload = serializers.decode(envelope.body, envelope.content_type, accepted)
        args, kwargs = _split_body(payload)
        return cls(
            task=task,
            args=args,
            kwargs=kwargs,
            id=task_id,
            root_id=_optional_str(headers, "root_id"),
            retries=retries,
            time_limit=hard,
            soft_time_limit=soft,
            reply_to=envelope.reply_to or None,
            priority=envelope.priority,
            ignore_result=headers.get("ignore_result") is True,
            callbacks=_canvas(headers, "callbacks", list),
            errbacks=_canvas(headers, "errbacks", list),
            chain=_canvas(headers, "chain", list),
            chord=_canvas(headers, "chord", dict) or None,
            # Delivery history (x-death, our counters) stays behind: a retry or replay
            # that carried x-death could be dropped by RabbitMQ's dead-letter cycle check.
            headers=fresh_headers({k: v for k, v in headers.items() if k not in CORE_HEADERS}),
            **_read_optional(headers, timezone),
        )


def _split_body(payload: Any) -> tuple[list[Any], dict[str, Any]]:
    # Celery's v2 body is [args, kwargs, embed]; the third part is accepted and ignored.
    if not isinstance(payload, (list, tuple)) or len(payload) not in (2, 3):
        raise MalformedMessage("body must be a list [args, kwargs]")
    args, kwargs = payload[0], payload[1]
    if not isinstance(args, (list, tuple)):
        raise MalformedMessage(f"body args must be a list, not {type(args).__name__}")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise MalformedMessage("body kwargs must be a mapping with string keys")
    return list(args), kwargs


def _optional_str(headers: Mapping[str, Any], name: str, _: Any = None) -> str | None:
    value = headers.get(name)
    if value is None or isinstance(value, str):
        return value
    raise MalformedMessage(f"header {name!r} must be a string, not {type(value).__name__}")


def _optional_int(headers: Mapping[str, Any], name: str, _: Any = None) -> int | None:
    value = headers.get(name)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise MalformedMessage(f"header {name!r} must be an integer, not {type(value).__name__}")


def _canvas(headers: Mapping[str, Any], name: str, kind: type) -> Any:
    text = headers.get(name)
    if text is None:
        return {} if kind is dict else ()
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError as exc:
        raise MalformedMessage(f"header {name!r} is not JSON: {exc}") from None
    except RecursionError:
        raise MalformedMessage(f"header {name!r} is nested too deeply to read") from None
    if kind is dict:
        well_formed = isinstance(value, dict)
    else:
        well_formed = isinstance(value, list) and all(isinstance(item, dict) for item in value)
    if not well_formed:
        raise MalformedMessage(f"header {name!r} must be JSON {kind.__name__} of signatures")
    if isinstance(value, dict):
        _check_chord(value)
        return value
    assert isinstance(value, list)
    for item in value:
        _check_signature(item, name)
    return tuple(value)


def _check_chord(chord: dict[str, Any]) -> None:
    kinds = {"id": str, "size": int, "index": int, "body": dict}
    for key, kind in kinds.items():
        if not isinstance(chord.get(key), kind):
            raise MalformedMessage(f"header 'chord' needs {key!r} ({kind.__name__})")
    _check_signature(chord["body"], "chord")


def _check_signature(signature: dict[str, Any], header: str) -> None:
    if signature.get("subtask_type") is None and not isinstance(signature.get("task"), str):
        raise MalformedMessage(f"header {header!r} holds a signature without a task name")


def _optional_time(
    headers: Mapping[str, Any], name: str, timezone: dt.tzinfo
) -> dt.datetime | None:
    value = headers.get(name)
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise MalformedMessage(f"header {name!r} is not an ISO 8601 time: {value!r}") from None
    else:
        raise MalformedMessage(f"header {name!r} must be an ISO 8601 string")
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone)


_READERS: dict[str, Callable[[Mapping[str, Any], str, dt.tzinfo], Any]] = {
    "str": _optional_str,
    "int": _optional_int,
    "time": _optional_time,
}


def _read_optional(headers: Mapping[str, Any], timezone: dt.tzinfo) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for header, name, kind in OPTIONAL_HEADERS:
        if header in headers:
            found[name] = _READERS[kind](headers, header, timezone)
    return found


def _time_limits(value: Any) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)
            for v in value
        )
    ):
        raise MalformedMessage("header 'timelimit' must be [hard, soft] seconds or nulls")
    return value[0], value[1]


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."
