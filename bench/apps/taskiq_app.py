"""The benchmark's Taskiq app (runs in the peers' venv, see bench/peers.py).

``taskiq worker bench.apps.taskiq_app:broker --workers 1 --max-async-tasks C
--ack-type when_executed``

Settings chosen to match amqpworker's in the benchmark:

- ``AioPikaBroker`` publishes on an aio-pika channel with publisher confirms (aio-pika's
  default) and awaits each confirm in ``kiq()``.
- ``qos`` (the consumer prefetch) = C x M.
- the task queue is a classic queue (taskiq-aio-pika's default is a quorum queue) with
  x-max-priority 10 and its DLX to ``<queue>.dlq``, like amqpworker's; it is bound to a
  direct exchange of the same name.
- the worker acks after the task ran (``--ack-type when_executed``, set by the harness).
- the tasks are ``async def``: Taskiq runs them on its event loop, so it compares with
  amqpworker's asyncio pool.

taskiq-aio-pika has no result backend (results need Redis or another store), so there is
no ``add``.
"""

import os
import time

from aio_pika import ExchangeType
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType

URL = os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE = os.environ.get("BENCH_QUEUE", "bench-taskiq")
PREFETCH = int(os.environ.get("BENCH_PREFETCH", "16"))

broker = AioPikaBroker(
    URL,
    qos=PREFETCH,
    exchange=Exchange(name=QUEUE, type=ExchangeType.DIRECT),
    task_queues=[Queue(name=QUEUE, type=QueueType.CLASSIC, max_priority=10)],
    dead_letter_queue=Queue(name=f"{QUEUE}.dlq", type=QueueType.CLASSIC),
)


@broker.task(task_name="bench.noop")
async def noop() -> None:
    return None


@broker.task(task_name="bench.mark")
async def mark(path: str) -> None:
    now = time.time()
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:  # noqa: ASYNC230 - one tiny write per marker
        out.write(repr(now))
    os.replace(tmp, path)
