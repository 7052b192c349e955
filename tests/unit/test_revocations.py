"""Revocations as data: what a caller may ask, and what a worker reads back."""

from __future__ import annotations

import time

import pytest

from amqpworker.exceptions import MalformedMessage
from amqpworker.wire import Envelope
from amqpworker.wire.revocations import Revocation, signal_name
from amqpworker.worker.revocations import Revocations


def test_a_revocation_round_trips() -> None:
    sent = Revocation.of(["a", "b"], terminate=True, signal="kill", holds_for=60)
    assert Revocation.decode(sent.encode()) == sent
    assert sent.signal == "SIGKILL"


@pytest.mark.parametrize("value", [9, "KILL", "sigkill", "SIGKILL"])
def test_signals_by_name_or_number(value: object) -> None:
    assert signal_name(value) == "SIGKILL"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        b"nope",
        b"[]",
        b'{"ids": "a", "expires": 1}',
        b'{"ids": ["a"]}',
        b'{"ids": [""], "expires": 1}',
    ],
)
def test_malformed_revocations_say_so(body: bytes) -> None:
    with pytest.raises(MalformedMessage):
        Revocation.decode(Envelope(body=body))


def test_a_revoke_holds_until_it_expires() -> None:
    revocations = Revocations()
    revocations.add(Revocation(("held",), expires=time.time() + 60))
    revocations.add(Revocation(("over",), expires=time.time() - 1))
    assert revocations.holds("held")
    assert not revocations.holds("over")
    assert revocations.ids() == ["held"]


def test_only_the_newest_revokes_are_kept() -> None:
    revocations = Revocations(memory=2)
    for task_id in "abc":
        revocations.add(Revocation((task_id,), expires=time.time() + 60))
    assert revocations.ids() == ["b", "c"]


def test_terminate_asks_the_worker_to_stop_running_tasks() -> None:
    revocations = Revocations()
    stopped: list[str] = []
    revocations.on_terminate = lambda task_id, signal: stopped.append(task_id) or True
    assert revocations.add(Revocation(("a",), terminate=True, expires=time.time() + 60)) == ["a"]
    assert revocations.add(Revocation(("b",), expires=time.time() + 60)) == []
    assert stopped == ["a"]


def test_a_connection_given_to_revoke_is_refused_not_ignored() -> None:
    from amqpworker import App
    from amqpworker.app.results import AsyncResult

    with pytest.raises(TypeError, match="connection"):
        AsyncResult("a", app=App("unit")).revoke(connection=object())
