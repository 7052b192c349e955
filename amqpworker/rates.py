"""Rate limits as Celery writes them, and the arithmetic of waiting for a token.

A leaf: settings, tasks and the worker all read rates, so this imports nothing of ours.
"""

from __future__ import annotations

import math
import re

#: Seconds per unit of a rate: ``10/s``, ``200/m``, ``1000/h``.
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*([smh])\s*)?$")
EXAMPLES = "a number of tasks per second, minute or hour such as '10/s', '200/m' or '1000/h'"

Rate = str | int | float | None


def per_second(rate: Rate) -> float | None:
    """Tasks per second that ``rate`` allows; ``None`` for no limit (``None``, ``0``, ``"0"``).

    A plain number is per second, as in Celery.

    Raises:
        ValueError: naming the value, when it is not a rate.
    """
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, str | int | float):
        raise ValueError(f"{rate!r} is not a rate limit; use {EXAMPLES}")
    if isinstance(rate, str):
        match = _RATE.match(rate)
        if match is None:
            raise ValueError(f"{rate!r} is not a rate limit; use {EXAMPLES}")
        amount, unit = float(match.group(1)), match.group(2) or "s"
    else:
        amount, unit = float(rate), "s"
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"{rate!r} is not a rate limit; use {EXAMPLES}")
    return amount / UNITS[unit] or None


def check(rate: Rate) -> Rate:
    """``rate`` itself when it is a rate (see :func:`per_second`); a validator's shape."""
    per_second(rate)
    return rate


class Bucket:
    """Tokens for one task at a fixed rate, one at a time (no burst), as Celery's default.

    Each call of :meth:`reserve` books the next free token and says how long until it is
    due, so callers that wait for their tokens run evenly spaced and in the order they
    asked, and none of them waits for a token another took. Times are any monotonic
    clock's seconds; the caller passes ``now``, so this is plain arithmetic.
    """

    __slots__ = ("_next", "interval", "rate")

    def __init__(self, rate: float, after: Bucket | None = None, now: float = 0.0) -> None:
        """A bucket of ``rate`` tokens per second.

        ``after``: the bucket this one replaces (a rate changed at run time); its booked
        tokens stand, but a new rate never has to wait longer than its own interval.
        """
        if rate <= 0:
            raise ValueError("a bucket needs a rate above 0")
        self.rate = rate
        self.interval = 1.0 / rate
        self._next = -math.inf
        if after is not None:
            self._next = min(after._next, now + self.interval)

    def reserve(self, now: float) -> float:
        """Book the next token; seconds from ``now`` until it is due (0: take it now)."""
        due = max(self._next, now)
        self._next = due + self.interval
        return due - now
