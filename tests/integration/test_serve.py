"""The real `amqpworker serve` process: banner, results, SIGTERM and SIGKILL."""

from __future__ import annotations

import asyncio
import signal
import sys

from amqpworker import App

from .conftest import wait_for

ADD = "tests.integration.sample_app.add"
WAIT = "tests.integration.sample_app.record_and_wait"
SLEEP = "tests.integration.sample_app.sleep_then_return"


def test_serve_runs_tasks_for_sync_and_async_callers(app: App, serve, queue: str) -> None:
    worker = serve("--concurrency", "2", "--loglevel", "info").wait_consuming()
    assert app.send_task(ADD, (2, 2)).get(timeout=10) == 4

    async def from_asyncio() -> int:
        result = await app.tasks[ADD].adelay(2, 2)
        value = await result.aget(timeout=10)
        await app.aclose()
        return value

    assert asyncio.run(from_asyncio()) == 4
    banner = worker.output
    assert "app:         sample" in banner
    assert queue in banner
    assert ADD in banner
    assert "guest:****@" in banner
    assert ":guest@" not in worker.output


def test_serve_finds_app_in_module_without_attribute(app: App, serve) -> None:
    serve(app_path="tests.integration.sample_app").wait_consuming()
    assert app.send_task(ADD, (1, 1)).get(timeout=10) == 2


def test_sigterm_lets_running_tasks_finish_and_requeues_the_rest(
    app: App, serve, queue: str, admin, tmp_path
) -> None:
    worker = serve("--concurrency", "2", "--prefetch-multiplier", "3").wait_consuming()
    running = [app.send_task(SLEEP, (str(tmp_path), f"run{i}", 1.0)) for i in range(2)]
    wait_for(lambda: len(list(tmp_path.glob("run*.run1"))) == 2, 10, "two tasks running")
    waiting = [app.send_task(SLEEP, (str(tmp_path), f"wait{i}", 0)) for i in range(6)]
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output
    # The running tasks finished and their results arrived.
    assert [r.get(timeout=10) for r in running] == ["run0", "run1"]
    # The others never started and are back in the queue: nothing lost.
    assert not list(tmp_path.glob("wait*"))
    assert admin.message_count(queue) == 6
    assert all(r.state == "PENDING" for r in waiting)


def test_second_sigterm_exits_at_once(app: App, serve, queue: str, admin, tmp_path) -> None:
    worker = serve("--concurrency", "1", "--shutdown-timeout", "60").wait_consuming()
    app.send_task(WAIT, (str(tmp_path), "long"))
    wait_for(lambda: (tmp_path / "long.run1").exists(), 10, "the task to start")
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "stopping" in worker.output, 10, "the graceful stop to begin")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) != 0
    # The unfinished task went back to its queue.
    wait_for(lambda: admin.message_count(queue) == 1, 10, "the task back in its queue")


def test_sigkill_mid_task_runs_it_again_on_a_new_worker(app: App, serve, tmp_path) -> None:
    first = serve("--concurrency", "1").wait_consuming()
    result = app.send_task(WAIT, (str(tmp_path), "job"), {"release_after": 2})
    wait_for(lambda: (tmp_path / "job.run1").exists(), 10, "the first run to start")
    first.signal(signal.SIGKILL)
    first.wait(10)
    serve("--concurrency", "1").wait_consuming()
    assert result.get(timeout=30) == 2, "the task ran a second time, to completion"
    assert (tmp_path / "job.run2").exists()


def test_bad_app_path_is_a_usage_error(serve) -> None:
    worker = serve(app_path="tests.integration.no_such_module")
    assert worker.wait(30) == 2
    assert "no_such_module" in worker.output


def test_python_version_is_supported() -> None:
    assert sys.version_info >= (3, 10)
