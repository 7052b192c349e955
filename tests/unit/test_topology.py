"""The routing file's model: what it declares, and errors that name the file and entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from amqpworker.exceptions import ImproperlyConfigured
from amqpworker.topology import QueueSpec, Topology


def load(tmp_path: Path, text: str) -> Topology:
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    return Topology.load(path)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ImproperlyConfigured) as caught:
        load(tmp_path, text)
    return str(caught.value)


def test_wrong_type_names_file_and_entry(tmp_path: Path) -> None:
    message = error_of(
        tmp_path, "queues:\n  - {name: a}\n  - {name: b}\n  - {name: c, max_priority: high}\n"
    )
    assert message.startswith(f"{tmp_path / 'routing.yaml'}: queues[2].max_priority:")
    assert "'high'" in message


def test_unknown_key_names_the_entry(tmp_path: Path) -> None:
    message = error_of(tmp_path, "exchanges:\n  - {name: x, kind: topic}\n")
    assert "exchanges[0].kind: Extra inputs are not permitted" in message


def test_route_to_an_undeclared_queue(tmp_path: Path) -> None:
    message = error_of(tmp_path, "routes:\n  - {task: 'a.*', queue: nowhere}\n")
    assert "routes[0]: queue 'nowhere' is not declared" in message


def test_route_to_an_undeclared_exchange(tmp_path: Path) -> None:
    message = error_of(tmp_path, "routes:\n  - {task: 'a.*', exchange: media}\n")
    assert "routes[0]: exchange 'media' is not declared" in message


def test_binding_to_builtin_exchange_is_fine(tmp_path: Path) -> None:
    topology = load(
        tmp_path,
        "queues: [{name: q}]\nbindings: [{exchange: amq.topic, queue: q, routing_key: '#'}]\n",
    )
    assert topology.bindings_to("q")[0].exchange == "amq.topic"


def test_quorum_queue_with_priority_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, "queues:\n  - {name: q, type: quorum, max_priority: 5}\n")
    assert "queues[0]: quorum queues have no priorities" in message


def test_duplicate_queue(tmp_path: Path) -> None:
    assert "'q' is declared twice" in error_of(tmp_path, "queues: [{name: q}, {name: q}]\n")


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    assert "routing.yaml: not valid YAML" in error_of(tmp_path, "queues: [\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImproperlyConfigured, match="cannot read the routing file"):
        Topology.load(tmp_path / "absent.yaml")


def test_queue_arguments() -> None:
    classic = QueueSpec(name="q", message_ttl=1.5, max_length=10, overflow="reject-publish")
    assert classic.arguments_for(10) == {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "q.dlq",
        "x-max-priority": 10,
        "x-message-ttl": 1500,
        "x-max-length": 10,
        "x-overflow": "reject-publish",
    }
    quorum = QueueSpec(name="q", type="quorum", delivery_limit=3)
    assert quorum.arguments_for(10) == {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "q.dlq",
        "x-queue-type": "quorum",
        "x-delivery-limit": 3,
    }


def test_routes_exact_before_glob(tmp_path: Path) -> None:
    topology = load(
        tmp_path,
        "queues: [{name: a}, {name: b}]\n"
        "routes:\n  - {task: 'app.*', queue: a}\n  - {task: app.add, queue: b}\n",
    )
    assert topology.route_for("app.add").queue == "b"
    assert topology.route_for("app.mul").queue == "a"
    assert topology.route_for("other.x") is None


def test_undeclared_queue_is_a_default_classic_queue() -> None:
    assert Topology().queue("anything") == QueueSpec(name="anything")
