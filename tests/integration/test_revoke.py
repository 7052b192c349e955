"""Revoke that holds: a revoked task never starts, wherever and whenever it turns up.

Revocations live in the broker's revocations stream, so they hold for a worker that
was killed and started again, and for messages waiting in the delay levels.
"""

from __future__ import annotations

import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from amqpworker import App
from amqpworker.exceptions import TaskRevokedError

from .conftest import run_cli, wait_for

P = "tests.integration.sample_app."


def _name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"


def _runs(folder: Path, prefix: str) -> set[str]:
    return {path.name.split(".run")[0] for path in folder.glob(f"{prefix}*.run*")}


def test_revokes_hold_across_a_killed_and_restarted_worker(app: App, serve, tmp_path: Path) -> None:
    worker = serve("-n", _name("revoke")).wait_consuming()
    results = [
        app.send_task(P + "sleep_then_return", (str(tmp_path), f"t{i:03}", 0), countdown=5)
        for i in range(100)
    ]
    for result in results[:25]:
        result.revoke()
    app.control.revoke([result.id for result in results[25:50]])

    worker.process.send_signal(signal.SIGKILL)
    worker.wait(10)
    serve("-n", _name("revoke-again")).wait_consuming()

    for result in results[50:]:
        assert result.get(timeout=30).startswith("t")
    for result in results[:50]:
        with pytest.raises(TaskRevokedError):
            result.get(timeout=30)
        assert result.state == "REVOKED"
    ran = _runs(tmp_path, "t")
    assert ran == {f"t{i:03}" for i in range(50, 100)}


def test_a_task_revoked_behind_a_thousand_others_never_runs(
    app: App, serve, tmp_path: Path
) -> None:
    app.send_many([(P + "label", ("filler",), {}, {"ignore_result": True})] * 1000)
    target = app.send_task(P + "sleep_then_return", (str(tmp_path), "target", 0))
    last = app.send_task(P + "label", ("last",))
    target.revoke()
    serve("-n", _name("behind"), "--concurrency", "4").wait_consuming()

    assert last.get(timeout=60) == "last"
    with pytest.raises(TaskRevokedError):
        target.get(timeout=30)
    assert not list(tmp_path.glob("target.run*"))


@pytest.mark.parametrize("task", ["busy", "abusy"])
def test_terminate_stops_a_running_task_and_reports_revoked(
    app: App, serve, tmp_path: Path, task: str
) -> None:
    name = _name("terminate")
    pool = "asyncio" if task == "abusy" else "threads"
    serve("-n", name, "--pool", pool).wait_consuming()
    running = app.send_task(P + task, (str(tmp_path), "long", 30))
    wait_for(lambda: bool(list(tmp_path.glob("long.run*"))), 30, "the task to start")

    started = time.monotonic()
    replies = app.control.revoke(
        running.id, destination=[name], terminate=True, reply=True, timeout=5
    )
    with pytest.raises(TaskRevokedError):
        running.get(timeout=10)
    assert time.monotonic() - started < 2.0
    assert replies is not None
    # The stream may bring the revoke first; the reply then finds the task stopped.
    assert any("flagged as revoked" in reply[name]["ok"] for reply in replies if name in reply)

    # The worker goes on serving, its pool whole.
    assert app.send_task(P + "add", (2, 3)).get(timeout=10) == 5


def test_inspect_revoked_lists_the_ids(app: App, serve) -> None:
    name = _name("revoked")
    serve("-n", name).wait_consuming()
    task_id = str(uuid.uuid4())
    app.control.revoke(task_id)
    wait_for(
        lambda: (
            task_id in ((app.control.inspect([name], timeout=2).revoked() or {}).get(name) or [])
        ),
        10,
        "the worker to list the revoked id",
    )


@pytest.mark.parametrize("bad", ["", "two words", "x" * 300])
def test_a_revoke_of_something_that_is_not_a_task_id_is_refused(app: App, bad: str) -> None:
    with pytest.raises(ValueError, match="not a task id"):
        app.control.revoke(bad)


def test_a_bad_signal_is_refused(app: App) -> None:
    with pytest.raises(ValueError, match="not a signal"):
        app.control.revoke(str(uuid.uuid4()), terminate=True, signal="SIGNOPE")


def test_a_bad_revoke_command_gets_an_error_and_the_worker_keeps_serving(app: App, serve) -> None:
    name = _name("bad-revoke")
    serve("-n", name).wait_consuming()
    replies = app.control.broadcast(
        "revoke", {"task_id": ["not an id"]}, destination=[name], reply=True, timeout=5
    )
    assert replies is not None
    assert "not a task id" in replies[0][name]["error"]
    assert app.control.inspect([name], timeout=5).ping() == {name: {"ok": "pong"}}


def test_cli_revoke_stores_the_revoke_and_checks_its_input(
    app: App, serve, broker_url: str, tmp_path: Path
) -> None:
    name = _name("cli")
    task_id = str(uuid.uuid4())
    revoked = run_cli("control", "revoke", task_id, "--broker", broker_url, "-d", name)
    assert revoked.returncode == 1  # nobody named `name` runs yet to reply
    serve("-n", name).wait_consuming()  # a worker that starts later still holds it
    result = app.send_task(P + "sleep_then_return", (str(tmp_path), "cli", 0), task_id=task_id)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=30)
    bad = run_cli("control", "revoke", "not an id", "--broker", broker_url)
    assert bad.returncode == 2
    assert "not a task id" in bad.stderr
    misplaced = run_cli("control", "shutdown", "--terminate", "--broker", broker_url)
    assert misplaced.returncode == 2
