"""Time limits: a soft limit is an exception the task can catch; a hard one stops it.

Each pool stops a task its own way (a signal in a child process, an exception raised in
a thread, a cancel of a coroutine); for the caller it is the same: the task's cleanup
value at the soft limit, FAILURE with TimeLimitExceeded at the hard one.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from amqpworker import App
from amqpworker.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from .conftest import run_cli

P = "tests.integration.sample_app."


def _name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"


@pytest.mark.parametrize(
    ("pool", "task", "args"),
    [
        ("threads", "nap", (5, 0.05)),  # a thread sees the exception between sleeps
        ("asyncio", "anap", (5,)),
        ("process", "nap", (5,)),  # one sleep of 5 s: the signal interrupts it
    ],
)
def test_a_soft_limit_lets_the_task_clean_up_and_return(
    app: App, serve, pool: str, task: str, args: tuple[float, ...]
) -> None:
    serve("-n", _name("soft"), "--pool", pool, "--concurrency", "2").wait_consuming()

    result = app.send_task(P + task, args, soft_time_limit=1).get(timeout=30)

    assert result["cleaned_up_after"] is not None
    assert 0.9 < result["cleaned_up_after"] < 4


@pytest.mark.parametrize(("pool", "task"), [("threads", "stuck"), ("asyncio", "astuck")])
def test_a_hard_limit_fails_the_task_once_and_the_worker_goes_on(
    app: App, serve, tmp_path: Path, pool: str, task: str
) -> None:
    worker = serve("-n", _name("hard"), "--pool", pool, "--concurrency", "1").wait_consuming()
    marker = tmp_path / "stuck"

    over = app.send_task(
        P + task, (str(tmp_path), "stuck", 30), {"marker": str(marker)}, time_limit=1
    )

    with pytest.raises(TimeLimitExceeded, match="hard time limit"):
        over.get(timeout=20)
    assert over.state == "FAILURE"
    assert marker.with_suffix(".on_failure").read_text() == "TimeLimitExceeded"
    # The only slot is free again (a stuck thread was replaced), and nothing ran twice.
    assert app.send_task(P + "add", (2, 2)).get(timeout=10) == 4
    assert len(list(tmp_path.glob("stuck.run*"))) == 1
    assert "task stopped at its hard time limit" in worker.output


def test_time_limits_from_settings_and_remote_control(app: App, serve, broker_url: str) -> None:
    name = _name("control")
    worker = serve("-n", name, env={"AMQPWORKER_TASK_TIME_LIMIT": "300"}).wait_consuming()
    assert "hard time limits with the threads pool cannot stop a thread" in worker.output
    unlimited = app.send_task(P + "nap", (1.5, 0.05)).get(timeout=20)
    assert unlimited["cleaned_up_after"] is None

    [reply] = app.control.time_limit(
        P + "nap", soft=0.5, destination=[name], reply=True, timeout=5
    ) or [{}]
    assert reply[name] == {"ok": f"time limits of {P + 'nap'!r} set successfully"}
    limited = app.send_task(P + "nap", (5, 0.05)).get(timeout=20)
    assert 0.4 < limited["cleaned_up_after"] < 4

    by_cli = run_cli(
        "control", "time_limit", P + "nap", "0", "0", "--broker", broker_url, "-d", name
    )
    assert by_cli.returncode == 0, by_cli.stdout + by_cli.stderr
    assert app.send_task(P + "nap", (1.5, 0.05)).get(timeout=20)["cleaned_up_after"] is None
    refused = run_cli(
        "control", "time_limit", P + "nap", "soon", "0", "--broker", broker_url, "-d", name
    )
    assert refused.returncode == 1
    assert "soft must be seconds" in refused.stdout


def test_a_soft_limit_the_task_does_not_catch_fails_it(app: App, serve, tmp_path: Path) -> None:
    serve("-n", _name("uncaught"), "--concurrency", "1").wait_consuming()
    result = app.send_task(P + "busy", (str(tmp_path), "busy", 5), soft_time_limit=1)

    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=20)
    assert result.state == "FAILURE"
    assert len(list(tmp_path.glob("busy.run*"))) == 1
