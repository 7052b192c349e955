"""Taskiq with taskiq-aio-pika, in the peers' venv.

Per repeat:

1. ``fill``: start marker, N sequential ``await noop.kiq()`` (``enqueue_rate``), end
   marker; ONE ``taskiq worker --workers 1 --max-async-tasks C --ack-type when_executed``
   drains it (``drain_rate[asyncio]``: its tasks are ``async def``, like amqpworker's
   asyncio pool).
2. ``fill-async``: the same with 500 ``kiq()`` in flight under ``asyncio.gather``
   (``enqueue_async_rate``, as amqpworker's ``adelay()`` fill); not drained.

No round trip: taskiq-aio-pika has no result backend (Taskiq's need Redis or another
store). Settings: see bench/apps/taskiq_app.py.
"""

from __future__ import annotations

from ..common import Config
from .peer_system import PeerSystem, Step


class TaskiqSystem(PeerSystem):
    name = "taskiq"
    description = "Taskiq: kiq(), taskiq worker --workers 1 --max-async-tasks C (aio-pika)"
    label = "taskiq"
    driver = "taskiq_driver"
    steps = (
        Step("fill", "enqueue_rate", variant="asyncio"),
        Step("fill-async", "enqueue_async_rate"),
    )
    notes = ("round trip: n/a, taskiq-aio-pika has no result backend (needs Redis etc.)",)

    def worker_command(self, config: Config, queue: str, processes: int) -> list[str]:
        return [
            str(self.python), "-m", "taskiq", "worker", "bench.apps.taskiq_app:broker",
            "--workers", str(processes),
            "--max-async-tasks", str(config.concurrency),
            "--ack-type", "when_executed",
            "--log-level", "WARNING",
        ]  # fmt: skip

    def declared(self, queue: str) -> tuple[list[str], list[str]]:
        return [], [queue]  # the direct exchange named after the queue
