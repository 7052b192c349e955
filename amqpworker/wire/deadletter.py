"""What a dead-lettered message carries, and how a replay gets a fresh history.

A worker dead-letters by publishing a copy into ``<queue>.dlq`` with ``x-amqpworker-*``
headers saying why and where it came from. RabbitMQ dead-letters by itself too (a
rejected message, a quorum queue's delivery limit, a TTL), and then only ``x-death``
says what happened. :class:`DeadLetter` reads both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

REASON = "x-amqpworker-reason"
DETAIL = "x-amqpworker-detail"
QUEUE = "x-amqpworker-queue"
EXCHANGE = "x-amqpworker-exchange"
ROUTING_KEY = "x-amqpworker-routing-key"
DEAD_AT = "x-amqpworker-dead-at"
EXCEPTION = "x-amqpworker-exception"
#: How many times a message has been delivered, as counted by workers (classic queues).
DELIVERIES = "x-amqpworker-deliveries"
#: The only header of a message whose header table could not be decoded (too deep).
UNDECODABLE_HEADERS = "x-amqpworker-undecodable-headers"
#: Why a worker last put the message back on purpose (a publish that failed, ...).
REQUEUED_BECAUSE = "x-amqpworker-requeued-because"

_HISTORY_PREFIXES = ("x-amqpworker-", "x-death", "x-first-death-", "x-last-death-")
_HISTORY_HEADERS = frozenset({"x-delivery-count"})


def dead_letter_headers(
    headers: Mapping[str, Any],
    *,
    reason: str,
    detail: str,
    queue: str,
    exchange: str,
    routing_key: str,
    exception: str | None = None,
) -> dict[str, Any]:
    """The headers of a dead-letter copy: the original ones plus why and from where."""
    marked = dict(headers)
    marked.update(
        {
            REASON: reason,
            DETAIL: detail[:1000],
            QUEUE: queue,
            EXCHANGE: exchange,
            ROUTING_KEY: routing_key,
            DEAD_AT: dt.datetime.now(dt.timezone.utc).isoformat(),
        }
    )
    if exception is not None:
        marked[EXCEPTION] = exception[:4000]
    return marked


def fresh_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The headers without any delivery or dead-letter history, for a replay."""
    return {
        key: value
        for key, value in headers.items()
        if not key.startswith(_HISTORY_PREFIXES) and key not in _HISTORY_HEADERS
    }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why a message is in a DLQ and where it should go back to."""

    message_id: str | None
    task: str | None
    reason: str
    detail: str
    exchange: str
    routing_key: str
    dead_at: dt.datetime | None

    @classmethod
    def from_message(
        cls, headers: Mapping[str, Any], message_id: str | None, default_queue: str
    ) -> DeadLetter:
        task = headers.get("task")
        if REASON in headers:
            return cls(
                message_id=str(headers.get("id") or message_id or "") or None,
                task=task if isinstance(task, str) else None,
                reason=str(headers[REASON]),
                detail=str(headers.get(DETAIL, "")),
                exchange=str(headers.get(EXCHANGE, "")),
                routing_key=str(headers.get(ROUTING_KEY, default_queue)),
                dead_at=_parse_time(headers.get(DEAD_AT)),
            )
        death = _first_death(headers)
        keys = death.get("routing-keys") or [default_queue]
        return cls(
            message_id=str(headers.get("id") or message_id or "") or None,
            task=task if isinstance(task, str) else None,
            reason=str(death.get("reason", "unknown")),
            detail=f"dead-lettered by the broker from {death.get('queue', default_queue)!r}",
            exchange=str(death.get("exchange", "")),
            routing_key=str(keys[0]),
            dead_at=_parse_time(death.get("time")),
        )

    def age(self, now: dt.datetime | None = None) -> dt.timedelta | None:
        if self.dead_at is None:
            return None
        return (now or dt.datetime.now(dt.timezone.utc)) - self.dead_at


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        return deaths[0]
    return {}


def _parse_time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    return None
