"""Topology as code against a real broker, through the real `amqpworker` command."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from amqpworker import App, states
from amqpworker.exceptions import ImproperlyConfigured, TopologyMismatch

from .conftest import BrokerAdmin, run_cli, wait_for
from .sample_app import create_app

LABEL = "tests.integration.sample_app.label"
ADD = "tests.integration.sample_app.add"


@pytest.fixture
def routing(admin: BrokerAdmin, tmp_path: Path) -> dict[str, object]:
    """A routing file with a topic exchange, a priority queue, a quorum queue, two globs."""
    names = {
        "exchange": admin.new_exchange("media"),
        "priority": admin.new_queue("prio"),
        "quorum": admin.new_queue("quorum"),
    }
    path = tmp_path / "routing.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            exchanges:
              - {{name: {names["exchange"]}, type: topic}}
            queues:
              - {{name: {names["priority"]}, max_priority: 10, prefetch: 1}}
              - {{name: {names["quorum"]}, type: quorum, delivery_limit: 4}}
            bindings:
              - {{exchange: {names["exchange"]}, queue: {names["priority"]},
                  routing_key: "label.#"}}
            routes:
              - {{task: "tests.integration.sample_app.lab*", exchange: {names["exchange"]},
                  routing_key: label.any}}
              - {{task: "tests.integration.sample_app.a*", queue: {names["quorum"]}}}
            """
        )
    )
    return {**names, "path": path}


def test_apply_twice_then_check_is_clean(routing, broker_url: str) -> None:
    path = str(routing["path"])
    first = run_cli("topology", "apply", "--routing", path, "--broker", broker_url)
    assert first.returncode == 0, first.stderr
    second = run_cli("topology", "apply", "--routing", path, "--broker", broker_url)
    assert second.returncode == 0, second.stderr
    check = run_cli("topology", "check", "--routing", path, "--broker", broker_url)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("ok:")


def test_check_names_a_difference_made_on_the_broker(routing, broker_url: str, admin) -> None:
    path = str(routing["path"])
    assert run_cli("topology", "apply", "--routing", path, "--broker", broker_url).returncode == 0
    queue = routing["priority"]

    async def redeclare_differently(channel) -> None:
        await channel.queue_delete(queue)
        await channel.declare_queue(queue, durable=True, arguments={"x-max-priority": 5})

    admin.run(admin._with_channel(redeclare_differently))
    check = run_cli("topology", "check", "--routing", path, "--broker", broker_url)
    assert check.returncode == 1
    assert (
        f"queue '{queue}': x-max-priority is 5 on the broker, but the file says 10" in check.stdout
    )
    assert f"queue '{queue}': x-dead-letter-exchange is not set on the broker" in check.stdout


def test_check_reports_missing_entities(routing, broker_url: str) -> None:
    check = run_cli("topology", "check", "--routing", str(routing["path"]), "--broker", broker_url)
    assert check.returncode == 1
    assert f"exchange '{routing['exchange']}' is missing" in check.stdout
    assert f"queue '{routing['quorum']}' is missing" in check.stdout


def test_worker_refuses_a_mismatched_queue_in_plain_words(
    routing, broker_url: str, admin, start_worker
) -> None:
    queue = routing["priority"]

    async def declare_plain(channel) -> None:
        await channel.declare_queue(queue, durable=True)

    admin.run(admin._with_channel(declare_plain))
    app = create_app(broker_url=broker_url, routing_file=routing["path"])
    with pytest.raises(TopologyMismatch, match="x-max-priority is not set on the broker"):
        start_worker(app, queues=[queue])
    app.close()


def test_serve_reports_the_mismatch_and_exits(routing, broker_url: str, admin, serve) -> None:
    queue = routing["priority"]

    async def declare_plain(channel) -> None:
        await channel.declare_queue(queue, durable=True)

    admin.run(admin._with_channel(declare_plain))
    worker = serve("--routing", str(routing["path"]), queues=queue)
    assert worker.wait(30) == 1
    assert "x-max-priority is not set on the broker, but the file says 10" in worker.output


