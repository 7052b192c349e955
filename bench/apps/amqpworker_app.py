"""The benchmark's amqpworker app: `amqpworker serve -A bench.apps.amqpworker_app`.

- ``noop``: does nothing and sends no result (``ignore_result``), so the drain measures
  consume + decode + dispatch + ack, the framework's own cost per message.
- ``mark(path)``: writes ``time.time()`` to ``path`` (atomically); a start marker and an end
  marker around the no-ops time the drain inside the worker, excluding start-up.
- ``add(x, y)``: the round-trip task; its result comes back over the RPC reply queue.
"""

import os
import time

from amqpworker import App

app = App("bench", broker=os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/"))


@app.task(ignore_result=True)
def noop() -> None:
    return None


@app.task(ignore_result=True)
def mark(path: str) -> None:
    now = time.time()
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        out.write(repr(now))
    os.replace(tmp, path)


@app.task
def add(x: int, y: int) -> int:
    return x + y
