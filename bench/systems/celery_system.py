"""Celery 5 with its py-amqp transport, in the peers' venv.

Per repeat:

1. ``fill``: start marker, N sequential ``noop.delay()`` (timed in the caller:
   ``enqueue_rate``), end marker. Then ONE ``celery worker --pool threads -c C`` drains
   it (``drain_rate[threads]``, CPU, RSS) and, idle, answers R sequential
   ``add.delay(1, 2).get()`` over ``rpc://`` (``rt_p50_ms[threads]``/``rt_p99_ms``).
2. ``fill-bulk``: the same fill with ``group(noop.s() for _ in range(N)).apply_async()``
   (``enqueue_bulk_rate``, and the same number as ``enqueue_group_rate``, the row where
   amqpworker's ``group`` is shown too); not drained.

Settings: see bench/apps/celery_app.py (confirm_publish, acks_late, prefetch multiplier
M, classic queue with x-max-priority 10).
"""

from __future__ import annotations

import uuid

from ..common import Config
from .peer_system import PeerSystem, Step


class CelerySystem(PeerSystem):
    name = "celery"
    description = "Celery: delay(), group().apply_async(), worker --pool threads, rpc:// results"
    label = "celery"
    driver = "celery_driver"
    steps = (
        Step("fill", "enqueue_rate", variant="threads", round_trips=True),
        Step("fill-bulk", "enqueue_bulk_rate", also="enqueue_group_rate"),
    )

    def worker_command(self, config: Config, queue: str, processes: int) -> list[str]:
        assert processes == 1, "Celery is measured with one worker process"
        return [
            str(self.python), "-m", "celery",
            "-A", "bench.apps.celery_app",
            "worker",
            "--pool", "threads",
            "--concurrency", str(config.concurrency),
            "--queues", queue,
            "--hostname", f"bench-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "WARNING",
        ]  # fmt: skip

    def declared(self, queue: str) -> tuple[list[str], list[str]]:
        return [], [queue]  # the direct exchange named after the queue
