"""Signatures are plain data, and workflows are built from them without a broker."""

from __future__ import annotations

import json

import msgpack
import pytest

from amqpworker import App, Signature, chain, chord, chunks, group, signature
from amqpworker.app.canvas import freeze, from_dict, plan, result_ids
from amqpworker.exceptions import ImproperlyConfigured


@pytest.fixture
def app() -> App:
    made = App("canvas", broker_url="amqp://guest:guest@127.0.0.1:1//")

    @made.task(name="t.add")
    def add(x, y):  # type: ignore[no-untyped-def]
        return x + y

    @made.task(name="t.tsum")
    def tsum(values):  # type: ignore[no-untyped-def]
        return sum(values)

    return made


def test_signature_is_a_celery_shaped_dict(app: App) -> None:
    s = app.tasks["t.add"].s(2, 2)
    assert isinstance(s, dict)
    assert dict(s) == {
        "task": "t.add",
        "args": [2, 2],
        "kwargs": {},
        "options": {},
        "subtask_type": None,
        "immutable": False,
    }


@pytest.mark.parametrize(
    ("dumps", "loads"),
    [(json.dumps, json.loads), (msgpack.packb, msgpack.unpackb)],
    ids=["json", "msgpack"],
)
def test_workflows_round_trip_through_serializers(app: App, dumps, loads) -> None:  # type: ignore[no-untyped-def]
    add, tsum = app.tasks["t.add"], app.tasks["t.tsum"]
    workflow = chain(add.s(1, 1), chord([add.s(i, i) for i in range(3)], tsum.s()), add.si(0.1, 2))
    workflow.link_error(add.s(9))
    again = from_dict(loads(dumps(workflow)), app)
    assert again == workflow
    assert isinstance(again, chain)
    assert isinstance(again.tasks[1], chord)
    # A step after a chord becomes part of the chord's body, as in Celery.
    last = again.tasks[1].body.tasks[1]
    assert last.args == [0.1, 2]
    assert last.immutable


def test_partial_arguments_are_prepended(app: App) -> None:
    p = app.tasks["t.add"].s(2)
    assert p(4) == 6
    assert p.clone(args=(10,)).args == [10, 2]
    assert app.tasks["t.add"].si(1, 2).clone(args=(10,)).args == [1, 2]


def test_set_and_call_options(app: App) -> None:
    s = app.tasks["t.add"].signature((2, 2), countdown=10)
    assert s.set(queue="math") is s
    assert s.options == {"countdown": 10, "queue": "math"}


def test_pipe_builds_chains_and_chords(app: App) -> None:
    add, tsum = app.tasks["t.add"], app.tasks["t.tsum"]
    c = add.s(2, 2) | add.s(4) | add.s(8)
    assert isinstance(c, chain)
    assert [step.args for step in c.tasks] == [[2, 2], [4], [8]]
    made = group(add.s(i, i) for i in range(3)) | tsum.s()
    assert isinstance(made, chain)
    assert isinstance(made.tasks[0], chord)


def test_signature_by_name_needs_an_app_to_be_sent() -> None:
    s = signature("t.add", args=(1, 2))
    with pytest.raises(ImproperlyConfigured, match="has no app"):
        s.delay()


def test_freeze_assigns_ids_and_parents(app: App) -> None:
    add = app.tasks["t.add"]
    c = add.s(2, 2) | add.s(4) | add.s(8)
    result = freeze(c, app, None, "reply-q")
    ids = [step.id for step in c.tasks]
    assert all(ids)
    assert len(set(ids)) == 3
    assert result.id == ids[2]
    assert result.parent.id == ids[1]
    assert result.parent.parent.id == ids[0]
    assert all(step.options["reply_to"] == "reply-q" for step in c.tasks)
    assert result_ids(c) == ids


def test_plan_of_a_chain_publishes_the_first_step_with_the_rest_in_headers(app: App) -> None:
    add = app.tasks["t.add"]
    c = add.s(2, 2) | add.s(4) | add.s(8)
    freeze(c, app, None, "reply-q")
    work = plan(app, c)
    [(message, _, _)] = work.messages
    assert message.args == (2, 2)
    assert [step["args"] for step in message.chain] == [[4], [8]]
    assert message.reply_to == "reply-q"


def test_plan_of_a_chord_declares_its_queue_and_marks_members(app: App) -> None:
    add, tsum = app.tasks["t.add"], app.tasks["t.tsum"]
    c = chord([add.s(i, i) for i in range(3)], tsum.s())
    freeze(c, app, None, "reply-q")
    work = plan(app, c)
    assert work.chords == [c.header.options["group_id"]]
    assert [m.chord["index"] for m, _, _ in work.messages] == [0, 1, 2]
    assert {m.chord["size"] for m, _, _ in work.messages} == {3}
    assert {m.group_id for m, _, _ in work.messages} == {c.header.options["group_id"]}


def test_chunks_split_into_starmap_tasks(app: App) -> None:
    parts = chunks(app.tasks["t.add"], [(i, i) for i in range(10)], 4).group()
    assert [len(task.args[1]) for task in parts.tasks] == [4, 4, 2]
    assert parts.tasks[0].name == "amqpworker.starmap"


def test_map_runs_locally(app: App) -> None:
    assert app.tasks["t.tsum"].map([range(3), range(4)])() == [3, 6]


def test_group_refuses_non_signatures(app: App) -> None:
    with pytest.raises(TypeError, match="holds signatures"):
        group([1, 2])  # type: ignore[list-item]


def test_builtins_are_not_in_the_users_registry(app: App) -> None:
    assert set(app.tasks) == {"t.add", "t.tsum"}
    assert app.get_task("amqpworker.map") is not None


def test_signature_class_is_exported() -> None:
    assert issubclass(chain, Signature)
