"""Tasks: registration, names, options, binding, local calls and base classes."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from amqpworker import App, ImproperlyConfigured, Request, Task
from amqpworker.exceptions import DuplicateTaskError
from amqpworker.wire import TaskMessage


def test_decorator_without_parentheses(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert isinstance(add, Task)
    assert add.name == f"{__name__}.add"
    assert app.tasks == {add.name: add}


def test_decorator_with_parentheses_and_options(app: App) -> None:
    @app.task(queue="math", priority=5, max_retries=7)
    def mul(x: int, y: int) -> int:
        return x * y

    assert mul.name == f"{__name__}.mul"
    assert (mul.queue, mul.priority, mul.max_retries) == ("math", 5, 7)
    assert app.tasks[mul.name] is mul


def test_explicit_name(app: App) -> None:
    @app.task(name="task.tasks.add")
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == "task.tasks.add"
    assert list(app.tasks) == ["task.tasks.add"]


def _function_in_main() -> Any:
    def job() -> str:
        return "ran"

    job.__module__ = "__main__"
    return job


def test_name_uses_main_when_module_is_dunder_main() -> None:
    app = App("myapp")

    job = app.task(_function_in_main())

    assert job.name == "myapp.job"


def test_name_keeps_dunder_main_when_app_has_no_main() -> None:
    app = App()

    job = app.task(_function_in_main())

    assert job.name == "__main__.job"


def test_task_keeps_function_metadata(app: App) -> None:
    @app.task
    def documented() -> None:
        """Does a documented thing."""

    assert documented.__doc__ == "Does a documented thing."
    assert documented.__module__ == __name__
    assert documented.__wrapped__ is documented.fun
    assert documented.app is app


def test_registry_holds_every_task(app: App) -> None:
    @app.task
    def one() -> int:
        return 1

    @app.task(name="custom.two")
    def two() -> int:
        return 2

    assert app.tasks == {f"{__name__}.one": one, "custom.two": two}


def test_duplicate_name_is_an_error(app: App) -> None:
    @app.task(name="dup")
    def first() -> int:
        return 1

    with pytest.raises(DuplicateTaskError, match="'dup' is already registered"):

        @app.task(name="dup")
        def second() -> int:
            return 2

    assert app.tasks["dup"] is first


def test_same_default_name_twice_is_an_error(app: App) -> None:
    def make() -> Any:
        def job() -> None:
            return None

        return job

    app.task(make())

    with pytest.raises(DuplicateTaskError, match="pass name="):
        app.task(make())


def test_same_name_in_two_apps_is_fine() -> None:
    def job() -> None:
        return None

    first, second = App("one"), App("two")

    assert first.task(job).name == second.task(job).name


def test_unknown_task_option_is_improperly_configured(app: App) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"task 'broken': unknown option\(s\) retires"):

        @app.task(name="broken", retires=3)
        def broken() -> None:
            return None

    assert "broken" not in app.tasks


def test_base_must_be_a_task_subclass(app: App) -> None:
    with pytest.raises(ImproperlyConfigured, match="base= must be a Task subclass"):

        @app.task(base=dict)  # type: ignore[arg-type]
        def job() -> None:
            return None


# Binding and requests.


def test_bind_passes_the_task_and_an_eager_request(app: App) -> None:
    seen: list[tuple[Task, Request]] = []

    @app.task(bind=True)
    def bound(self: Task, x: int) -> int:
        seen.append((self, self.request))
        return x * 2

    assert bound(21) == 42
    ((task, request),) = seen
    assert task is bound
    assert request.is_eager is True
    assert request.id is None
    assert request.args == ()
    assert request.kwargs == {}
    assert request.retries == 0


def test_direct_call_runs_locally_with_args_and_kwargs(app: App) -> None:
    calls: list[tuple[Any, ...]] = []

    @app.task
    def record(a: int, b: int = 0, *, c: int = 0) -> int:
        calls.append((a, b, c))
        return a + b + c

    assert record(1, 2, c=3) == 6
    assert record.run(1) == 1
    assert calls == [(1, 2, 3), (1, 0, 0)]


def test_direct_call_raises_the_task_exception(app: App) -> None:
    @app.task
    def div(x: int, y: int) -> float:
        return x / y

    with pytest.raises(ZeroDivisionError):
        div(1, 0)


# Base classes.


class HookedTask(Task):
    """A user base class with defaults and hooks."""

    queue = "hooked-queue"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.successes: list[Any] = []

    def on_success(
        self, retval: Any, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> None:
        self.successes.append(retval)

    def describe(self) -> str:
        return f"hooked {self.name}"


def test_base_subclass_keeps_its_class_hooks_and_defaults(app: App) -> None:
    @app.task(base=HookedTask)
    def job() -> int:
        return 1

    assert type(job) is HookedTask
    assert job.queue == "hooked-queue"
    assert job.describe() == f"hooked {__name__}.job"
    job.on_success(5, "id", (), {})
    assert job.successes == [5]


def test_task_option_overrides_base_class_default(app: App) -> None:
    @app.task(base=HookedTask, queue="explicit")
    def job() -> int:
        return 1

    assert job.queue == "explicit"
    assert HookedTask.queue == "hooked-queue"


# Coroutine tasks.


async def test_async_task_call_returns_a_coroutine(app: App) -> None:
    @app.task
    async def fetch(x: int) -> int:
        return x + 1

    assert fetch.is_coroutine is True
    pending = fetch(1)
    assert inspect.iscoroutine(pending)
    assert await pending == 2


def test_sync_task_is_not_a_coroutine(app: App) -> None:
    @app.task
    def plain() -> None:
        return None

    assert plain.is_coroutine is False


async def test_bound_async_task_gets_self(app: App) -> None:
    @app.task(bind=True)
    async def whoami(self: Task) -> str:
        return self.name

    assert await whoami() == f"{__name__}.whoami"


# Effective options.


def test_effective_options_fall_back_to_app_settings() -> None:
    app = App(task_ignore_result=True, task_acks_late=False, task_track_started=True)

    @app.task
    def defaults() -> None:
        return None

    @app.task(ignore_result=False, acks_late=True, track_started=False)
    def own() -> None:
        return None

    assert defaults.effective_ignore_result is True
    assert defaults.effective_acks_late is False
    assert defaults.effective_track_started is True
    assert own.effective_ignore_result is False
    assert own.effective_acks_late is True
    assert own.effective_track_started is False


def test_effective_options_follow_later_setting_changes(app: App) -> None:
    @app.task
    def job() -> None:
        return None

    assert job.effective_acks_late is True
    app.conf.task_acks_late = False
    assert job.effective_acks_late is False


def test_a_request_from_a_message_has_every_field_and_nothing_shared() -> None:
    message = TaskMessage(task="t.add", args=[1], kwargs={"y": 2}, parent_id="p", group_id="g")
    first = Request.from_message(message, hostname="w@h")
    second = Request.from_message(message)
    assert first == Request(
        id=message.id,
        task="t.add",
        args=[1],
        kwargs={"y": 2},
        root_id=message.root_id,
        parent_id="p",
        group="g",
        reply_to=message.reply_to,
        correlation_id=message.id,
        headers=message.headers,
        hostname="w@h",
        is_eager=False,
    )
    first.delivery_info["queue"] = "q"  # type: ignore[index]
    assert second.delivery_info == {}
