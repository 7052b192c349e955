"""A task that outlives RabbitMQ's consumer timeout does not run again beside itself.

The broker closes the channel of a delivery left unacknowledged past ``consumer_timeout``
and hands the message out again; on the worker still running it, the copy must wait for
the running task and be settled with its result, not start a second run.
"""

from __future__ import annotations

from pathlib import Path

from amqpworker import App

from .conftest import wait_for
from .rabbit_node import RabbitNode, node_fixture
from .sample_app import create_app

#: RabbitMQ checks the timeout once per channel tick (60 s by default): both are short here.
short_timeout_rabbit = node_fixture(
    config="consumer_timeout = 2000",
    advanced="[{rabbit, [{channel_tick_interval, 500}]}].",
)


def test_a_task_past_the_consumer_timeout_runs_once(
    short_timeout_rabbit: RabbitNode, start_worker, tmp_path: Path
) -> None:
    app: App = create_app(broker_url=short_timeout_rabbit.url, task_default_queue="long")
    try:
        running = start_worker(app, concurrency=2)
        result = app.send_task(
            "tests.integration.sample_app.sleep_then_return", (str(tmp_path), "long", 6)
        )
        # The channel is closed under the running task and the message comes back.
        wait_for(lambda: running.worker.stats.received >= 2, 15, "the message to come back")
        assert result.get(timeout=30) == "long"
        wait_for(lambda: running.worker.stats.running == 0, 10, "the run to end")
        assert [p.name for p in tmp_path.glob("long.run*")] == ["long.run1"]
        # The worker keeps serving.
        assert app.send_task("tests.integration.sample_app.add", (1, 2)).get(timeout=10) == 3
    finally:
        app.close()
