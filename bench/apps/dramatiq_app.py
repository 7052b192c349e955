"""The benchmark's Dramatiq app (runs in the peers' venv, see bench/peers.py).

``dramatiq bench.apps.dramatiq_app --processes P --threads C --queues $BENCH_QUEUE``

Settings chosen to match amqpworker's in the benchmark:

- ``RabbitmqBroker(confirm_delivery=True)``: each ``send()`` waits for the broker's confirm.
- ``max_priority=10``: the queue gets x-max-priority 10 like amqpworker's (and, as always
  with Dramatiq, a DLX to ``<queue>.XQ`` and a delay queue ``<queue>.DQ``).
- the worker's prefetch is set by the harness through ``dramatiq_queue_prefetch`` =
  C x M (Dramatiq's default would be 2 x threads).
- Dramatiq acks after the actor ran (always); its default middleware stays on.

Dramatiq has no result backend without Redis or Memcached, so there is no ``add``.
"""

import os
import time

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

URL = os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE = os.environ.get("BENCH_QUEUE", "bench-dramatiq")

broker = RabbitmqBroker(url=URL, confirm_delivery=True, max_priority=10)
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_noop", queue_name=QUEUE)
def noop() -> None:
    return None


@dramatiq.actor(actor_name="bench_mark", queue_name=QUEUE)
def mark(path: str) -> None:
    now = time.time()
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        out.write(repr(now))
    os.replace(tmp, path)
