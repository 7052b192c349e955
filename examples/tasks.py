"""The example app: start a worker with `amqpworker serve -A examples.tasks`."""

import asyncio
import os
import time

from amqpworker import App
from amqpworker.log import get_task_logger

app = App(
    "examples",
    broker=os.environ.get("AMQPWORKER_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
)
logger = get_task_logger(__name__)


@app.task
def add(x, y):
    return x + y


@app.task
def div(x, y):
    return x / y


@app.task(bind=True)
def count_to(self, n):
    """Report progress as it goes; callers see it with get(on_message=...)."""
    for i in range(1, n + 1):
        time.sleep(0.05)
        self.update_state(state="PROGRESS", meta={"current": i, "total": n})
        logger.info("counted", current=i)
    return n


@app.task
async def slow_hello(name, delay=0.1):
    await asyncio.sleep(delay)
    return f"hello {name}"
