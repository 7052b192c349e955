"""Delayed tasks survive a broker restart: each runs exactly once, and on time.

"On time" while a broker restarts: a task due before the restart runs within 2 s of its
time; any later task within 2 s plus the time the broker was away (a message due to move
between delay levels while there is no broker moves when it is back, so it is late by up
to the outage even when it is due well after it). Never early, never twice, never lost.

1,000 tasks with countdowns spread over 5-30 s go into the delay topology of a PRIVATE
RabbitMQ node (the test restarts it, so it cannot be a shared broker). About 9 s after
publishing, the node is stopped and started again on the same data directory; the
worker and the publishing client reconnect by themselves. Every task records its run in
the test process (the worker runs in-process), so the check does not depend on result
messages, which a restart can lose along with the caller's exclusive reply queue.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import aio_pika
import pytest

from amqpworker import App
from amqpworker.wire.revocations import REVOCATIONS_QUEUE

from .rabbit_node import RabbitNode, node_fixture

TASKS = 1000
SHORTEST, LONGEST = 5.0, 30.0
RESTART_AFTER = 9.0  # seconds after publishing
ON_TIME = 2.0  # a task runs at most this long after its time
SLACK = 0.05  # clock slack for "not early": caller and worker share the host's clock
SETTLE = 3.0  # after the last first run, how long to keep looking for second runs

rabbit = node_fixture()


@dataclass(frozen=True)
class Run:
    label: int
    intended: float  # unix time the caller meant: time before publishing + countdown
    eta: float  # the eta in the message (computed from the countdown while publishing)
    ran: float
    redelivered: bool


@dataclass
class Durable:
    app: App
    queue: str
    runs: list[Run]
    lock: threading.Lock


@pytest.fixture
def durable(rabbit: RabbitNode) -> Iterator[Durable]:
    """An app on the private node whose one task records each run in ``runs``."""
    queue = f"durability-{uuid.uuid4().hex[:8]}"
    app = App("durability", broker=rabbit.url, task_default_queue=queue)
    runs: list[Run] = []
    lock = threading.Lock()

    @app.task(bind=True, name="durability.due")
    def due(self, label: int, intended: float) -> float:  # type: ignore[no-untyped-def]
        now = time.time()
        request = self.request
        eta = dt.datetime.fromisoformat(request.eta).timestamp() if request.eta else float("nan")
        with lock:
            runs.append(
                Run(
                    label=label,
                    intended=intended,
                    eta=eta,
                    ran=now,
                    redelivered=bool(request.delivery_info.get("redelivered")),
                )
            )
        return now

    yield Durable(app, queue, runs, lock)
    app.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _queue_counts(node: RabbitNode) -> dict[str, tuple[int, int]]:
    """Every queue on the private node: (ready, unacked)."""
    try:
        text = node.ctl(
            "list_queues", "name", "messages_ready", "messages_unacknowledged", "--quiet"
        )
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        return {"(rabbitmqctl failed)": (-1, -1), str(exc)[:200]: (-1, -1)}
    counts = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].isdigit():
            counts[parts[0]] = (int(parts[1]), int(parts[2]))
    return counts


def _labels_waiting_in(node: RabbitNode, queues: list[str]) -> list[int]:
    """The task labels of messages still in ``queues`` (read and removed: the node is ours)."""

    async def take() -> list[int]:
        connection = await aio_pika.connect(node.url, timeout=10)
        labels = []
        try:
            channel = await connection.channel()
            for name in queues:
                queue = await channel.declare_queue(name, passive=True)
                while (message := await queue.get(no_ack=True, fail=False)) is not None:
                    labels.append(json.loads(message.body)[0][0])
        finally:
            await connection.close()
        return labels

    return asyncio.run(take())


def test_delayed_tasks_survive_a_restart_and_run_once_on_time(
    rabbit: RabbitNode, durable: Durable, start_worker
) -> None:
    app, runs = durable.app, durable.runs
    due = app.tasks["durability.due"]
    worker = start_worker(app)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    countdowns = [rng.uniform(SHORTEST, LONGEST) for _ in range(TASKS)]

    sent = time.time()
    app.send_many(
        [
            (due, (label, sent + countdown), {}, {"countdown": countdown})
            for label, countdown in enumerate(countdowns)
        ]
    )
    published = time.time()
    time.sleep(max(0.0, sent + RESTART_AFTER - time.time()))
    restart_called = time.time()
    rabbit.restart()
    # From the server process's exit to its AMQP port accepting again: no broker.
    down, up = rabbit.down_since, rabbit.serving_since
    assert down is not None
    assert up is not None

    # Bounded: the last task is due at sent + 30 s; a broken delay shows as missing runs.
    deadline = sent + LONGEST + ON_TIME + 30
    while time.time() < deadline:
        with durable.lock:
            if len({run.label for run in runs}) == TASKS:
                break
        time.sleep(0.05)
    time.sleep(SETTLE)  # a second run of anything would show up by now
    with durable.lock:
        done = list(runs)
    left_on_broker = {
        name: counts
        for name, counts in _queue_counts(rabbit).items()
        # The revocations stream is a log every worker reads, never emptied by consumers.
        if counts != (0, 0) and name != REVOCATIONS_QUEUE
    }
    # At-least-once dead-lettering may leave a second copy of a message that moved between
    # delay levels as the broker stopped: allowed, if it is a copy of a task that ran
    # (a worker that ran the task acks such a copy without running it again).
    waiting = [name for name in left_on_broker if name.startswith("amqpworker.delay.")]
    copies = _labels_waiting_in(rabbit, waiting) if waiting else []
    ran_labels = {run.label for run in runs}
    strays = [label for label in copies if label not in ran_labels]
    left_on_broker = {k: v for k, v in left_on_broker.items() if k not in waiting}

    def at(moment: float) -> str:
        return f"{moment - sent:+.3f}s"

    ran_count = Counter(run.label for run in done)
    missing = sorted(set(range(TASKS)) - set(ran_count))
    twice = sorted(label for label, count in ran_count.items() if count > 1)
    first = {}
    for run in sorted(done, key=lambda r: r.ran):
        first.setdefault(run.label, run)
    lateness = [run.ran - run.intended for run in first.values()]
    lateness_eta = [run.ran - run.eta for run in first.values()]
    early = [run for run in done if run.ran < min(run.intended, run.eta) - SLACK]
    # The broker stops serving somewhere between the restart call and its exit.
    outage_bound = up - restart_called

    def allowed(run: Run) -> float:
        return ON_TIME + (outage_bound if run.intended >= restart_called else 0.0)

    late = [run for run in done if run.ran > run.intended + allowed(run)]
    outage = (
        f"restart called at {at(restart_called)}; node gone at {at(down)}, "
        f"serving again at {at(up)} ({up - down:.2f}s without a broker)"
    )
    summary = [
        f"seed {seed}; published {TASKS} in {published - sent:.2f}s; {outage}",
        f"runs {len(done)}, distinct {len(ran_count)}, missing {len(missing)}, "
        f"twice {len(twice)}, early {len(early)}, late {len(late)} (beyond {ON_TIME}s, "
        f"plus {outage_bound:.2f}s for tasks due after the restart call)",
    ]
    if lateness:
        summary.append(
            "lateness vs intended time: "
            f"min {min(lateness):.3f}s p50 {_percentile(lateness, 50):.3f}s "
            f"p99 {_percentile(lateness, 99):.3f}s max {max(lateness):.3f}s; "
            f"vs message eta: min {min(lateness_eta):.3f}s "
            f"p99 {_percentile(lateness_eta, 99):.3f}s max {max(lateness_eta):.3f}s"
        )
        # Where lateness comes from: a message that should have moved from one delay
        # level to the next while there was no broker moves when the node is back, so it
        # is late by up to the outage even when it is due well after it.
        by_second: dict[int, list[float]] = {}
        for run in first.values():
            by_second.setdefault(int(run.intended - sent), []).append(run.ran - run.intended)
        worst = [
            f"+{second}s: {max(values):.2f}s (n={len(values)})"
            for second, values in sorted(by_second.items())
            if max(values) > ON_TIME
        ]
        summary.append(f"max lateness by due second, where over {ON_TIME}s: {worst or 'none'}")

    summary.append(f"worker stats: {worker.worker.stats}")
    summary.append(f"non-empty queues on the node: {left_on_broker or 'none'}")
    summary.append(f"copies of tasks that ran, still in the delay levels: {len(copies)}")
    print("\n".join(summary))

    problems = []
    if missing:
        problems.append(f"{len(missing)} never ran: labels {missing[:20]}")
    if twice:
        problems.append(f"{len(twice)} ran more than once:")
        for label in twice[:20]:
            copies = sorted((r for r in done if r.label == label), key=lambda r: r.ran)
            problems.append(
                f"  #{label} due {at(copies[0].eta)}: "
                + ", ".join(f"ran {at(r.ran)} (redelivered={r.redelivered})" for r in copies)
            )
    if early:
        problems.append(f"{len(early)} ran early:")
        problems += [
            f"  #{r.label} due {at(r.intended)} (eta {at(r.eta)}) ran {at(r.ran)}"
            for r in early[:20]
        ]
    if late:
        problems.append(f"{len(late)} ran later than allowed; the first 40 by due time:")
        problems += [
            f"  #{r.label} due {at(r.intended)} ran {at(r.ran)}: {r.ran - r.intended:.3f}s late"
            f" (redelivered={r.redelivered})"
            for r in sorted(late, key=lambda r: r.intended)[:40]
        ]
    if left_on_broker:
        problems.append(f"messages left on the broker: {left_on_broker}")
    if strays:
        problems.append(f"messages in the delay levels of tasks that never ran: {strays[:20]}")
    assert not problems, "\n".join(summary + problems)
