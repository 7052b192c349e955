"""Fuzzing the wire decoders: whatever arrives, the answer is a message or a MessageError.

A worker dead-letters a message whose decoding raises :class:`MessageError`; any other
exception (RecursionError, ValueError, TypeError, UnicodeError...) escapes its handler,
and the delivery is never settled. So for arbitrary envelopes (the header values pamqp
can hand over: str, bytes, bytearray, int, float, Decimal, bool, None, datetime, nested
tables and arrays, very deep arrays; arbitrary and deeply nested bodies; known and junk
content types) ``TaskMessage.decode`` and ``ResultMessage.decode`` either return or raise
MessageError, nothing else.

``rebuild_exception`` reads data a message carries (a FAILURE state on a reply queue or
in a chord queue): it must never import a module because a message named it, and it
always returns an exception.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from amqpworker.app.results import rebuild_exception
from amqpworker.exceptions import MessageError
from amqpworker.wire import Envelope, ResultMessage, TaskMessage, default_serializers
from amqpworker.wire.message import CANVAS_HEADERS, CORE_HEADERS

SERIALIZERS = default_serializers()
#: What a worker accepts by default, and every serializer that does not run code.
ACCEPTED = SERIALIZERS.content_types(["json", "msgpack", "yaml"])
KNOWN_TYPES = ["application/json", "application/x-msgpack", "application/x-yaml"]
PICKLE = "application/x-python-serialize"
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Building blocks.


def nested_list(depth: int) -> list[Any]:
    """``depth`` lists inside each other, built without recursion."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_json(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
