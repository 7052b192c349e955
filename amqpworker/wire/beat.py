"""Beat's record of what it fired, as kept in the broker, and a tick's task id.

The record is one JSON message, ``{"fired": {entry: due time (ISO 8601, UTC)},
"by": beat id, "written": ISO time}``, in a queue that holds only the newest (length 1,
the oldest dropped). The active beat publishes a new one in the same transaction as the
tasks it fires, so the record and the tasks are both in the broker, or neither.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..exceptions import MalformedMessage
from .message import Envelope

CONTENT_TYPE = "application/json"
STATE_TYPE = "amqpworker.beat.state"
#: The header a fired task carries: the due time it was fired for (ISO 8601, UTC).
DUE_HEADER = "x-amqpworker-beat-due"
#: The header a fired task carries: the beat entry it was fired for.
ENTRY_HEADER = "x-amqpworker-beat-entry"


def tick_id(entry: str, due: dt.datetime) -> str:
    """The task id of an entry's run for one due time: the same wherever it turns up."""
    return f"{entry}@{due.astimezone(dt.timezone.utc).isoformat()}"


@dataclass(frozen=True)
class FiredRecord:
    """When each entry last fired (the due time, not the clock time it went out)."""

    fired: Mapping[str, dt.datetime] = field(default_factory=dict)
    by: str = ""
    written: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    def encode(self) -> Envelope:
        body = {
            "fired": {name: due.isoformat() for name, due in sorted(self.fired.items())},
            "by": self.by,
            "written": self.written.isoformat(),
        }
        return Envelope(
            json.dumps(body, separators=(",", ":")).encode(),
            content_type=CONTENT_TYPE,
            type=STATE_TYPE,
            persistent=True,
        )

    @classmethod
    def decode(cls, envelope: Envelope) -> FiredRecord:
        try:
            body = json.loads(envelope.body)
            fired = {str(name): _moment(value) for name, value in body["fired"].items()}
            return cls(fired, str(body.get("by", "")), _moment(body["written"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MalformedMessage(f"not a beat state record: {exc}") from exc


def _moment(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
