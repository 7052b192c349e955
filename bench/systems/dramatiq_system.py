"""Dramatiq 2 with its RabbitMQ (pika) broker, in the peers' venv.

Per repeat:

1. ``fill``: start marker, N sequential ``noop.send()`` (``enqueue_rate``), end marker;
   ONE ``dramatiq --processes 1 --threads C`` drains it (``drain_rate[threads]``).
2. ``fill-bulk``: the same with ``dramatiq.group(noop.message() ...).run()``
   (``enqueue_bulk_rate``; Dramatiq's group enqueues one message at a time); then
   ``dramatiq --processes 2 --threads C`` drains it (``drain_rate[threads x2]``), timed
   from the moment both processes consume.

No round trip: Dramatiq's result backends need Redis or Memcached.
Settings: see bench/apps/dramatiq_app.py (confirm_delivery, max_priority 10, prefetch
C x M through ``dramatiq_queue_prefetch``).
"""

from __future__ import annotations

from ..common import Config
from .peer_system import PeerSystem, Step


class DramatiqSystem(PeerSystem):
    name = "dramatiq"
    description = "Dramatiq: send(), group().run(), dramatiq --processes 1|2 --threads C"
    label = "dramatiq"
    driver = "dramatiq_driver"
    steps = (
        Step("fill", "enqueue_rate", variant="threads"),
        Step("fill-bulk", "enqueue_bulk_rate", variant="threads x2", processes=2),
    )
    notes = ("round trip: n/a, Dramatiq's result backends need Redis or Memcached",)

    def worker_command(self, config: Config, queue: str, processes: int) -> list[str]:
        return [
            str(self.python), "-m", "dramatiq", "bench.apps.dramatiq_app",
            "--processes", str(processes),
            "--threads", str(config.concurrency),
            "--queues", queue,
        ]  # fmt: skip

    def worker_env(self, config: Config) -> dict[str, str]:
        # Read by dramatiq.worker on import; the default would be 2 x threads.
        return {"dramatiq_queue_prefetch": str(config.prefetch)}

    def declared(self, queue: str) -> tuple[list[str], list[str]]:
        return [f"{queue}.DQ", f"{queue}.XQ"], []
