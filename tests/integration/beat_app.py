"""The app `amqpworker beat` tests run: its entries come from environment variables.

Each test names its own entries (BEAT_TEST_ENTRY, BEAT_TEST_PERIODIC) and queues
(AMQPWORKER_TASK_DEFAULT_QUEUE, AMQPWORKER_BEAT_QUEUE_PREFIX), so tests never share a
schedule. `tick` leaves a file per run in BEAT_TEST_MARKERS when a worker runs it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from amqpworker import App

app = App("beat_app")


@app.task
def tick(entry: str, marker_dir: str | None = None) -> str:
    if marker_dir:
        folder = Path(marker_dir)
        runs = len(list(folder.glob(f"{entry}.run*"))) + 1
        (folder / f"{entry}.run{runs}").write_text(str(os.getpid()))
    return entry


_markers = os.environ.get("BEAT_TEST_MARKERS")
_entry = os.environ.get("BEAT_TEST_ENTRY")
if _entry:
    app.conf.beat_schedule = {
        _entry: {
            "task": tick.name,
            "schedule": float(os.environ.get("BEAT_TEST_INTERVAL", "1")),
            "args": [_entry],
            "kwargs": {"marker_dir": _markers},
        }
    }
_broken = os.environ.get("BEAT_TEST_BROKEN_ENTRY")
if _broken:  # its exchange does not exist
    app.conf.beat_schedule[_broken] = {
        "task": tick.name,
        "schedule": 1.0,
        "args": [_broken],
        "options": {"exchange": f"{_broken}-missing-exchange", "routing_key": "x"},
    }


@app.on_after_configure.connect
def add_periodic(sender: App, **kwargs: Any) -> None:
    name = os.environ.get("BEAT_TEST_PERIODIC")
    if name:
        sender.add_periodic_task(1.0, tick.s(name, marker_dir=_markers), name=name)
