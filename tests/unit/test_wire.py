"""Wire format v1: encode, decode, serializers, and clear errors for malformed messages."""

from __future__ import annotations

import datetime as dt
import json
import pickle
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
import yaml

from amqpworker.exceptions import (
    ContentDisallowed,
    DecodeError,
    ImproperlyConfigured,
    MessageError,
)
from amqpworker.wire import (
    PROTOCOL_HEADER,
    Envelope,
    ResultMessage,
    Serializer,
    SerializerRegistry,
    TaskMessage,
    default_serializers,
)
from amqpworker.wire.results import exception_to_data

CELERY_V2_HEADERS = {
    "task",
    "id",
    "root_id",
    "retries",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "lang",
}
SAFE = ("json", "msgpack", "yaml")
UTC = dt.timezone.utc


def accepted(registry: SerializerRegistry, *names: str) -> frozenset[str]:
    return registry.content_types(names or SAFE)


def valid_envelope(registry: SerializerRegistry, **changes: Any) -> Envelope:
    envelope = TaskMessage("app.add", (1, 2), {"z": 3}, id="task-1").encode(registry.get("json"))
    return replace(envelope, **changes)


def with_headers(registry: SerializerRegistry, **headers: Any) -> Envelope:
    base = valid_envelope(registry)
    return replace(base, headers={**base.headers, **headers})


# Encoding.


def test_body_holds_only_args_and_kwargs(serializers: SerializerRegistry) -> None:
    message = TaskMessage("app.add", (1, 2), {"z": 3}, id="task-1")

    envelope = message.encode(serializers.get("json"))

    assert json.loads(envelope.body) == [[1, 2], {"z": 3}]


def test_headers_follow_celery_protocol_v2(serializers: SerializerRegistry) -> None:
    message = TaskMessage("app.add", (1, 2), {"z": 3}, id="task-1")

    headers = message.encode(serializers.get("json")).headers

    assert set(headers) >= CELERY_V2_HEADERS
    assert headers[PROTOCOL_HEADER] == 1
    assert PROTOCOL_HEADER == "x-amqpworker-protocol"
    assert headers["task"] == "app.add"
    assert headers["id"] == "task-1"
    assert headers["root_id"] == "task-1"
    assert headers["retries"] == 0
    # Null ones are left out; a Celery worker reads a missing one as null.
    assert not {"parent_id", "group", "eta", "expires", "timelimit"} & set(headers)
    assert headers["argsrepr"] == "(1, 2)"
    assert headers["kwargsrepr"] == "{'z': 3}"
    assert headers["lang"] == "py"
    assert isinstance(headers["origin"], str)
    assert headers["origin"]


def test_properties(serializers: SerializerRegistry) -> None:
    message = TaskMessage("app.add", (), {}, id="task-1", priority=7, reply_to="caller.reply")

    envelope = message.encode(serializers.get("json"))

    assert envelope.content_type == "application/json"
    assert envelope.content_encoding == "utf-8"
    assert envelope.correlation_id == "task-1"
    assert envelope.message_id == "task-1"
    assert envelope.type == "app.add"
    assert envelope.priority == 7
    assert envelope.reply_to == "caller.reply"
    assert envelope.persistent is True


def test_ignore_result_drops_reply_to(serializers: SerializerRegistry) -> None:
    message = TaskMessage("app.add", reply_to="caller.reply", ignore_result=True)

    assert message.encode(serializers.get("json")).reply_to is None


def test_optional_headers_are_filled(serializers: SerializerRegistry) -> None:
    eta = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    message = TaskMessage(
        "app.add",
        id="child",
        root_id="root",
        parent_id="parent",
        group_id="group-1",
        retries=2,
        eta=eta,
        expires=eta + dt.timedelta(hours=1),
        time_limit=30,
        soft_time_limit=25,
    )

    headers = message.encode(serializers.get("json")).headers

    assert headers["root_id"] == "root"
    assert headers["parent_id"] == "parent"
    assert headers["group"] == "group-1"
    assert headers["retries"] == 2
    assert headers["eta"] == "2030-01-02T03:04:05+00:00"
    assert headers["expires"] == "2030-01-02T04:04:05+00:00"
    assert headers["timelimit"] == [30, 25]


def test_core_headers_win_over_user_headers(serializers: SerializerRegistry) -> None:
    message = TaskMessage("app.add", id="real", headers={"id": "fake", "tenant": "a"})

    headers = message.encode(serializers.get("json")).headers

    assert headers["id"] == "real"
    assert headers["tenant"] == "a"


