"""Results: rebuilding remote exceptions, the ResultHub, and AsyncResult's view of it."""

from __future__ import annotations

import asyncio
import builtins
import gc
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from amqpworker import App, AsyncResult, TaskError
from amqpworker import TimeoutError as AmqpTimeoutError
from amqpworker.app.results import HISTORY_LIMIT, ResultHub, rebuild_exception
from amqpworker.exceptions import ResultLost, TaskRevokedError
from amqpworker.wire import ResultMessage
from amqpworker.wire.results import exception_to_data

WAIT = 5.0  # upper bound for anything that should happen at once


class CustomError(Exception):
    """An importable user exception with two arguments."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(what, code)
        self.what = what
        self.code = code


def msg(task_id: str, status: str, result: Any = None, **extra: Any) -> ResultMessage:
    return ResultMessage(task_id=task_id, status=status, result=result, **extra)


def failure(task_id: str, exc: BaseException, traceback: str = "Traceback...") -> ResultMessage:
    return msg(task_id, "FAILURE", exception_to_data(exc), traceback=traceback)


# rebuild_exception.


def test_rebuild_builtin_exception() -> None:
    exc = rebuild_exception(exception_to_data(ZeroDivisionError("division by zero")))

    assert type(exc) is ZeroDivisionError
    assert exc.args == ("division by zero",)


def test_rebuild_key_error_keeps_args() -> None:
    exc = rebuild_exception(
        {"exc_type": "KeyError", "exc_module": "builtins", "exc_message": ["k"]}
    )

    assert type(exc) is KeyError
    assert exc.args == ("k",)


def test_rebuild_importable_custom_exception() -> None:
    exc = rebuild_exception(exception_to_data(CustomError("disk full", 28)))

    assert type(exc) is CustomError
    assert isinstance(exc, CustomError)
    assert (exc.what, exc.code) == ("disk full", 28)


def test_rebuild_adds_the_remote_traceback_as_a_note() -> None:
    exc = rebuild_exception(exception_to_data(ValueError("x")), "Traceback: line 1")

    assert exc.__notes__ == ["Remote traceback:\nTraceback: line 1"]


def test_rebuild_message_given_as_a_string() -> None:
    exc = rebuild_exception(
        {"exc_type": "ValueError", "exc_module": "builtins", "exc_message": "bad"}
    )

    assert type(exc) is ValueError
    assert exc.args == ("bad",)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (
            {"exc_type": "Boom", "exc_module": "no_such_module_xyz", "exc_message": ["x"]},
            "no_such_module_xyz.Boom: x",
        ),
        (
            {"exc_type": "NoSuchError", "exc_module": "builtins", "exc_message": ["x"]},
            "NoSuchError",
        ),
        ({"exc_type": "SystemExit", "exc_module": "builtins", "exc_message": [1]}, "SystemExit: 1"),
        ({"exc_type": "KeyboardInterrupt", "exc_module": "builtins"}, "KeyboardInterrupt"),
        ({"exc_type": "dict", "exc_module": "builtins", "exc_message": []}, "dict"),
        ({"exc_type": "getcwd", "exc_module": "os", "exc_message": []}, "os.getcwd"),
        ({"exc_type": "path.join", "exc_module": "os", "exc_message": []}, "os.path.join"),
    ],
)
def test_unknown_or_unsafe_types_become_task_error(data: dict[str, Any], named: str) -> None:
    exc = rebuild_exception(data)

    assert type(exc) is TaskError
    assert named in str(exc)
    assert exc.exc_type == named.split(":")[0]


def test_a_result_never_makes_the_caller_import_a_module(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "planted_by_a_result.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(tmp_path / 'imported')!r}).write_text('ran')\n"
        "class Boom(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = {"exc_type": "Boom", "exc_module": "planted_by_a_result", "exc_message": ["x"]}

    exc = rebuild_exception(data)

    assert type(exc) is TaskError
    assert exc.exc_type == "planted_by_a_result.Boom"
    assert not (tmp_path / "imported").exists()
    assert "planted_by_a_result" not in sys.modules


def test_system_exit_is_never_rebuilt_as_itself() -> None:
    exc = rebuild_exception(exception_to_data(SystemExit(3)))

    assert not isinstance(exc, SystemExit)
    assert isinstance(exc, TaskError)
    assert exc.exc_type == "SystemExit"


def test_exception_whose_constructor_refuses_the_args_becomes_task_error() -> None:
    data = {"exc_type": "CustomError", "exc_module": __name__, "exc_message": ["only one"]}

    exc = rebuild_exception(data)

    assert type(exc) is TaskError
    assert str(exc) == f"{__name__}.CustomError: only one"


def test_locally_defined_exception_becomes_task_error() -> None:
    class LocalError(Exception):
        pass

    exc = rebuild_exception(exception_to_data(LocalError("x")))

    assert type(exc) is TaskError
    assert "LocalError" in str(exc)


# ResultHub.


async def test_history_is_replayed_to_a_late_watcher_in_order() -> None:
    hub = ResultHub(asyncio.get_running_loop())
    sent = [msg("t", "STARTED"), msg("t", "PROGRESS", {"i": 1}), msg("t", "SUCCESS", 3)]
    for message in sent:
        hub.record(message)
    hub.record(msg("other", "SUCCESS", 0))
    seen: list[ResultMessage] = []

    unwatch = hub.watch("t", seen.append)
    unwatch()

    assert seen == sent
    assert hub.history("t") == sent


async def test_watcher_gets_new_states_until_unwatched() -> None:
    hub = ResultHub(asyncio.get_running_loop())
    seen: list[ResultMessage] = []
    unwatch = hub.watch("t", seen.append)

    hub.record(msg("t", "STARTED"))
    hub.record(msg("u", "STARTED"))
    unwatch()
    hub.record(msg("t", "SUCCESS"))

    assert [m.status for m in seen] == ["STARTED"]


async def test_first_final_state_stays_the_answer() -> None:
    hub = ResultHub(asyncio.get_running_loop())

    hub.record(msg("t", "SUCCESS", 1))
    hub.record(msg("t", "STARTED"))  # a redelivered copy runs again
    hub.record(msg("t", "FAILURE", exception_to_data(ValueError())))

    assert hub.history("t") == [msg("t", "SUCCESS", 1)]


async def test_history_per_task_is_bounded() -> None:
    hub = ResultHub(asyncio.get_running_loop())

    for i in range(HISTORY_LIMIT + 5):
        hub.record(msg("t", "PROGRESS", i))

    history = hub.history("t")
    assert len(history) == HISTORY_LIMIT
    assert history[0].result == 5
    assert history[-1].result == HISTORY_LIMIT + 4


async def test_wait_sync_from_a_thread_returns_on_success() -> None:
    loop = asyncio.get_running_loop()
    hub = ResultHub(loop)
    waiting = asyncio.Event()
    bodies: list[dict[str, Any]] = []

    def on_message(body: dict[str, Any]) -> None:
        bodies.append(body)
        loop.call_soon_threadsafe(waiting.set)

    hub.record(msg("t", "STARTED"))
    waiter = asyncio.ensure_future(asyncio.to_thread(hub.wait_sync, "t", WAIT, on_message))
    await asyncio.wait_for(waiting.wait(), WAIT)  # the thread is now blocked, watching
    hub.record(msg("t", "PROGRESS", {"current": 1}))
    hub.record(msg("t", "SUCCESS", 42))
    hub.record(msg("u", "SUCCESS", 0))

    final = await asyncio.wait_for(waiter, WAIT)

    assert final.status == "SUCCESS"
    assert final.result == 42
    assert [(b["status"], b["result"]) for b in bodies] == [
        ("STARTED", None),
        ("PROGRESS", {"current": 1}),
        ("SUCCESS", 42),
    ]
    assert set(bodies[0]) == {"task_id", "status", "result", "traceback", "date_done", "task_name"}


async def test_wait_sync_returns_at_once_when_already_ready() -> None:
    hub = ResultHub(asyncio.get_running_loop())
    hub.record(msg("t", "FAILURE", exception_to_data(ValueError("x"))))

    assert hub.wait_sync("t", 0.01, None).status == "FAILURE"


async def test_wait_sync_timeout_raises_our_timeout_error() -> None:
    hub = ResultHub(asyncio.get_running_loop())
    hub.record(msg("t", "STARTED"))

    with pytest.raises(AmqpTimeoutError, match=r"task t not ready within 0\.05s") as info:
        await asyncio.to_thread(hub.wait_sync, "t", 0.05, None)

    assert isinstance(info.value, builtins.TimeoutError)


async def test_wait_async_on_the_hub_loop() -> None:
    hub = ResultHub(asyncio.get_running_loop())
    started = asyncio.Event()
    statuses: list[str] = []

    async def on_message(body: dict[str, Any]) -> None:  # coroutines are awaited too
        statuses.append(body["status"])
        started.set()

    waiter = asyncio.ensure_future(hub.wait_async("t", WAIT, on_message))
    hub.record(msg("t", "STARTED"))
    await asyncio.wait_for(started.wait(), WAIT)
    hub.record(msg("t", "PROGRESS"))
    hub.record(msg("t", "SUCCESS", "done"))

    final = await asyncio.wait_for(waiter, WAIT)

    assert final.result == "done"
    assert statuses == ["STARTED", "PROGRESS", "SUCCESS"]


async def test_wait_async_from_another_loop_in_another_thread() -> None:
    loop = asyncio.get_running_loop()
    hub = ResultHub(loop)
    started = asyncio.Event()
    seen: list[tuple[str, int]] = []

    def on_message(body: dict[str, Any]) -> None:
        seen.append((body["status"], threading.get_ident()))
        loop.call_soon_threadsafe(started.set)

    def other_loop() -> ResultMessage:
        return asyncio.run(hub.wait_async("t", WAIT, on_message))

    waiter = asyncio.ensure_future(asyncio.to_thread(other_loop))
    hub.record(msg("t", "STARTED"))
    await asyncio.wait_for(started.wait(), WAIT)
    hub.record(msg("t", "SUCCESS", 7))

    final = await asyncio.wait_for(waiter, WAIT)

    assert final.result == 7
    assert [status for status, _ in seen] == ["STARTED", "SUCCESS"]
    assert all(ident != threading.get_ident() for _, ident in seen)


async def test_wait_async_timeout() -> None:
    hub = ResultHub(asyncio.get_running_loop())

    with pytest.raises(AmqpTimeoutError) as info:
        await hub.wait_async("t", 0.05, None)

    assert isinstance(info.value, builtins.TimeoutError)


async def test_waiters_are_removed_after_waiting() -> None:
    hub = ResultHub(asyncio.get_running_loop())
    hub.record(msg("t", "SUCCESS"))

    await hub.wait_async("t", WAIT, None)
    hub.wait_sync("t", WAIT, None)
    with pytest.raises(AmqpTimeoutError):
        await hub.wait_async("u", 0.01, None)

    assert hub._sinks == {}


class Handle:
    """Stands for an AsyncResult: something the hub can hold a weak reference to."""


async def test_results_nobody_holds_a_handle_for_are_bounded() -> None:
    hub = ResultHub(asyncio.get_running_loop(), unclaimed_limit=3)
    for index in range(10):
        hub.record(msg(f"t{index}", "SUCCESS", index))

    kept = [f"t{index}" for index in range(10) if hub.history(f"t{index}")]
    assert kept == ["t7", "t8", "t9"]


async def test_results_are_kept_while_their_handle_lives_then_let_go() -> None:
    hub = ResultHub(asyncio.get_running_loop(), unclaimed_limit=2)
    handle = Handle()
    hub.track("held", handle)
    hub.record(msg("held", "SUCCESS", 1))
    for index in range(5):
        hub.record(msg(f"other{index}", "SUCCESS", index))
    assert [m.result for m in hub.history("held")] == [1]  # the handle keeps it

    del handle
    gc.collect()
    for index in range(5, 8):
        hub.record(msg(f"other{index}", "SUCCESS", index))

    assert hub.history("held") == []


async def test_a_result_that_arrives_before_its_handle_is_kept_for_it() -> None:
    hub = ResultHub(asyncio.get_running_loop(), unclaimed_limit=1)
    hub.record(msg("fast", "SUCCESS", 1))
    handle = Handle()
    hub.track("fast", handle)
    hub.record(msg("later", "SUCCESS", 2))  # would push "fast" out if it were unclaimed

    assert [m.result for m in hub.history("fast")] == [1]


async def test_watched_results_are_kept() -> None:
    hub = ResultHub(asyncio.get_running_loop(), unclaimed_limit=1)
    hub.record(msg("watched", "SUCCESS", 1))
    unwatch = hub.watch("watched", lambda _: None)
    hub.record(msg("other", "SUCCESS", 2))
    hub.record(msg("more", "SUCCESS", 3))
    unwatch()

    assert [m.result for m in hub.history("watched")] == [1]


async def test_a_lost_reply_queue_fails_pending_waiters_not_finished_ones() -> None:
    hub = ResultHub(asyncio.get_running_loop())
    done, pending = Handle(), Handle()
    hub.track("done", done)
    hub.track("pending", pending)
    hub.record(msg("done", "SUCCESS", 1))
    waiter = asyncio.ensure_future(hub.wait_async("pending", WAIT, None))
    await asyncio.sleep(0)

    hub.reply_queue_lost("reply queue q was gone")

    with pytest.raises(ResultLost, match="reply queue q was gone"):
        await waiter
    with pytest.raises(ResultLost):  # a later get() too, instead of waiting forever
        hub.wait_sync("pending", WAIT, None)
    assert hub.wait_sync("done", WAIT, None).result == 1
    hub.record(msg("pending", "SUCCESS", 2))  # a state that still arrives wins
    assert hub.wait_sync("pending", WAIT, None).result == 2


# AsyncResult.


@pytest.fixture
async def hub() -> ResultHub:
    return ResultHub(asyncio.get_running_loop())


@pytest.fixture
def result_for(
    hub: ResultHub, fake_client: Callable[[ResultHub], Any]
) -> Callable[[str], AsyncResult]:
    def make(task_id: str) -> AsyncResult:
        return AsyncResult(task_id, task_name="app.job", client=fake_client(hub))

    return make


async def test_unknown_id_is_pending(result_for: Callable[[str], AsyncResult]) -> None:
    r = result_for("t")

    assert (r.id, r.task_id, r.task_name) == ("t", "t", "app.job")
    assert r.state == r.status == "PENDING"
    assert not r.ready()
    assert not r.successful()
    assert not r.failed()
    assert r.result is None
    assert r.info is None
    assert r.traceback is None
    assert r.date_done is None
    assert r.started_at is None
    assert repr(r) == "<AsyncResult: t PENDING>"


async def test_started_and_progress(
    hub: ResultHub, result_for: Callable[[str], AsyncResult]
) -> None:
    r = result_for("t")
    hub.record(msg("t", "STARTED", date_done="2030-01-01T00:00:00+00:00"))
    hub.record(msg("t", "PROGRESS", {"current": 3, "total": 10}, date_done="later"))

    assert r.state == "PROGRESS"
    assert r.info == {"current": 3, "total": 10}
    assert r.started_at == "2030-01-01T00:00:00+00:00"
    assert r.date_done is None  # not finished
    assert not r.ready()


async def test_success(hub: ResultHub, result_for: Callable[[str], AsyncResult]) -> None:
    r = result_for("t")
    hub.record(msg("t", "STARTED", date_done="t0"))
    hub.record(msg("t", "SUCCESS", 10, date_done="t1"))
    bodies: list[dict[str, Any]] = []

    assert r.state == "SUCCESS"
    assert r.ready()
    assert r.successful()
    assert not r.failed()
    assert r.result == 10
    assert r.date_done == "t1"
    assert r.started_at == "t0"
    assert r.get(timeout=WAIT, on_message=bodies.append) == 10
    assert [b["status"] for b in bodies] == ["STARTED", "SUCCESS"]


async def test_failure(hub: ResultHub, result_for: Callable[[str], AsyncResult]) -> None:
    r = result_for("t")
    hub.record(failure("t", ZeroDivisionError("division by zero"), traceback="TB text"))

    assert r.state == "FAILURE"
    assert r.ready()
    assert r.failed()
    assert not r.successful()
    assert isinstance(r.result, ZeroDivisionError)
    assert r.traceback == "TB text"
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        r.get(timeout=WAIT)
    returned = r.get(timeout=WAIT, propagate=False)
    assert type(returned) is ZeroDivisionError
    assert returned.args == ("division by zero",)


async def test_failure_with_unknown_type_raises_task_error(
    hub: ResultHub, result_for: Callable[[str], AsyncResult]
) -> None:
    hub.record(
        msg("t", "FAILURE", {"exc_type": "Boom", "exc_module": "gone.mod", "exc_message": ["x"]})
    )

    with pytest.raises(TaskError, match=r"gone\.mod\.Boom: x"):
        result_for("t").get(timeout=WAIT)


async def test_revoked(hub: ResultHub, result_for: Callable[[str], AsyncResult]) -> None:
    r = result_for("t")
    hub.record(msg("t", "REVOKED", exception_to_data(TaskRevokedError("expired"))))

    assert r.ready()
    assert not r.successful()
    assert not r.failed()
    with pytest.raises(TaskRevokedError, match="expired"):
        r.get(timeout=WAIT)


async def test_await_and_aget(hub: ResultHub, result_for: Callable[[str], AsyncResult]) -> None:
    r = result_for("t")
    waiter = asyncio.ensure_future(r.aget(timeout=WAIT))
    hub.record(msg("t", "SUCCESS", "value"))

    assert await asyncio.wait_for(waiter, WAIT) == "value"
    assert await r == "value"


async def test_aget_propagate_false(
    hub: ResultHub, result_for: Callable[[str], AsyncResult]
) -> None:
    hub.record(failure("t", KeyError("k")))

    exc = await result_for("t").aget(timeout=WAIT, propagate=False)

    assert type(exc) is KeyError


async def test_get_timeout(result_for: Callable[[str], AsyncResult]) -> None:
    with pytest.raises(AmqpTimeoutError):
        await asyncio.to_thread(result_for("t").get, timeout=0.05)
    with pytest.raises(builtins.TimeoutError):
        await result_for("t").aget(timeout=0.05)


async def test_forget(hub: ResultHub, result_for: Callable[[str], AsyncResult]) -> None:
    r = result_for("t")
    hub.record(msg("t", "SUCCESS", 1))

    r.forget()

    assert r.state == "PENDING"


async def test_equality_by_id(result_for: Callable[[str], AsyncResult], app: App) -> None:
    assert result_for("a") == AsyncResult("a", app=app)
    assert result_for("a") != result_for("b")
    assert len({result_for("a"), result_for("a"), result_for("b")}) == 2


def test_result_by_id_without_a_started_client_is_pending(app: App) -> None:
    r = AsyncResult("some-id", app=app)

    assert r.state == "PENDING"
    assert r.result is None
    assert not r.ready()


def test_async_result_needs_an_app_or_client() -> None:
    with pytest.raises(TypeError, match="needs app="):
        AsyncResult("x")
