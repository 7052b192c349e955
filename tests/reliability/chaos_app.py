"""Tasks the reliability tests run under `amqpworker serve -A tests.reliability.chaos_app`.

Every run leaves one line ``<key> <pid>`` in ``<marker_dir>/runs.log`` (one small
``O_APPEND`` write, atomic between processes), so a test counts what ran, what ran twice
and what never ran, across worker kills and broker restarts.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

from amqpworker import App

app = App("chaos")


def record_run(marker_dir: str, key: str) -> None:
    line = f"{key} {os.getpid()}\n".encode()
    fd = os.open(Path(marker_dir) / "runs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def runs(marker_dir: str) -> Counter[str]:
    """How many times each key ran."""
    path = Path(marker_dir) / "runs.log"
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines() if line.strip())


@app.task
def record(marker_dir: str, key: str, seconds: float = 0.0) -> str:
    """Sleep ``seconds`` (a task in flight when the worker dies), then record the run."""
    if seconds:
        time.sleep(seconds)
    record_run(marker_dir, key)
    return key


@app.task
async def arecord(marker_dir: str, key: str, seconds: float = 0.0) -> str:
    if seconds:
        await asyncio.sleep(seconds)
    record_run(marker_dir, key)
    return key


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def echo(value: object) -> object:
    return value
