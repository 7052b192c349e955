"""The worker: consumes queues and runs tasks."""

from .worker import Worker, WorkerStats

__all__ = ["Worker", "WorkerStats"]