def test_user_header_tuples_travel_as_lists(serializers: SerializerRegistry) -> None:
    message = TaskMessage("app.add", headers={"path": ("a", "b")})

    got = TaskMessage.decode(
        message.encode(serializers.get("json")), serializers, accepted(serializers)
    )

    assert got.headers == {"path": ["a", "b"]}


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("yes", False), (1, False)])
def test_ignore_result_header_must_be_true_exactly(
    serializers: SerializerRegistry, value: object, expected: bool
) -> None:
    envelope = with_headers(serializers, ignore_result=value)

    assert (
        TaskMessage.decode(envelope, serializers, accepted(serializers)).ignore_result is expected
    )


def test_long_argument_reprs_are_shortened(serializers: SerializerRegistry) -> None:
    message = TaskMessage("app.add", ("x" * 1000,), {"k": "y" * 1000})

    headers = message.encode(serializers.get("json")).headers

    assert len(headers["argsrepr"]) == 200
    assert headers["argsrepr"].endswith("...")
    assert len(headers["kwargsrepr"]) == 200


# Round trips.


@pytest.mark.parametrize("name", SAFE)
def test_round_trip(serializers: SerializerRegistry, name: str) -> None:
    eta = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    sent = TaskMessage(
        "app.add",
        (1, "two", [3.5, None], {"nested": True}),
        {"k": "v", "n": [1, 2]},
        id="child",
        root_id="root",
        parent_id="parent",
        group_id="group-1",
        retries=2,
        eta=eta,
        expires=eta + dt.timedelta(minutes=5),
        time_limit=30.0,
        soft_time_limit=25.0,
        reply_to="caller.reply",
        priority=3,
        headers={"tenant": "a"},
    )

    envelope = sent.encode(serializers.get(name))
    got = TaskMessage.decode(envelope, serializers, accepted(serializers))

    assert envelope.content_type == serializers.get(name).content_type
    assert got == replace(sent, args=list(sent.args))


def test_decode_accepts_content_type_by_alias(serializers: SerializerRegistry) -> None:
    envelope = valid_envelope(serializers)

    got = TaskMessage.decode(envelope, serializers, serializers.content_types(["application/json"]))

    assert got.args == [1, 2]


def test_decode_celery_three_part_body(serializers: SerializerRegistry) -> None:
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    envelope = valid_envelope(serializers, body=json.dumps([[1, 2], {"z": 3}, embed]).encode())

    got = TaskMessage.decode(envelope, serializers, accepted(serializers))

    assert (got.args, got.kwargs) == ([1, 2], {"z": 3})


def test_decode_celery_style_message_without_our_headers(serializers: SerializerRegistry) -> None:
    # What a Celery client publishes: protocol v2 headers, no x-amqpworker-protocol.
    envelope = Envelope(
        body=json.dumps([[4, 6], {}, {"callbacks": None}]).encode(),
        headers={
            "lang": "py",
            "task": "proj.tasks.add",
            "id": "celery-id",
            "root_id": "celery-id",
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "timelimit": [None, None],
            "argsrepr": "(4, 6)",
            "kwargsrepr": "{}",
            "origin": "gen1@host",
        },
        content_type="application/json",
        correlation_id="celery-id",
        reply_to="celery-reply",
    )

    got = TaskMessage.decode(envelope, serializers, accepted(serializers))

    assert got.task == "proj.tasks.add"
    assert got.id == "celery-id"
    assert got.args == [4, 6]
    assert got.reply_to == "celery-reply"
    assert got.ignore_result is False
    assert got.headers == {}


def test_decode_falls_back_to_properties_for_name_and_id(serializers: SerializerRegistry) -> None:
    envelope = Envelope(
        body=b"[[], {}]",
        content_type="application/json",
        type="by.type",
        correlation_id="by-correlation",
    )

    got = TaskMessage.decode(envelope, serializers, accepted(serializers))

    assert (got.task, got.id) == ("by.type", "by-correlation")
    assert got.retries == 0


def test_decode_naive_times_are_utc_by_default(serializers: SerializerRegistry) -> None:
    envelope = with_headers(serializers, eta="2030-01-02T03:04:05")

    got = TaskMessage.decode(envelope, serializers, accepted(serializers))

    assert got.eta == dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_decode_naive_times_are_in_the_given_time_zone(serializers: SerializerRegistry) -> None:
    """The worker passes the app's ``timezone``: the same rule as when publishing."""
    envelope = with_headers(serializers, eta="2030-01-02T03:04:05", expires="2030-01-02T04:00:00")
    paris = ZoneInfo("Europe/Paris")

    got = TaskMessage.decode(envelope, serializers, accepted(serializers), paris)

    assert got.eta == dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=paris)
    assert got.expires == dt.datetime(2030, 1, 2, 4, 0, 0, tzinfo=paris)


