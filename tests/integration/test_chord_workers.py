"""Chords across real worker processes, including workers killed with SIGKILL mid-chord."""

from __future__ import annotations

import time
from pathlib import Path

from amqpworker import App, chord
from amqpworker.exceptions import TimeoutError as ResultTimeout

from .conftest import wait_for

P = "tests.integration.sample_app."


def test_chord_of_a_hundred_over_four_worker_processes(app: App, serve) -> None:
    for _ in range(4):
        serve("--concurrency", "2").wait_consuming()
    add, tsum = app.tasks[P + "add"], app.tasks[P + "tsum"]
    assert chord(add.s(i, i) for i in range(100))(tsum.s()).get(timeout=60) == 9900


def test_body_runs_once_while_workers_are_killed(
    app: App, serve, queue: str, admin, tmp_path: Path
) -> None:
    runs = tmp_path / "body-runs"
    workers = [serve("--concurrency", "4").wait_consuming() for _ in range(2)]
    slow_add, body = app.tasks[P + "slow_add"], app.tasks[P + "sum_once"]
    header = [slow_add.s(i, i, 0.01) for i in range(1000)]
    result = chord(header, body.s(str(runs))).apply_async()

    kills = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            result.get(timeout=0.5)  # wait for the body, half a second at a time
            break
        except ResultTimeout:
            pass
        victim = kills % 2
        workers[victim].process.kill()  # SIGKILL: no cleanup, unacked work comes back
        workers[victim].wait(10)
        workers[victim] = serve("--concurrency", "4").wait_consuming()
        kills += 1
    assert result.get(timeout=60) == sum(2 * i for i in range(1000))
    assert kills >= 2, "the chord finished before workers were killed twice"
    # Let every redelivered header task and join finish, then count body runs.
    wait_for(lambda: admin.message_count(queue) == 0, 60, "the queue to drain")
    assert runs.read_text().count("\n") == 1
