"""A chord of many header tasks over two `amqpworker serve` processes.

    python -m bench.chords            # BENCH_CHORD_N=10000 by default

Prints the time from publishing the chord to its body's result, and how many times the
body ran (it must be once). Creates and deletes its own queue.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika

from amqpworker import chord
from tests.integration.sample_app import create_app

URL = os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/")
N = int(os.environ.get("BENCH_CHORD_N", "10000"))
P = "tests.integration.sample_app."


def main() -> None:
    queue = f"bench-chord-{uuid.uuid4().hex[:8]}"
    runs = Path(tempfile.mkdtemp()) / "body-runs"
    env = {**os.environ, "AMQPWORKER_BROKER_URL": URL, "AMQPWORKER_TASK_DEFAULT_QUEUE": queue}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "amqpworker",
                "serve",
                "-A",
                "tests.integration.sample_app",
                "--queues",
                queue,
                "--concurrency",
                "4",
                "--loglevel",
                "WARNING",
            ],
            env=env,
        )
        for _ in range(2)
    ]
    app = create_app(broker_url=URL, task_default_queue=queue)
    try:
        add, body = app.tasks[P + "add"], app.tasks[P + "sum_once"]
        started = time.perf_counter()
        result = chord([add.s(i, i) for i in range(N)], body.s(str(runs))).apply_async()
        published = time.perf_counter()
        value = result.get(timeout=600)
        finished = time.perf_counter()
        assert value == sum(2 * i for i in range(N)), value
        time.sleep(2)  # any duplicate body would have run by now
        body_runs = runs.read_text().count("\n")
        print("| header tasks | workers | publish (s) | to body result (s) | body runs |")
        print("|---|---|---|---|---|")
        print(
            f"| {N} | 2 x concurrency 4 | {published - started:.2f} | "
            f"{finished - started:.2f} | {body_runs} |"
        )
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(30)
        app.close()
        asyncio.run(_delete(queue))


async def _delete(queue: str) -> None:
    from amqpworker.delay import landing_queue

    connection = await aio_pika.connect(URL)
    for name in (queue, f"{queue}.dlq", landing_queue("", queue)):
        channel = await connection.channel()
        await channel.queue_delete(name)
    await connection.close()


if __name__ == "__main__":
    main()