def test_decode_keeps_user_headers_only(serializers: SerializerRegistry) -> None:
    envelope = with_headers(serializers, tenant="a", trace="t-1")

    got = TaskMessage.decode(envelope, serializers, accepted(serializers))

    assert got.headers == {"tenant": "a", "trace": "t-1"}


# Content types and serializers.


def test_pickle_is_refused_unless_accepted(serializers: SerializerRegistry) -> None:
    envelope = TaskMessage("app.add", (1,), id="p").encode(serializers.get("pickle"))
    assert pickle.loads(envelope.body) == [[1], {}]

    with pytest.raises(ContentDisallowed, match="application/x-python-serialize") as info:
        TaskMessage.decode(envelope, serializers, accepted(serializers))

    assert info.value.reason == "content-type-not-accepted"
    got = TaskMessage.decode(envelope, serializers, accepted(serializers, "json", "pickle"))
    assert got.args == [1]


def test_refused_content_is_never_passed_to_loads(serializers: SerializerRegistry) -> None:
    loaded: list[bytes] = []

    def loads(data: bytes) -> Any:
        loaded.append(data)
        return json.loads(data)

    serializers.register(
        Serializer("spy", "application/x-spy", lambda v: json.dumps(v).encode(), loads)
    )
    envelope = TaskMessage("app.add", (1,), id="s").encode(serializers.get("spy"))

    with pytest.raises(ContentDisallowed):
        TaskMessage.decode(envelope, serializers, accepted(serializers))
    assert loaded == []

    got = TaskMessage.decode(envelope, serializers, accepted(serializers, "spy"))
    assert got.args == [1]
    assert loaded == [envelope.body]


@pytest.mark.parametrize("content_type", [None, "", "text/plain"])
def test_missing_or_unknown_content_type_is_disallowed(
    serializers: SerializerRegistry, content_type: str | None
) -> None:
    envelope = valid_envelope(serializers, content_type=content_type)

    with pytest.raises(ContentDisallowed, match="is not accepted"):
        TaskMessage.decode(envelope, serializers, accepted(serializers))


def test_custom_serializer_registration(serializers: SerializerRegistry) -> None:
    custom = Serializer(
        "upper-json",
        "application/x-upper-json",
        lambda value: json.dumps(value).upper().encode(),
        lambda data: json.loads(data.decode().lower()),
    )

    serializers.register(custom)
    envelope = TaskMessage("app.add", ("abc",), id="c").encode(serializers.get("upper-json"))
    got = TaskMessage.decode(envelope, serializers, accepted(serializers, "upper-json"))

    assert serializers.get("application/x-upper-json") is custom
    assert envelope.body == b'[["ABC"], {}]'
    assert envelope.content_type == "application/x-upper-json"
    assert got.args == ["abc"]


def test_unknown_serializer_is_improperly_configured(serializers: SerializerRegistry) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"unknown serializer 'xml' \(known: .*json"):
        serializers.get("xml")
    with pytest.raises(ImproperlyConfigured, match="'xml'"):
        serializers.content_types(["json", "xml"])


def test_json_serializer_handles_common_types(serializers: SerializerRegistry) -> None:
    moment = dt.datetime(2030, 1, 2, tzinfo=UTC)

    body = serializers.get("json").dumps([[moment, {1, 2}], {}])

    assert json.loads(body) == [["2030-01-02T00:00:00+00:00", [1, 2]], {}]


def test_json_serializer_refuses_unknown_objects(serializers: SerializerRegistry) -> None:
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        serializers.get("json").dumps([object()])


# Malformed messages.


