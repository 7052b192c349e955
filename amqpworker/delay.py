"""The delay topology's names and routing keys: binary delay levels, as data.

A delayed message waits in the broker, never in a worker. Level ``k`` (0..27) is a
topic exchange and a queue whose fixed TTL is ``2**k`` seconds. The routing key spells
the whole delay in bits, most significant first, then a landing id::

    0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.1.3f2a9c01b7e4   (5 s)

Exchange ``k`` sends a key whose bit ``k`` is 1 into queue ``k``, and a key whose bit
``k`` is 0 straight on to exchange ``k-1``. Queue ``k`` dead-letters expired messages to
exchange ``k-1`` with the key unchanged, so a message spends exactly ``2**k`` seconds in
each level whose bit is set. Below level 0 is the *deliver* exchange, which routes by the
landing id to a landing queue with a TTL of 0 that dead-letters at once to the real
destination: its exchange and routing key. That last hop is what lets a delay reach any
destination (a classic, priority or quorum queue, through the default, a direct or a
topic exchange) with the routing key it would have had without a delay.

Each level queue holds messages of one TTL only, so they expire in arrival order: no
message waits behind a longer one (the head-of-line problem of a single TTL queue).
28 levels reach 2**28 - 1 seconds, about 8.5 years.

Every move between levels is a dead-lettering, and RabbitMQ dead-letters from classic
queues *at most once*: a message moving while the broker shuts down can vanish. So the
level and landing queues are quorum queues with at-least-once dead-lettering (RabbitMQ
3.10 and later): a message moving during a shutdown moves after the restart, or twice,
never not at all.
"""

from __future__ import annotations

import hashlib
import math

LEVELS = 28
MAX_DELAY = 2**LEVELS - 1
PREFIX = "amqpworker.delay"
DELIVER_EXCHANGE = f"{PREFIX}.deliver"
#: Where a delayed message goes whose landing queue no longer exists: at-least-once
#: dead-lettering retries an unroutable message forever and holds up the messages behind
#: it, so the deliver exchange always routes, to here if nowhere else.
UNROUTABLE = f"{PREFIX}.unroutable"
UNROUTABLE_TTL_MS = 7 * 24 * 3600 * 1000
#: Arguments every level and landing queue shares (see the module docstring).
QUEUE_ARGUMENTS = {
    "x-queue-type": "quorum",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


def level_name(level: int) -> str:
    """The exchange and the queue of one level share this name."""
    return f"{PREFIX}.{level:02d}"


def level_ttl_ms(level: int) -> int:
    return 1000 << level


def landing_id(exchange: str, routing_key: str) -> str:
    """A short, dot-free id for a destination, used as the last word of a delay key."""
    digest = hashlib.sha256(f"{exchange}\0{routing_key}".encode()).hexdigest()
    return digest[:16]


def landing_queue(exchange: str, routing_key: str) -> str:
    return f"{PREFIX}.land.{landing_id(exchange, routing_key)}"


def whole_seconds(delay: float) -> int:
    """The part of a delay the topology waits out; the rest (< 1 s) is left to the worker.

    Raises:
        ValueError: for a delay past the topology's reach.
    """
    seconds = math.floor(delay)
    if seconds > MAX_DELAY:
        raise ValueError(f"a delay of {delay:.0f}s is longer than the maximum {MAX_DELAY}s")
    return max(seconds, 0)


def routing_key(seconds: int, exchange: str, routing_key: str) -> str:
    """The key that carries a message through the levels to its destination."""
    bits = ".".join("1" if seconds >> level & 1 else "0" for level in reversed(range(LEVELS)))
    return f"{bits}.{landing_id(exchange, routing_key)}"


def entry_level(seconds: int) -> int:
    """The highest level with its bit set: publishing there skips the empty levels above."""
    return max(seconds.bit_length() - 1, 0)


def level_binding_keys(level: int) -> tuple[str, str]:
    """Patterns on exchange ``level``: (bit set -> its queue, bit clear -> level below)."""
    above = ["*"] * (LEVELS - 1 - level)
    return ".".join([*above, "1", "#"]), ".".join([*above, "0", "#"])
