"""Running one task: outcomes, tracebacks, hooks and the request a task sees."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from amqpworker import App, Request, Task
from amqpworker.app.task import current_request
from amqpworker.worker.execution import Outcome, run_async, run_sync


class RecordingTask(Task):
    """Records every hook call; ``fail_in`` names hooks that raise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[Any, ...]] = []
        self.fail_in: set[str] = set()

    def _hook(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.fail_in:
            raise RuntimeError(f"{name} hook broke")

    def on_success(
        self, retval: Any, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> None:
        self._hook("on_success", retval, task_id, args, kwargs)

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        einfo: str,
    ) -> None:
        self._hook("on_failure", exc, task_id, args, kwargs, einfo)

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        einfo: str | None,
    ) -> None:
        self._hook("after_return", status, retval, task_id, args, kwargs, einfo)


def request_for(task: Task, *args: Any, **kwargs: Any) -> Request:
    return Request(id="task-1", task=task.name, args=args, kwargs=kwargs, is_eager=False)


@pytest.fixture
def div(app: App) -> RecordingTask:
    @app.task(base=RecordingTask, name="app.div")
    def divide(x: float, y: float = 1) -> float:
        return x / y

    assert isinstance(divide, RecordingTask)
    return divide


@pytest.fixture
def adiv(app: App) -> RecordingTask:
    @app.task(base=RecordingTask, name="app.adiv")
    async def divide(x: float, y: float = 1) -> float:
        await asyncio.sleep(0)
        return x / y

    assert isinstance(divide, RecordingTask)
    return divide


async def run(task: Task, request: Request) -> Outcome:
    if task.is_coroutine:
        # The worker runs each delivery in a task of its own; so do we, so the request
        # set by run_async stays in that task's context.
        return await asyncio.create_task(run_async(task, request))
    return run_sync(task, request)


@pytest.fixture(params=["sync", "async"])
def task(request: pytest.FixtureRequest, div: RecordingTask, adiv: RecordingTask) -> RecordingTask:
    return div if request.param == "sync" else adiv


async def test_success_outcome_and_hooks(task: RecordingTask) -> None:
    request = request_for(task, 6, y=3)

    outcome = await run(task, request)

    assert outcome == Outcome("SUCCESS", 2.0)
    assert task.calls == [
        ("on_success", 2.0, "task-1", (6,), {"y": 3}),
        ("after_return", "SUCCESS", 2.0, "task-1", (6,), {"y": 3}, None),
    ]


async def test_failure_outcome_with_traceback_and_hooks(
    task: RecordingTask, capsys: pytest.CaptureFixture[str]
) -> None:
    request = request_for(task, 1, 0)

    outcome = await run(task, request)

    assert outcome.status == "FAILURE"
    assert isinstance(outcome.exception, ZeroDivisionError)
    assert outcome.value is None
    assert outcome.traceback is not None
    assert outcome.traceback.startswith("Traceback (most recent call last):")
    assert "in divide" in outcome.traceback
    assert "ZeroDivisionError: division by zero" in outcome.traceback
    assert task.calls == [
        ("on_failure", outcome.exception, "task-1", (1, 0), {}, outcome.traceback),
        ("after_return", "FAILURE", outcome.exception, "task-1", (1, 0), {}, outcome.traceback),
    ]
    assert "task failed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1, 2, 3), {}), ((1,), {"z": 2})],
    ids=["missing", "too-many", "unknown-kwarg"],
)
async def test_wrong_arguments_are_a_failure_not_a_crash(
    task: RecordingTask, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    outcome = await run(task, request_for(task, *args, **kwargs))

    assert outcome.status == "FAILURE"
    assert isinstance(outcome.exception, TypeError)
    assert "TypeError" in (outcome.traceback or "")
    assert [call[0] for call in task.calls] == ["on_failure", "after_return"]


@pytest.mark.parametrize("hook", ["on_success", "after_return"])
async def test_raising_hook_does_not_change_a_success(
    task: RecordingTask, hook: str, capsys: pytest.CaptureFixture[str]
) -> None:
    task.fail_in = {hook}

    outcome = await run(task, request_for(task, 4, 2))

    assert outcome == Outcome("SUCCESS", 2.0)
    assert "a task hook raised" in capsys.readouterr().out


@pytest.mark.parametrize("hook", ["on_failure", "after_return"])
async def test_raising_hook_does_not_change_a_failure(
    task: RecordingTask, hook: str, capsys: pytest.CaptureFixture[str]
) -> None:
    task.fail_in = {hook}

    outcome = await run(task, request_for(task, 4, 0))

    assert outcome.status == "FAILURE"
    assert isinstance(outcome.exception, ZeroDivisionError)
    assert "a task hook raised" in capsys.readouterr().out


@pytest.mark.parametrize(("hook", "y"), [("on_success", 2), ("on_failure", 0)])
async def test_after_return_runs_even_when_an_earlier_hook_raised(
    task: RecordingTask, hook: str, y: int, capsys: pytest.CaptureFixture[str]
) -> None:
    task.fail_in = {hook}

    await run(task, request_for(task, 4, y))

    assert [call[0] for call in task.calls] == [hook, "after_return"]


async def test_self_request_inside_the_run_is_the_given_request(app: App) -> None:
    seen: list[Request] = []

    @app.task(bind=True)
    def sync_job(self: Task) -> None:
        seen.append(self.request)

    @app.task(bind=True)
    async def async_job(self: Task) -> None:
        seen.append(self.request)

    sync_request = request_for(sync_job)
    async_request = request_for(async_job)

    await run(sync_job, sync_request)
    await run(async_job, async_request)

    assert seen[0] is sync_request
    assert seen[1] is async_request
    assert seen[0].is_eager is False
    assert current_request.get() is None  # nothing leaks into the caller
    assert sync_job.request.is_eager is True


async def test_request_is_visible_in_a_worker_thread(app: App) -> None:
    @app.task(bind=True)
    def job(self: Task) -> str | None:
        return self.request.id

    outcome = await asyncio.to_thread(run_sync, job, request_for(job))

    assert outcome.value == "task-1"


def test_outcome_as_result_message(div: RecordingTask) -> None:
    request = request_for(div, 1, 0)

    failed = run_sync(div, request).as_result(request)
    succeeded = run_sync(div, request_for(div, 3)).as_result(request)

    assert failed.task_id == "task-1"
    assert failed.task_name == "app.div"
    assert failed.status == "FAILURE"
    assert failed.result == {
        "exc_type": "ZeroDivisionError",
        "exc_module": "builtins",
        "exc_message": ["division by zero"],
    }
    assert failed.traceback is not None
    assert "ZeroDivisionError" in failed.traceback
    assert failed.date_done is not None
    assert (succeeded.status, succeeded.result, succeeded.traceback) == ("SUCCESS", 3.0, None)
