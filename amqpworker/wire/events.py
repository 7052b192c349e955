"""Events: what workers and callers say they did, under Celery's names and fields.

An event is a flat JSON object published to the topic exchange :data:`EVENT_EXCHANGE`
with a routing key made from its type (``task-succeeded`` goes out as
``task.succeeded``), so a monitor binds ``task.#``, ``worker.#`` or ``#``. Several
events of one type sent together travel as one message, a JSON list of them (Celery's
workers buffer events the same way). Every event
has ``type``, ``hostname``, ``timestamp`` (seconds since the epoch), ``utcoffset``
(hours), ``pid`` and ``clock`` (a counter of the sender's events, in order); each type
adds Celery's fields for it (see ``docs/operations.md``). Arguments, keyword arguments
and results travel as ``repr`` strings, cut to a readable length, as Celery's do.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..exceptions import MalformedMessage
from .message import Envelope, TaskMessage
from .serializers import json_default

EVENT_EXCHANGE = "amqpworker.events"
CONTENT_TYPE = "application/json"

#: Task events in the order one task goes through them. Events sent together are
#: published grouped by type in this order, so one task's events stay in order.
TASK_EVENT_ORDER = (
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-rejected",
)
TASK_EVENTS = frozenset(TASK_EVENT_ORDER)
WORKER_EVENTS = frozenset({"worker-online", "worker-heartbeat", "worker-offline"})
EVENT_TYPES = TASK_EVENTS | WORKER_EVENTS

#: Seconds between a worker's heartbeats (Celery's default); a monitor reads it as
#: ``freq`` and may call a worker gone after a few missed ones.
HEARTBEAT_FREQ = 2.0
#: Longest ``repr`` of arguments or a result that an event carries.
REPR_LIMIT = 1024

Event = dict[str, Any]


class MalformedEvent(MalformedMessage):
    """An event that cannot be read: the text says what is wrong with it."""


def routing_key(event_type: str) -> str:
    """``task-succeeded`` -> ``task.succeeded``: Celery's routing key for an event."""
    return event_type.replace("-", ".", 1)


def short_repr(value: object, limit: int = REPR_LIMIT) -> str:
    """``repr`` cut to ``limit`` characters; a ``repr`` that raises is described instead."""
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def caller_name() -> str:
    """A caller's name in its events, as Celery names a producer: ``gen<pid>@<host>``."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def _utcoffset() -> int:
    """Hours local time is behind UTC, the sign Celery uses (UTC+2 gives -2)."""
    dst = time.daylight and time.localtime().tm_isdst > 0
    return (time.altzone if dst else time.timezone) // 3600


class Stamper:
    """Builds one sender's events: the fields every event has, and its clock."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.pid = os.getpid()
        self.utcoffset = _utcoffset()
        self.clock = 0

    def event(self, event_type: str, fields: Mapping[str, Any]) -> Event:
        self.clock += 1
        return {
            "type": event_type,
            "hostname": self.hostname,
            "timestamp": time.time(),
            "utcoffset": self.utcoffset,
            "pid": self.pid,
            "clock": self.clock,
            **fields,
        }


def describe_task(message: TaskMessage) -> dict[str, Any]:
    """The fields task-sent and task-received carry about a task message."""
    return {
        "uuid": message.id,
        "name": message.task,
        "args": short_repr(tuple(message.args)),
        "kwargs": short_repr(dict(message.kwargs)),
        "retries": message.retries,
        "eta": message.eta.isoformat() if message.eta is not None else None,
        "expires": message.expires.isoformat() if message.expires is not None else None,
        "root_id": message.root_id or message.id,
        "parent_id": message.parent_id,
    }


def encode_events(events: Sequence[Mapping[str, Any]]) -> tuple[Envelope, str]:
    """Events of one type as one message, and the routing key to publish it with.

    One event is a JSON object; several are a JSON list of them, which is how Celery's
    workers send buffered events too (its receivers read both).
    """
    if not events:
        raise ValueError("no events to encode")
    event_type = str(events[0]["type"])
    if any(event["type"] != event_type for event in events):
        raise ValueError("events of one message must all be of one type")
    value: Any = events[0] if len(events) == 1 else list(events)
    body = json.dumps(value, default=_lenient, separators=(",", ":")).encode()
    envelope = Envelope(
        body=body,
        content_type=CONTENT_TYPE,
        content_encoding="utf-8",
        type=event_type,
        persistent=False,
    )
    return envelope, routing_key(event_type)


def decode_events(envelope: Envelope) -> tuple[list[Event], list[str]]:
    """The events in a message, and what is wrong with those that cannot be read.

    Raises:
        MalformedEvent: the message as a whole cannot be read (not JSON, neither an
            object nor a list).
    """
    if envelope.content_type not in (None, "", CONTENT_TYPE):
        raise MalformedEvent(f"event content type is {envelope.content_type!r}, not JSON")
    try:
        value = json.loads(envelope.body)
    except (ValueError, RecursionError) as exc:
        raise MalformedEvent(f"event body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(value, (dict, list)):
        raise MalformedEvent(f"event must be a JSON object or list, not {type(value).__name__}")
    events, problems = [], []
    for item in value if isinstance(value, list) else [value]:
        try:
            events.append(check_event(item))
        except MalformedEvent as exc:
            problems.append(str(exc))
    return events, problems


def check_event(event: Any) -> Event:
    """``event`` if it is one; else :class:`MalformedEvent` saying what is wrong.

    Types other than Celery's are read as long as they have a ``type`` and a
    ``hostname`` (a sender may have events of its own); Celery's are checked for the
    fields a monitor relies on.
    """
    if not isinstance(event, dict):
        raise MalformedEvent(f"event must be a JSON object, not {type(event).__name__}")
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise MalformedEvent("event has no 'type' string")
    if not isinstance(event.get("hostname"), str):
        raise MalformedEvent(f"{event_type} event has no 'hostname' string")
    timestamp = event.get("timestamp")
    if timestamp is not None and (
        not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool)
    ):
        raise MalformedEvent(f"{event_type} event 'timestamp' must be a number")
    if event_type in TASK_EVENTS and not (isinstance(event.get("uuid"), str) and event["uuid"]):
        raise MalformedEvent(f"{event_type} event has no 'uuid' string")
    for name in ("active", "processed"):
        value = event.get(name)
        if event_type in WORKER_EVENTS and value is not None and not isinstance(value, int):
            raise MalformedEvent(f"{event_type} event '{name}' must be an integer")
    return event


def _lenient(value: Any) -> Any:
    try:
        return json_default(value)
    except TypeError:
        return short_repr(value)