datetimes = st.datetimes(
    min_value=dt.datetime(1970, 1, 1), timezones=st.none() | st.just(dt.timezone.utc)
)
#: The leaf values pamqp decodes a field table into (bytes: a long string not UTF-8).
amqp_scalars = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.binary(max_size=40).map(bytearray),
    int64,
    st.floats(width=32),
    st.booleans(),
    st.none(),
    datetimes,
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-1000, max_value=1000),
)
amqp_values = st.one_of(
    st.recursive(
        amqp_scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=12,
    ),
    st.integers(min_value=1, max_value=20_000).map(nested_list),
)
json_values = st.recursive(
    st.none() | st.booleans() | int64 | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
signatures = st.fixed_dictionaries(
    {"task": st.text(max_size=20)},
    optional={
        "args": st.lists(json_values, max_size=3),
        "kwargs": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        "options": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
        "subtask_type": st.none() | st.sampled_from(["chain", "group", "chord", "x"]),
        "immutable": st.booleans(),
    },
)
chords = st.fixed_dictionaries(
    {
        "id": st.text(max_size=10) | json_values,
        "size": st.integers(0, 10) | json_values,
        "index": st.integers(0, 10) | json_values,
        "body": signatures | json_values,
    },
    optional={"then": st.lists(signatures, max_size=2)},
)
#: Values of the JSON-text canvas headers: valid, wrong shapes, junk, deep, huge numbers.
canvas_texts = st.one_of(
    st.lists(signatures, max_size=3).map(json.dumps),
    chords.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=40),
    st.integers(min_value=1, max_value=20_000).map(nested_json),
    st.integers(min_value=1, max_value=20_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(min_value=1, max_value=10_000).map(lambda n: "[" + "7" * n + "]"),
)
canvas_values = st.one_of(
    canvas_texts,
    canvas_texts.map(str.encode),
    st.binary(max_size=40),
    amqp_values,
)
core_values = st.one_of(
    amqp_values,
    st.text(max_size=30),
    st.sampled_from(["2024-01-01T00:00:00+00:00", "2024-01-01", "not a time", "", "py"]),
    st.lists(st.none() | st.floats() | st.integers(-5, 100) | st.text(max_size=3), max_size=3),
)
header_names = st.one_of(
    st.sampled_from(sorted(CORE_HEADERS)),
    st.sampled_from(["x-death", "x-amqpworker-deliveries", "x-amqpworker-reason", "shadow"]),
    st.text(max_size=20),
)


@st.composite
def header_tables(draw: st.DrawFn) -> dict[str, Any]:
    """Headers: often a valid core set with some values replaced, sometimes anything."""
    headers: dict[str, Any] = {}
    if draw(st.booleans()):
        headers.update(
            {
                "lang": "py",
                "task": draw(st.sampled_from(["app.add", "x"]) | st.text(max_size=10)),
                "id": draw(st.text(min_size=1, max_size=10)),
                "root_id": draw(st.none() | st.text(max_size=10)),
                "retries": draw(st.integers(-2, 5)),
                "x-amqpworker-protocol": 1,
            }
        )
    for name in draw(st.lists(header_names, max_size=6)):
        if name in CANVAS_HEADERS:
            headers[name] = draw(canvas_values)
        elif name in CORE_HEADERS:
            headers[name] = draw(core_values)
        else:
            headers[name] = draw(amqp_values)
    return headers


task_bodies = st.tuples(
    st.lists(json_values, max_size=3), st.dictionaries(st.text(max_size=5), json_values)
).map(list)
body_payloads = st.one_of(task_bodies, json_values, st.just([[1, 2], {1: 2}]))


@st.composite
def bodies(draw: st.DrawFn, content_type: str | None) -> bytes:
    kind = draw(st.sampled_from(["encoded", "binary", "deep", "deep-yaml"]))
    if kind == "binary":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        return nested_json(draw(st.integers(1, 100_000))).encode()
    if kind == "deep-yaml":
        return ("- " * draw(st.integers(1, 3_000)) + "1").encode()
    payload = draw(body_payloads)
    if content_type == "application/x-msgpack":
        try:
            return msgpack.packb(payload, use_bin_type=True)  # type: ignore[no-any-return]
        except (TypeError, ValueError, OverflowError):
            return b"\x90"
    if content_type == "application/x-yaml":
        return yaml.safe_dump(payload).encode()
    return json.dumps(payload).encode()


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    content_type = draw(
        st.sampled_from([*KNOWN_TYPES, PICKLE, "", "text/plain", "APPLICATION/JSON"])
        | st.none()
        | st.text(max_size=20)
    )
    return Envelope(
        body=draw(bodies(content_type)),
        headers=draw(header_tables()),
        content_type=content_type,
        content_encoding=draw(st.none() | st.sampled_from(["utf-8", "binary", "gzip"])),
        message_id=draw(st.none() | st.text(max_size=10)),
        correlation_id=draw(st.none() | st.text(max_size=10)),
        reply_to=draw(st.none() | st.text(max_size=10)),
        priority=draw(st.none() | st.integers(0, 255)),
        type=draw(st.none() | st.text(max_size=10)),
    )


def valid_envelope(**headers: Any) -> Envelope:
    """A well-formed add(1, 2) message with some headers replaced."""
    base = TaskMessage("app.add", (1, 2), {}, id="t-1").encode(SERIALIZERS.get("json"))
    return Envelope(
        body=base.body,
        headers={**base.headers, **headers},
        content_type=base.content_type,
        correlation_id="t-1",
    )


# TaskMessage.decode.


def decode_or_message_error(envelope: Envelope) -> None:
    try:
        decoded = TaskMessage.decode(envelope, SERIALIZERS, ACCEPTED)
    except MessageError:
        return
    assert isinstance(decoded, TaskMessage)


@FUZZ
@given(envelopes())
@example(valid_envelope(chain=nested_json(10_000)))
@example(valid_envelope(chain="[" + "7" * 5_000 + "]"))
def test_task_decode_returns_a_message_or_raises_message_error(envelope: Envelope) -> None:
    decode_or_message_error(envelope)


@FUZZ
@given(
    name=st.sampled_from(CANVAS_HEADERS),
    value=canvas_values,
)
def test_canvas_headers_of_any_shape_decode_or_raise_message_error(name: str, value: Any) -> None:
    """The canvas headers are the only ones parsed further (as JSON): fuzz them harder."""
    decode_or_message_error(valid_envelope(**{name: value}))


@pytest.mark.parametrize("name", CANVAS_HEADERS)
@pytest.mark.parametrize(
    "text",
    [
        pytest.param(nested_json(10_000), id="10000-nested-lists"),
        pytest.param(nested_json(10_000, "[{" + '"a":', "}]"), id="10000-nested-objects"),
        pytest.param("[" + "7" * 5_000 + "]", id="5000-digit-number"),
        pytest.param(nested_json(10_000).encode(), id="10000-nested-lists-as-bytes"),
        pytest.param(b"\xff\xfe\xfd" * 100, id="not-utf-8"),
    ],
)
def test_canvas_header_poison_is_a_malformed_message(name: str, text: Any) -> None:
    """Named examples of the fuzz: each must be refused as a MessageError (dead-lettered)."""
    with pytest.raises(MessageError):
        TaskMessage.decode(valid_envelope(**{name: text}), SERIALIZERS, ACCEPTED)


@FUZZ
@given(name=st.sampled_from(sorted(CORE_HEADERS)), value=core_values | canvas_values)
def test_any_core_header_value_decodes_or_raises_message_error(name: str, value: Any) -> None:
    decode_or_message_error(valid_envelope(**{name: value}))


@FUZZ
@given(envelopes())
def test_task_decode_with_default_accept_content(envelope: Envelope) -> None:
    """With only JSON accepted (the default), the same holds, and nothing else is decoded."""
    with contextlib.suppress(MessageError):
        TaskMessage.decode(envelope, SERIALIZERS, SERIALIZERS.content_types(["json"]))


# ResultMessage.decode.

result_bodies = st.one_of(
    st.fixed_dictionaries(
        {"task_id": json_values, "status": json_values},
        optional={"result": json_values, "traceback": json_values, "date_done": json_values},
    ).map(lambda body: json.dumps(body).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=100),
    st.integers(1, 100_000).map(lambda n: nested_json(n, '{"a":', "}").encode()),
)


@FUZZ
@given(
    body=result_bodies,
    content_type=st.sampled_from([*KNOWN_TYPES, PICKLE]) | st.none() | st.text(max_size=10),
    correlation_id=st.none() | st.text(max_size=10),
)
def test_result_decode_returns_a_result_or_raises_message_error(
    body: bytes, content_type: str | None, correlation_id: str | None
) -> None:
    envelope = Envelope(body=body, content_type=content_type, correlation_id=correlation_id)
    try:
        decoded = ResultMessage.decode(envelope, SERIALIZERS, ACCEPTED)
    except MessageError:
        return
    assert isinstance(decoded, ResultMessage)
    assert isinstance(decoded.task_id, str)
    assert isinstance(decoded.status, str)


# rebuild_exception.


@pytest.fixture(scope="module")
def probe_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A module on sys.path, never imported, that leaves a file behind if it is imported."""
    folder = tmp_path_factory.mktemp("probe")
    name = "amqpworker_fuzz_probe_module"
    marker = folder / "imported"
    (folder / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "class Boom(Exception):\n    pass\n"
    )
    sys.path.insert(0, str(folder))
    try:
        yield name, marker
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)


#: Modules that exist on disk and that nothing here imports (harmless if imported).
NOT_IMPORTED = ["colorsys", "tabnanny", "wave", "xdrlib", "nntplib", "mailcap"]


def exception_data(probe: str) -> st.SearchStrategy[dict[str, Any]]:
    modules = st.sampled_from(
        [probe, *NOT_IMPORTED, "builtins", "os", "amqpworker.exceptions", f"{probe}.sub"]
    )
    types = st.sampled_from(
        ["Boom", "Exception", "ValueError", "system", "TaskError", "TopologyMismatch", "Popen"]
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "exc_module": modules | json_values,
            "exc_type": types | json_values,
            "exc_message": st.lists(json_values, max_size=3) | json_values,
        },
    )


def rebuild_without_imports(data: Any, traceback: Any, probe: tuple[str, Path]) -> None:
    name, marker = probe
    before = set(sys.modules)
    try:
        rebuilt = rebuild_exception(data, traceback)
    finally:
        imported = set(sys.modules) - before
        for module in imported:  # the next example starts from the same state
            sys.modules.pop(module, None)
        created = marker.exists()
        marker.unlink(missing_ok=True)
    assert not imported, f"rebuild_exception imported {sorted(imported)} for {data!r}"
    assert not created, f"rebuild_exception imported {name} for {data!r}"
    assert isinstance(rebuilt, BaseException)


def test_rebuild_exception_does_not_import_the_module_a_message_names(
    probe_module: tuple[str, Path],
) -> None:
    name, _ = probe_module
    data = {"exc_module": name, "exc_type": "Boom", "exc_message": ["forged"]}
    rebuild_without_imports(data, None, probe_module)


@settings(FUZZ, suppress_health_check=[*FUZZ.suppress_health_check])
@given(data=st.data())
def test_rebuild_exception_of_any_data_imports_nothing_and_returns_an_exception(
    probe_module: tuple[str, Path], data: st.DataObject
) -> None:
    exc_data = data.draw(exception_data(probe_module[0]))
    traceback = data.draw(st.none() | st.text(max_size=50))
    rebuild_without_imports(exc_data, traceback, probe_module)


@pytest.mark.parametrize(
    "data",
    [
        {"exc_module": "builtins", "exc_type": "ValueError", "exc_message": ["x"]},
        {"exc_module": "amqpworker.exceptions", "exc_type": "TopologyMismatch", "exc_message": 5},
        {"exc_module": "os", "exc_type": "system", "exc_message": ["true"]},
        {"exc_module": None, "exc_type": None, "exc_message": None},
        {"exc_type": "KeyboardInterrupt"},
        {"exc_type": "A.B.C", "exc_message": {"nested": [1, 2]}},
    ],
)
def test_rebuild_exception_of_known_shapes(data: dict[str, Any]) -> None:
    rebuilt = rebuild_exception(data)
    assert isinstance(rebuilt, Exception)
    if data.get("exc_type") == "ValueError":
        assert isinstance(rebuilt, ValueError)
    else:
        assert not isinstance(rebuilt, KeyboardInterrupt)