def _bad_envelopes(registry: SerializerRegistry) -> dict[str, tuple[Envelope, str]]:
    base = valid_envelope(registry)
    headers = dict(base.headers)

    def drop(*names: str) -> dict[str, Any]:
        return {k: v for k, v in headers.items() if k not in names}

    return {
        "missing task": (replace(base, headers=drop("task"), type=None), "header 'task'"),
        "task not a string": (replace(base, headers={**headers, "task": 5}), "header 'task'"),
        "id not a string": (
            replace(base, headers={**headers, "id": 5}, correlation_id=None, message_id=None),
            "header 'id'",
        ),
        "missing id": (
            replace(base, headers=drop("id"), correlation_id=None, message_id=None),
            "header 'id'",
        ),
        "negative retries": (replace(base, headers={**headers, "retries": -1}), "'retries'"),
        "bool retries": (replace(base, headers={**headers, "retries": True}), "'retries'"),
        "string retries": (replace(base, headers={**headers, "retries": "1"}), "'retries'"),
        "body not a list": (replace(base, body=b'{"args": []}'), "body must be a list"),
        "body too short": (replace(base, body=b"[[]]"), "body must be a list"),
        "args not a list": (replace(base, body=b'["1, 2", {}]'), "args must be a list, not str"),
        "kwargs not a mapping": (replace(base, body=b"[[], [1]]"), "kwargs must be a mapping"),
        "kwargs with int keys": (
            replace(
                base,
                body=yaml.safe_dump([[], {1: "a"}]).encode(),
                content_type="application/x-yaml",
            ),
            "string keys",
        ),
        "undecodable json": (replace(base, body=b"[[1, 2], {"), "cannot decode application/json"),
        "undecodable msgpack": (
            replace(base, body=b"\xc1", content_type="application/x-msgpack"),
            "cannot decode application/x-msgpack",
        ),
        "bad eta": (replace(base, headers={**headers, "eta": "tomorrow"}), "'eta'"),
        "eta not a string": (replace(base, headers={**headers, "eta": 12}), "'eta'"),
        "bad expires": (replace(base, headers={**headers, "expires": "soon"}), "'expires'"),
        "timelimit not a list": (
            replace(base, headers={**headers, "timelimit": 30}),
            "'timelimit'",
        ),
        "timelimit of three": (
            replace(base, headers={**headers, "timelimit": [1, 2, 3]}),
            "'timelimit'",
        ),
        "timelimit zero": (
            replace(base, headers={**headers, "timelimit": [0, None]}),
            "'timelimit'",
        ),
        "timelimit bool": (
            replace(base, headers={**headers, "timelimit": [True, None]}),
            "'timelimit'",
        ),
        "newer wire format": (
            replace(base, headers={**headers, PROTOCOL_HEADER: 2}),
            "upgrade the worker",
        ),
        "wire format not a number": (
            replace(base, headers={**headers, PROTOCOL_HEADER: "1"}),
            "wire format version",
        ),
        "timelimit text": (
            replace(base, headers={**headers, "timelimit": ["30", None]}),
            "'timelimit'",
        ),
        "parent_id not a string": (
            replace(base, headers={**headers, "parent_id": 7}),
            "'parent_id'",
        ),
    }


UNDECODABLE = {"undecodable json", "undecodable msgpack"}
BAD_CASES = list(_bad_envelopes(default_serializers()))


@pytest.mark.parametrize("case", BAD_CASES)
def test_malformed_message_raises_decode_error(serializers: SerializerRegistry, case: str) -> None:
    envelope, expected = _bad_envelopes(serializers)[case]

    with pytest.raises(DecodeError) as info:
        TaskMessage.decode(envelope, serializers, accepted(serializers))

    assert expected in str(info.value)
    assert isinstance(info.value, MessageError)
    # The reason is what a person reads in the dead-letter copy's headers.
    assert info.value.reason == ("undecodable" if case in UNDECODABLE else "malformed")


def test_false_is_not_a_retry_count(serializers: SerializerRegistry) -> None:
    with pytest.raises(DecodeError, match="'retries'"):
        TaskMessage.decode(
            with_headers(serializers, retries=False), serializers, accepted(serializers)
        )


def test_expires_sets_the_expiration_property_when_nobody_waits(
    serializers: SerializerRegistry,
) -> None:
    expires = dt.datetime.now(UTC) + dt.timedelta(seconds=60)
    message = TaskMessage("app.add", expires=expires, ignore_result=True)

    envelope = message.encode(serializers.get("json"))

    assert envelope.expiration is not None
    assert 0 < envelope.expiration <= 60


def test_no_expiration_property_when_a_caller_waits_for_revoked(
    serializers: SerializerRegistry,
) -> None:
    expires = dt.datetime.now(UTC) + dt.timedelta(seconds=60)
    envelope = TaskMessage("app.add", expires=expires).encode(serializers.get("json"))
    assert envelope.expiration is None
    assert envelope.headers["expires"] == expires.isoformat()


def test_no_expiration_property_on_a_delayed_message(serializers: SerializerRegistry) -> None:
    now = dt.datetime.now(UTC)
    message = TaskMessage(
        "app.add",
        eta=now + dt.timedelta(seconds=30),
        expires=now + dt.timedelta(seconds=60),
        ignore_result=True,
    )
    assert message.encode(serializers.get("json")).expiration is None


