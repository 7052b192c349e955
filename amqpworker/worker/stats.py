"""Counters a person (or a test) can read while the worker runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..wire.results import FAILURE, RETRY


@dataclass
class WorkerStats:
    received: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    running: int = 0
    by_task: dict[str, int] = field(default_factory=dict)

    def count(self, task_name: str, status: str) -> None:
        """A run of ``task_name`` ended with ``status``."""
        if status == FAILURE:
            self.failed += 1
        elif status == RETRY:
            self.retried += 1
        else:
            self.succeeded += 1
        self.by_task[task_name] = self.by_task.get(task_name, 0) + 1