def test_routes_from_the_file_reach_a_topic_bound_queue_and_a_quorum_queue(
    routing, broker_url: str, start_worker
) -> None:
    app = create_app(broker_url=broker_url, routing_file=routing["path"])
    start_worker(app, queues=[routing["priority"], routing["quorum"]])
    labelled = app.send_task(LABEL, ("via topic",))
    added = app.send_task(ADD, (2, 3))
    assert labelled.get(timeout=10) == "via topic"
    assert added.get(timeout=10) == 5
    app.close()


def test_priority_nine_runs_before_priority_one(routing, broker_url: str, start_worker) -> None:
    queue = routing["priority"]
    app = create_app(broker_url=broker_url, routing_file=routing["path"], task_default_queue=queue)
    low = app.send_many(
        [(LABEL, (f"low{i}",), {}, {"queue": queue, "priority": 1}) for i in range(50)]
    )
    high = app.send_many(
        [(LABEL, (f"high{i}",), {}, {"queue": queue, "priority": 9}) for i in range(50)]
    )
    start_worker(app, queues=[queue], concurrency=1, prefetch_multiplier=1)
    for result in low + high:
        assert result.get(timeout=30).startswith(("low", "high"))
    finished = sorted(low + high, key=lambda result: result.date_done or "")
    order = [result.result for result in finished]
    assert all(name.startswith("high") for name in order[:50]), order
    assert all(name.startswith("low") for name in order[50:]), order
    app.close()


def test_show_prints_routes_resolved_per_task(routing) -> None:
    shown = run_cli(
        "topology", "show", "--routing", str(routing["path"]), "-A", "tests.integration.sample_app"
    )
    assert shown.returncode == 0, shown.stderr
    assert f"{ADD} -> exchange '(default)' key '{routing['quorum']}'" in shown.stdout
    assert f"{LABEL} -> exchange '{routing['exchange']}' key 'label.any'" in shown.stdout


def test_malformed_routing_file_names_the_file_and_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("queues:\n  - {name: a}\n  - {name: b, max_priority: high}\n")
    shown = run_cli("topology", "show", "--routing", str(path))
    assert shown.returncode == 2
    assert f"{path}: queues[1].max_priority" in shown.stderr


def test_state_of_a_result_routed_by_the_file(routing, broker_url: str, start_worker) -> None:
    app = create_app(broker_url=broker_url, routing_file=routing["path"])
    start_worker(app, queues=[routing["quorum"]])
    result = app.send_task(ADD, (1, 1))
    assert result.get(timeout=10) == 2
    assert result.state == states.SUCCESS
    app.close()


def test_app_with_unreadable_routing_file_fails_at_first_use(broker_url: str, tmp_path) -> None:
    app = App("x", broker_url=broker_url, routing_file=tmp_path / "missing.yaml")
    with pytest.raises(ImproperlyConfigured, match=r"missing\.yaml"):
        app.topology  # noqa: B018


def test_prefetch_one_keeps_priority_strict_while_the_worker_is_busy(
    routing, broker_url: str, start_worker, tmp_path: Path
) -> None:
    queue = routing["priority"]
    app = create_app(broker_url=broker_url, routing_file=routing["path"])
    start_worker(app, queues=[queue], concurrency=1, prefetch_multiplier=8)
    blocker = app.send_task(
        "tests.integration.sample_app.record_and_wait", (str(tmp_path), "block"), queue=queue
    )
    wait_for(lambda: (tmp_path / "block.run1").exists(), 10, "the blocker to run")
    low = app.send_many(
        [(LABEL, (f"low{i}",), {}, {"queue": queue, "priority": 1}) for i in range(20)]
    )
    high = app.send_many(
        [(LABEL, (f"high{i}",), {}, {"queue": queue, "priority": 9}) for i in range(20)]
    )
    (tmp_path / "block.release").write_text("go")
    assert blocker.get(timeout=10) == 1
    for result in low + high:
        result.get(timeout=30)
    order = [r.result for r in sorted(low + high, key=lambda r: r.date_done or "")]
    assert all(name.startswith("high") for name in order[:20]), order
    app.close()
