"""Crash-looping messages reach the DLQ; the dlq command lists, replays and purges."""

from __future__ import annotations

import textwrap
from pathlib import Path

from amqpworker import App

from .conftest import run_cli, wait_for

CRASH = "tests.integration.sample_app.crash_unless"
ADD = "tests.integration.sample_app.add"


def test_a_task_that_kills_its_worker_reaches_the_dlq_and_replays(
    app: App, serve, queue: str, admin, tmp_path: Path, broker_url: str
) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text(textwrap.dedent(f"queues:\n  - {{name: {queue}, delivery_limit: 3}}\n"))
    app.conf.routing_file = routing
    fixed = tmp_path / "fixed"
    result = app.send_task(CRASH, (str(fixed),))

    crashes = 0
    for _ in range(6):
        worker = serve("--routing", str(routing), "--concurrency", "1")
        wait_for(
            lambda w=worker: (
                w.process.poll() is not None or admin.message_count(f"{queue}.dlq") == 1
            ),
            30,
            "the worker to crash or dead-letter the message",
        )
        if worker.process.poll() is None:
            break
        assert worker.wait(10) == 1, worker.output
        crashes += 1
    # Three deliveries crash a worker each; the fourth is recognised as crash-looping,
    # dead-lettered, and that worker goes on serving.
    assert crashes == 3
    assert worker.process.poll() is None
    assert admin.message_count(f"{queue}.dlq") == 1
    assert admin.message_count(queue) == 0
    worker.stop()

    listed = run_cli("dlq", "list", queue, "--broker", broker_url)
    assert listed.returncode == 0, listed.stderr
    assert "1 message(s)" in listed.stdout
    assert result.id in listed.stdout
    assert "crash-looping" in listed.stdout
    # Listing leaves the message where it is.
    assert admin.message_count(f"{queue}.dlq") == 1

    fixed.write_text("the bug is fixed")
    replayed = run_cli("dlq", "replay", queue, "--id", result.id, "--broker", broker_url)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replayed 1 message(s)" in replayed.stdout
    assert admin.message_count(f"{queue}.dlq") == 0

    serve("--routing", str(routing)).wait_consuming()
    assert result.get(timeout=20) == "ran"


def test_dlq_replay_all_and_purge(
    app: App, admin, queue: str, broker_url: str, start_worker
) -> None:
    import aio_pika

    app.tasks[ADD].delay(0, 0)  # declares the queue and its DLQ
    for i in range(3):
        admin.publish_raw(
            queue,
            aio_pika.Message(
                b"[[1, 2], {}]",
                headers={"task": "nope", "id": f"n{i}"},
                content_type="application/json",
            ),
        )
    worker = start_worker(app)
    wait_for(lambda: admin.message_count(f"{queue}.dlq") == 3, 10, "three dead letters")
    worker.stop()

    replay = run_cli("dlq", "replay", queue, "--all", "--broker", broker_url)
    assert "replayed 3 message(s)" in replay.stdout
    [*messages] = admin.get_all(queue)
    assert len(messages) == 3
    # A replay goes back with a fresh history.
    assert not any(key.startswith("x-amqpworker-") for m in messages for key in m.headers)
    for message in messages:
        admin.publish_raw(
            f"{queue}.dlq", aio_pika.Message(message.body, headers=dict(message.headers))
        )
    purged = run_cli("dlq", "purge", queue, "--yes", "--broker", broker_url)
    assert "purged 3 message(s)" in purged.stdout
    assert admin.message_count(f"{queue}.dlq") == 0


def test_dlq_replay_needs_id_or_all(queue: str, broker_url: str) -> None:
    result = run_cli("dlq", "replay", queue, "--broker", broker_url)
    assert result.returncode == 2
    assert "--id" in result.stderr
