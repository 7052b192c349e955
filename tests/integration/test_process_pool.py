"""`--pool process`: plain tasks run in child processes that start once and serve many.

A child that dies is replaced and its task reported (or given back to its queue); one
that reaches its task count or memory limit is replaced after its task, losing none.
"""

from __future__ import annotations

import signal
import socket
import uuid
from pathlib import Path

import pytest

from amqpworker import App
from amqpworker.exceptions import TaskRevokedError, TimeLimitExceeded, WorkerLostError

from .conftest import BrokerAdmin, ServeProcess, wait_for

P = "tests.integration.sample_app."


def _name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"


def _children(app: App, name: str) -> list[int]:
    stats = app.control.inspect(destination=[name], timeout=5).stats()
    assert stats is not None
    pids: list[int] = stats[name]["pool"]["processes"]
    return pids


def _process_worker(
    serve, *extra: str, env: dict[str, str] | None = None
) -> tuple[str, ServeProcess]:
    name = _name("process")
    worker = serve("-n", name, "--pool", "process", *extra, env=env).wait_consuming()
    return name, worker


def test_plain_tasks_run_in_children_side_by_side(app: App, serve) -> None:
    name, worker = _process_worker(serve, "--concurrency", "2")
    children = _children(app, name)

    assert app.send_task(P + "add", (2, 2)).get(timeout=20) == 4
    ran_in = app.send_task(P + "spin", (0.1,)).get(timeout=20)
    assert ran_in != worker.process.pid
    assert ran_in in children
    assert app.send_task(P + "ahello", ("loop",)).get(timeout=20) == "hello loop"  # async

    four = [app.send_task(P + "spin_timed", (1.0,)) for _ in range(4)]
    runs = [result.get(timeout=60) for result in four]

    assert {pid for pid, _, _ in runs} == set(children)
    # Two children on four CPU-bound tasks: about twice one task, not four times. Timed
    # by the children's clocks, so a busy machine slows the tasks and the span alike.
    one = sum(end - start for _, start, end in runs) / len(runs)
    span = max(end for _, _, end in runs) - min(start for _, start, _ in runs)
    assert 1.6 * one < span < 2.8 * one, (one, span)


def test_a_hard_limit_kills_the_child_and_the_worker_goes_on(
    app: App, serve, tmp_path: Path
) -> None:
    name, _ = _process_worker(serve, "--concurrency", "1")
    [child] = _children(app, name)
    marker = tmp_path / "stuck"

    over = app.send_task(
        P + "stuck", (str(tmp_path), "stuck", 30), {"marker": str(marker)}, time_limit=1
    )

    with pytest.raises(TimeLimitExceeded, match="hard time limit"):
        over.get(timeout=20)
    assert marker.with_suffix(".on_failure").read_text() == "TimeLimitExceeded"
    assert app.send_task(P + "pid", ()).get(timeout=20) != child  # a new child
    assert len(list(tmp_path.glob("stuck.run*"))) == 1


def test_a_child_that_exits_is_replaced_and_its_task_fails_to_the_dlq(
    app: App, serve, admin: BrokerAdmin, queue: str
) -> None:
    _process_worker(serve, "--concurrency", "2")
    others = [app.send_task(P + "slow_add", (i, i, 0.2)) for i in range(6)]

    lost = app.send_task(P + "exit_now", (1,))

    with pytest.raises(WorkerLostError, match="exit code 1"):
        lost.get(timeout=20)
    assert [result.get(timeout=30) for result in others] == [2 * i for i in range(6)]
    wait_for(lambda: admin.message_count(f"{queue}.dlq") == 1, 10, "the message in the dlq")
    assert app.send_task(P + "add", (1, 1)).get(timeout=20) == 2


def test_with_reject_on_worker_lost_the_task_goes_back_and_runs_again(
    app: App, serve, tmp_path: Path, admin: BrokerAdmin, queue: str
) -> None:
    _process_worker(serve, env={"AMQPWORKER_TASK_REJECT_ON_WORKER_LOST": "true"})

    result = app.send_task(P + "exit_first_time", (str(tmp_path),))

    assert result.get(timeout=30) == "ran again"
    assert len(list(tmp_path.glob("exit_first_time.run*"))) == 2
    assert admin.message_count(f"{queue}.dlq") == 0


def test_max_tasks_per_child_replaces_children_and_loses_nothing(app: App, serve) -> None:
    _process_worker(serve, "--concurrency", "2", "--max-tasks-per-child", "10")

    results = [app.send_task(P + "pid", ()) for _ in range(100)]
    pids = [result.get(timeout=60) for result in results]

    assert len(pids) == 100
    assert len(set(pids)) >= 10


def test_max_memory_per_child_replaces_a_grown_child_and_loses_nothing(app: App, serve) -> None:
    name, _ = _process_worker(serve, "--concurrency", "1", "--max-memory-per-child", "200000")
    small = app.send_task(P + "grow", (1_000,)).get(timeout=20)
    assert app.send_task(P + "pid", ()).get(timeout=20) == small  # under the limit: kept

    grown = app.send_task(P + "grow", (250_000,)).get(timeout=30)  # its result arrives
    after = [app.send_task(P + "pid", ()) for _ in range(5)]

    assert grown == small
    assert {result.get(timeout=30) for result in after} != {grown}
    assert grown not in _children(app, name)


def test_states_revoke_and_a_graceful_stop_with_children(app: App, serve, tmp_path: Path) -> None:
    _, worker = _process_worker(serve, "--concurrency", "2")
    assert app.send_task(P + "progress", (3,)).get(timeout=20) == 3  # states from a child

    doomed = app.send_task(P + "stuck", (str(tmp_path), "doomed", 30))
    wait_for(lambda: bool(list(tmp_path.glob("doomed.run*"))), 20, "the task to start")
    doomed.revoke(terminate=True)
    with pytest.raises(TaskRevokedError):
        doomed.get(timeout=20)

    finishing = app.send_task(P + "sleep_then_return", (str(tmp_path), "last", 2))
    wait_for(lambda: bool(list(tmp_path.glob("last.run*"))), 20, "the last task to start")
    worker.signal(signal.SIGTERM)
    assert finishing.get(timeout=30) == "last"
    assert worker.wait(30) == 0
