"""The benchmark's Celery app (runs in the peers' venv, see bench/peers.py).

``celery -A bench.apps.celery_app worker --pool threads -c C -Q $BENCH_QUEUE ...``

Settings chosen to match amqpworker's defaults in the benchmark:

- ``broker_transport_options={"confirm_publish": True}``: each publish waits for the
  broker's confirm, like amqpworker's ``delay()``.
- ``task_acks_late=True``: ack after the task ran, like amqpworker.
- ``worker_prefetch_multiplier`` = ``BENCH_PREFETCH_MULTIPLIER`` (prefetch = C x M).
- ``backend="rpc://"``: results travel back over a reply queue, as with amqpworker.
- the queue has amqpworker's arguments (x-max-priority 10, a DLX to ``<queue>.dlq``),
  bound to a direct exchange of the same name (Celery's default layout).
- remote control off (no ``celery@host.celery.pidbox`` queue); the harness also passes
  ``--without-gossip --without-mingle --without-heartbeat``. None of them is in the path
  of a task; they would only leave queues and exchanges behind.

The tasks are the same as amqpworker's: ``noop`` (no result), ``mark(path)`` (writes
``time.time()`` to a file, no result) and ``add(x, y)`` (result over rpc://).
"""

import os
import time

from celery import Celery
from kombu import Exchange, Queue

URL = os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE = os.environ.get("BENCH_QUEUE", "bench-celery")

app = Celery("bench_celery", broker=URL, backend="rpc://")
app.conf.update(
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH_MULTIPLIER", "4")),
    worker_enable_remote_control=False,
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_queues=[
        Queue(
            QUEUE,
            Exchange(QUEUE, type="direct"),
            routing_key=QUEUE,
            queue_arguments={
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": f"{QUEUE}.dlq",
                "x-max-priority": 10,
            },
        )
    ],
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    return None


@app.task(name="bench.mark", ignore_result=True)
def mark(path: str) -> None:
    now = time.time()
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        out.write(repr(now))
    os.replace(tmp, path)


@app.task(name="bench.add")
def add(x: int, y: int) -> int:
    return x + y
