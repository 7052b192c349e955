"""Counters a person (or a test) can read while the worker runs.

They cost an addition each, so they are always kept; the metrics endpoint
(``worker/metrics.py``) reads them when scraped rather than counting again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..wire.results import FAILURE, RETRY, REVOKED

#: The state a run ended in, as the metrics label it (anything else succeeded).
STATE_NAMES = {FAILURE: "failed", RETRY: "retried", REVOKED: "revoked"}


@dataclass
class WorkerStats:
    received: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    revoked: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    running: int = 0
    #: Ended tasks by (task name, state): succeeded, failed, retried or revoked.
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Dead-lettered messages by reason (``unknown-task``, ``failed-after-retries``...).
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def by_task(self) -> dict[str, int]:
        """Ended tasks by name, whatever their state (``inspect().stats()["total"]``)."""
        totals: dict[str, int] = {}
        for (name, _), count in list(self.outcomes.items()):
            totals[name] = totals.get(name, 0) + count
        return totals

    def counters(self) -> dict[str, int]:
        """The plain counters, for a log line or ``inspect().stats()``."""
        return {key: value for key, value in vars(self).items() if isinstance(value, int)}

    def count(self, task_name: str, status: str) -> None:
        """A run of ``task_name`` ended with ``status`` (or it was revoked before running)."""
        state = STATE_NAMES.get(status, "succeeded")
        if state == "succeeded":
            self.succeeded += 1
        elif state == "failed":
            self.failed += 1
        elif state == "retried":
            self.retried += 1
        else:
            self.revoked += 1
        key = (task_name, state)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def count_dead_letter(self, reason: str) -> None:
        self.dead_lettered += 1
        self.dead_letter_reasons[reason] = self.dead_letter_reasons.get(reason, 0) + 1
