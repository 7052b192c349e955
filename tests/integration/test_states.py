"""STARTED, PROGRESS and ignored results, as a caller sees them."""

from __future__ import annotations

import pytest

from amqpworker import App, states
from amqpworker.exceptions import TimeoutError as AmqpTimeoutError


def test_progress_updates_arrive_in_order_then_success(app: App, start_worker) -> None:
    start_worker(app)
    seen: list[tuple[str, object]] = []
    result = app.tasks["tests.integration.sample_app.progress"].delay(5)
    value = result.get(
        timeout=10, on_message=lambda body: seen.append((body["status"], body["result"]))
    )
    assert value == 5
    assert seen == [
        *[(states.PROGRESS, {"step": step, "of": 5}) for step in range(1, 6)],
        (states.SUCCESS, 5),
    ]


async def test_progress_from_a_coroutine_task(app: App, start_worker) -> None:
    start_worker(app)
    seen: list[str] = []
    result = await app.tasks["tests.integration.sample_app.aprogress"].adelay(3)
    assert await result.aget(timeout=10, on_message=lambda body: seen.append(body["status"])) == 3
    assert seen == [states.PROGRESS] * 3 + [states.SUCCESS]
    await app.aclose()


def test_state_and_info_show_progress(app: App, start_worker) -> None:
    start_worker(app)
    result = app.tasks["tests.integration.sample_app.progress"].delay(2)
    result.get(timeout=10)
    assert result.state == states.SUCCESS
    assert result.info == 2


def test_track_started_sends_started_first(app: App, start_worker) -> None:
    start_worker(app)
    seen: list[str] = []
    result = app.tasks["tests.integration.sample_app.tracked"].delay()
    assert result.get(timeout=10, on_message=lambda body: seen.append(body["status"])) == "done"
    assert seen == [states.STARTED, states.SUCCESS]
    assert result.started_at is not None


def test_ignore_result_sends_nothing_back(app: App, start_worker, tmp_path) -> None:
    start_worker(app)
    path = tmp_path / "touched"
    result = app.tasks["tests.integration.sample_app.touch"].delay(str(path))
    # The task runs, but no state ever comes back.
    marker_task = app.tasks["tests.integration.sample_app.add"].delay(0, 0)
    marker_task.get(timeout=10)
    with pytest.raises(AmqpTimeoutError):
        result.get(timeout=0.5)
    assert path.read_text() == "ran"
    assert result.state == states.PENDING