def test_history_headers_are_not_user_headers(serializers: SerializerRegistry) -> None:
    envelope = TaskMessage("app.add", headers={"tenant": "a"}).encode(serializers.get("json"))
    headers = {
        **envelope.headers,
        "x-death": [{"queue": "amqpworker.delay.03", "reason": "expired"}],
        "x-amqpworker-deliveries": 2,
    }
    decoded = TaskMessage.decode(
        replace(envelope, headers=headers), serializers, accepted(serializers)
    )
    assert dict(decoded.headers) == {"tenant": "a"}


# Result messages.


@pytest.mark.parametrize("name", SAFE)
def test_result_message_round_trip(serializers: SerializerRegistry, name: str) -> None:
    sent = ResultMessage(
        task_id="task-1",
        status="PROGRESS",
        result={"current": 1, "total": 10},
        traceback=None,
        date_done="2030-01-02T03:04:05+00:00",
        task_name="app.count",
    )

    envelope = sent.encode(serializers.get(name))
    got = ResultMessage.decode(envelope, serializers, accepted(serializers))

    assert got == sent
    assert envelope.correlation_id == "task-1"
    assert envelope.headers == {"task_id": "task-1", "status": "PROGRESS"}
    assert envelope.persistent is False


def test_result_message_task_id_from_correlation_id(serializers: SerializerRegistry) -> None:
    envelope = Envelope(
        body=msgpack.packb({"status": "SUCCESS", "result": 3}),
        content_type="application/x-msgpack",
        correlation_id="by-correlation",
    )

    got = ResultMessage.decode(envelope, serializers, accepted(serializers))

    assert (got.task_id, got.status, got.result) == ("by-correlation", "SUCCESS", 3)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[1, 2]", "must be a mapping"),
        (b'{"task_id": "t"}', "'status'"),
        (b'{"task_id": 5, "status": "SUCCESS"}', "'task_id'"),
        (b"{", "cannot decode"),
    ],
)
def test_malformed_result_message(
    serializers: SerializerRegistry, body: bytes, expected: str
) -> None:
    envelope = Envelope(body=body, content_type="application/json")

    with pytest.raises(DecodeError, match=expected):
        ResultMessage.decode(envelope, serializers, accepted(serializers))


def test_result_message_refuses_pickle(serializers: SerializerRegistry) -> None:
    envelope = ResultMessage("t", "SUCCESS", 1).encode(serializers.get("pickle"))

    with pytest.raises(ContentDisallowed):
        ResultMessage.decode(envelope, serializers, accepted(serializers))


# Exceptions as data.


class Outer:
    class InnerError(Exception):
        pass


def test_exception_to_data_plain_args() -> None:
    assert exception_to_data(ValueError("bad", 3, 1.5, None, True)) == {
        "exc_type": "ValueError",
        "exc_module": "builtins",
        "exc_message": ["bad", 3, 1.5, None, True],
    }


def test_exception_to_data_unserializable_args_become_reprs(
    serializers: SerializerRegistry,
) -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<Thing>"

    data = exception_to_data(KeyError(Thing(), ["x", Thing()], "ok"))

    assert data["exc_message"] == ["<Thing>", "['x', <Thing>]", "ok"]
    # and the whole failure now travels as JSON
    envelope = ResultMessage("t", "FAILURE", data).encode(serializers.get("json"))
    assert json.loads(envelope.body)["result"] == data


def test_exception_to_data_nested_class() -> None:
    data = exception_to_data(Outer.InnerError("x"))

    assert data["exc_type"] == "Outer.InnerError"
    assert data["exc_module"] == __name__


@pytest.mark.parametrize(
    ("header", "value", "problem"),
    [
        ("chord", '{"id": "c", "size": 2, "index": 0}', "needs 'body'"),
        ("chain", '[{"args": []}]', "without a task name"),
        ("callbacks", '{"task": "x"}', "must be JSON list"),
        ("chain", "not json", "is not JSON"),
    ],
)
def test_malformed_workflow_headers_are_refused_at_decode(
    serializers: SerializerRegistry, header: str, value: str, problem: str
) -> None:
    envelope = TaskMessage("app.add").encode(serializers.get("json"))
    broken = replace(envelope, headers={**envelope.headers, header: value})
    with pytest.raises(DecodeError, match=problem):
        TaskMessage.decode(broken, serializers, accepted(serializers))


def test_workflow_headers_carry_datetimes_as_iso_text(serializers: SerializerRegistry) -> None:
    when = dt.datetime(2030, 1, 1, tzinfo=UTC)
    step = {"task": "app.add", "args": [1], "kwargs": {}, "options": {"eta": when}}
    envelope = TaskMessage("app.add", chain=[step]).encode(serializers.get("json"))
    decoded = TaskMessage.decode(envelope, serializers, accepted(serializers))
    assert decoded.chain[0]["options"]["eta"] == when.isoformat()
