"""Poison messages against a real worker: every one ends executed or in ``<queue>.dlq``.

Pass figure (issue): undecodable bodies, unknown tasks, bad and non-UTF-8 headers, deep
nesting, oversized messages, and 20,000 fuzzed messages: 0 worker crashes; 0 messages
unsettled; every message executed or in ``<queue>.dlq`` with a reason; no import or
unpickling caused by a message.

Each named case publishes its poison, then checks that the worker

* dead-letters it exactly once (one DLQ copy per poison message, not a copy per spin),
  with an ``x-amqpworker-reason`` header from the documented list,
* still serves: a normal task round-trips afterwards,
* settled everything: 0 ready and 0 unacknowledged on the queue while it runs
  (``rabbitmqctl``), and 0 messages after it stopped (a message it held unacked comes
  back then),
* got each message once (no requeue loop), and did not crash.

The fuzz run publishes seeded-random valid ``add`` calls and garbage (each garbage
message has at least one defect that must send it to the DLQ) with random user headers,
and checks that the counts add up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import json
import pickle
import random
import struct
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import msgpack
import pamqp.encode
import pytest
from pamqp.header import ContentHeader

from amqpworker import App, AsyncResult
from amqpworker.wire.results import FAILURE, SUCCESS

from .conftest import BrokerAdmin, RunningWorker

ADD = "tests.integration.sample_app.add"
JSON = "application/json"
MSGPACK = "application/x-msgpack"
YAML = "application/x-yaml"
PICKLE = "application/x-python-serialize"
#: The reasons docs/protocol.md section 6 lists for a worker's dead-letter copy.
DOCUMENTED_REASONS = frozenset(
    {
        "malformed",
        "undecodable",
        "content-type-not-accepted",
        "unknown-task",
        "crash-looping",
        "failed-after-retries",
        "workflow-failed",
        "eta-out-of-range",
        "retry-not-published",
        "delay-not-published",
        "chord-join-failed",
        "worker-error",
    }
)
#: The reasons a message the worker cannot run may get (crash-looping would mean a loop).
BAD_MESSAGE_REASONS = frozenset(
    {"malformed", "undecodable", "content-type-not-accepted", "unknown-task"}
)
#: The largest content header frame payload RabbitMQ takes with its default frame_max.
FRAME_PAYLOAD_LIMIT = 131_072 - 8
#: Bounds of the waits of one named case; a case that stalls or spins fails after these.
OUTCOME_TIMEOUT = 12.0
ROUND_TRIP_TIMEOUT = 10.0


# Sending what aio-pika would refuse to build.


class NotUtf8(str):
    """A header value that pamqp writes as the raw bytes given, which are not UTF-8.

    pamqp encodes a ``str`` with ``value.encode("utf-8")``; this one answers with its raw
    bytes, so a long string (``S``) holding invalid UTF-8 goes on the wire. pamqp decodes
    it on the worker's side as ``bytes``.
    """

    raw: bytes

    def __new__(cls, raw: bytes = b"\xff\xfe\xfd" * 100) -> NotUtf8:
        made = super().__new__(cls, "not-utf-8")
        made.raw = raw
        return made

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


class RawFieldValue(bytes):
    """An already encoded AMQP field value (type tag included), copied to the wire as is."""


def nested_array(depth: int) -> RawFieldValue:
    """``depth`` AMQP field arrays inside each other, built without recursion."""
    encoded = b"A" + struct.pack(">I", 0)
    for _ in range(depth - 1):
        encoded = b"A" + struct.pack(">I", len(encoded)) + encoded
    return RawFieldValue(encoded)


@contextlib.contextmanager
def raw_field_values() -> Iterator[None]:
    """Let pamqp put :class:`RawFieldValue` headers on the wire (for this publisher only)."""
    original = pamqp.encode.encode_table_value

    def encode(value: Any) -> bytes:
        if isinstance(value, RawFieldValue):
            return bytes(value)
        return original(value)

    pamqp.encode.encode_table_value = encode  # type: ignore[assignment]
    try:
        yield
    finally:
        pamqp.encode.encode_table_value = original  # type: ignore[assignment]


class MarkerOnUnpickle:
    """Unpickling this creates a file: proof that a body was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def write_probe_module(folder: Path) -> tuple[str, Path]:
    """A module on disk, not imported, that leaves a file behind when it is imported."""
    name = f"poison_probe_{uuid.uuid4().hex[:12]}"
    marker = folder / f"{name}.imported"
    (folder / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "class Boom(Exception):\n    pass\n"
    )
    return name, marker


# Broker helpers.


async def _publish(url: str, queue: str, messages: list[aio_pika.Message], batch: int) -> None:
    """Publish on one connection, waiting for confirms a batch at a time."""
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        exchange = channel.default_exchange
        for start in range(0, len(messages), batch):
            await asyncio.gather(
                *(
                    exchange.publish(message, routing_key=queue)
                    for message in messages[start : start + batch]
                )
            )
    finally:
        await connection.close()


def publish(url: str, queue: str, messages: list[aio_pika.Message], batch: int = 500) -> None:
    with raw_field_values():
        asyncio.run(_publish(url, queue, messages, batch))


async def _take_all(url: str, queue: str, expected: int, timeout: float) -> list[Any]:
    """Consume (no-ack) up to ``expected`` messages, or what arrives within ``timeout``."""
    connection = await aio_pika.connect(url, timeout=10)
    taken: list[Any] = []
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        declared = await channel.declare_queue(queue, passive=True)
        done = asyncio.Event()

        async def on_message(message: Any) -> None:
            taken.append(message)
            if len(taken) >= expected:
                done.set()

        tag = await declared.consume(on_message, no_ack=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
        await declared.cancel(tag)
    finally:
        await connection.close()
    return taken


def take_all(url: str, queue: str, expected: int, timeout: float = 30) -> list[Any]:
    if expected <= 0:
        return []
    return asyncio.run(_take_all(url, queue, expected, timeout))


def queue_depth(queue: str) -> tuple[int, int] | None:
    """(ready, unacknowledged) of one queue, from ``rabbitmqctl``; None if unreadable."""
    try:
        listing = subprocess.run(
            [
                "rabbitmqctl",
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "messages_ready",
                "messages_unacknowledged",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in listing.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    return None


def poll(condition: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """True as soon as ``condition()`` holds; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def count_or_zero(admin: BrokerAdmin, queue: str) -> int:
    try:
        return admin.message_count(queue)
    except Exception:
        return 0


def reason_of(copy: Any) -> str:
    return str((copy.headers or {}).get("x-amqpworker-reason"))


def task_headers(task_id: str, task: str = ADD, **extra: Any) -> dict[str, Any]:
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "retries": 0,
        "x-amqpworker-protocol": 1,
        **extra,
    }


def message(
    task_id: str,
    body: bytes = b"[[2,3],{}]",
    content_type: str | None = JSON,
    headers: dict[str, Any] | None = None,
    reply_to: str | None = None,
) -> aio_pika.Message:
    return aio_pika.Message(
        body=body,
        headers=task_headers(task_id) if headers is None else headers,
        content_type=content_type,
        message_id=task_id,
        correlation_id=task_id,
        reply_to=reply_to,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


# The named cases.


@dataclass
class Poison:
    """Messages of one kind of poison, and what must become of each."""

    #: (message, acceptable DLQ reasons; empty: it must run and return 5)
    messages: list[tuple[aio_pika.Message, frozenset[str]]]
    #: Files whose existence would prove an unpickling or an import by the worker.
    must_not_exist: list[Path] = field(default_factory=list)
    #: Either outcome is right for these ids: run (returning 5) or dead-lettered.
    run_or_dlq: frozenset[str] = frozenset()


def _bad(task_id: str, reasons: frozenset[str] | str, **fields: Any) -> tuple[Any, frozenset]:
    wanted = frozenset({reasons}) if isinstance(reasons, str) else reasons
    return message(task_id, **fields), wanted


def _id(case: str, n: int = 0) -> str:
    return f"{case}-{n}-{uuid.uuid4().hex[:8]}"


def undecodable_bodies(tmp: Path, reply_to: str) -> Poison:
    case = "undecodable"
    return Poison(
        [
            _bad(_id(case, 0), "undecodable", body=b"\x00\xff{not json"),
            _bad(_id(case, 1), "undecodable", body=b"\xc1", content_type=MSGPACK),
            _bad(_id(case, 2), "undecodable", body=b"[[1, 2], {}", content_type=YAML),
            _bad(_id(case, 3), "undecodable", body=b"", content_type=JSON),
            _bad(_id(case, 4), "undecodable", body=b"\xff" * 64, content_type=JSON),
        ]
    )


def unknown_tasks(tmp: Path, reply_to: str) -> Poison:
    case = "unknown"
    ids = [_id(case, n) for n in range(3)]
    return Poison(
        [
            _bad(ids[0], "unknown-task", headers=task_headers(ids[0], task="poison.no_such")),
            _bad(ids[1], "unknown-task", headers=task_headers(ids[1], task="x" * 5000)),
            _bad(ids[2], "unknown-task", headers=task_headers(ids[2], task="os.system")),
        ]
    )


def bad_header_types(tmp: Path, reply_to: str) -> Poison:
    case = "types"
    wrong: list[dict[str, Any]] = [
        {"id": {"nested": 1}},
        {"id": 12345},
        {"task": ["tests", "add"]},
        {"task": 7},
        {"retries": 1.5},
        {"retries": -1},
        {"x-amqpworker-protocol": "1"},
        {"timelimit": "30"},
        {"timelimit": [0, 1]},
        {"eta": 1700000000},
        {"expires": ["tomorrow"]},
        {"eta": "not a time"},
        {"group_index": 1.5},
        {"root_id": True},
        {"parent_id": 3},
        {"chord": {"id": "c", "size": 1}},  # a table, not JSON text
        {"callbacks": [{"task": ADD}]},  # an array, not JSON text
        {"chain": '[{"task": 1}'},
        {"chain": "[1, 2]"},
        {"errbacks": "{}"},
        {"chord": '{"id": "c"}'},
        {"task": bytearray(b"tests.integration.sample_app.add")},
        {"task": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)},
        {"task": decimal.Decimal("1.5")},
    ]
    messages = []
    for n, change in enumerate(wrong):
        task_id = _id(case, n)
        headers = {**task_headers(task_id), **change}
        messages.append(_bad(task_id, "malformed", headers=headers))
    return Poison(messages)


def non_utf8_core_headers(tmp: Path, reply_to: str) -> Poison:
    case = "non-utf8"
    messages = []
    for n, name in enumerate(["task", "id", "chain", "eta", "root_id"]):
        task_id = _id(case, n)
        headers = {**task_headers(task_id), name: NotUtf8()}
        messages.append(_bad(task_id, {"malformed", "undecodable"}, headers=headers))
    return Poison(messages)


def non_utf8_user_header(tmp: Path, reply_to: str) -> Poison:
    """A valid task whose user header is not UTF-8: it may run or be dead-lettered."""
    task_id = _id("non-utf8-user")
    headers = task_headers(task_id, note=NotUtf8(b"\xc3\x28" * 500))
    return Poison(
        [(message(task_id, headers=headers), BAD_MESSAGE_REASONS)], run_or_dlq=frozenset({task_id})
    )


def deep_chain(tmp: Path, reply_to: str) -> Poison:
    task_id = _id("deep-chain")
    headers = task_headers(task_id, chain="[" * 10_000 + "]" * 10_000)
    return Poison([(message(task_id, headers=headers), frozenset({"malformed"}))])


def huge_number_chain(tmp: Path, reply_to: str) -> Poison:
    """JSON that parses to an integer Python refuses to convert (over 4300 digits)."""
    task_id = _id("bigint-chain")
    headers = task_headers(task_id, chain="[" + "9" * 5000 + "]")
    return Poison([(message(task_id, headers=headers), frozenset({"malformed"}))])


def deep_header_array(tmp: Path, reply_to: str) -> Poison:
    """A user header of 5,000 AMQP arrays inside each other (25 kB on the wire).

    Too deep to decode at all: the whole table reads as one header saying so, and the
    message is malformed (its task name is lost with the rest of the table).
    """
    task_id = _id("deep-array")
    headers = task_headers(task_id, task="poison.no_such", deep=nested_array(5_000))
    return Poison([(message(task_id, headers=headers), frozenset({"malformed"}))])


def oversized_bodies(tmp: Path, reply_to: str) -> Poison:
    case = "oversized"
    rng = random.Random(7)
    garbage = rng.randbytes(4 * 1024 * 1024)
    big_json = json.dumps([list(range(400_000)), {}]).encode()  # 3 MB
    unknown = _id(case, 1)
    return Poison(
        [
            _bad(_id(case, 0), "undecodable", body=b"\xff" + garbage),
            _bad(
                unknown,
                "unknown-task",
                body=big_json,
                headers=task_headers(unknown, task="poison.no_such"),
            ),
        ]
    )


def frame_limit_headers(tmp: Path, reply_to: str) -> Poison:
    """Headers just under the frame limit: the DLQ copy, with its reason, would not fit."""
    task_id = _id("frame-limit")
    headers = task_headers(task_id, task="poison.no_such", pad="")
    probe = message(task_id, headers=headers, reply_to=reply_to)
    size = len(ContentHeader(0, len(probe.body), probe.properties).marshal())
    # 150 bytes to spare: the copy's x-amqpworker-* headers need about 280.
    headers["pad"] = "p" * (FRAME_PAYLOAD_LIMIT - 150 - size)
    return Poison([(message(task_id, headers=headers), frozenset({"unknown-task"}))])


def pickle_and_yaml_payloads(tmp: Path, reply_to: str) -> Poison:
    """Bodies whose decoding would run code: it must not happen, whatever the content type."""
    case = "code"
    unpickled = tmp / "unpickled"
    yaml_made = tmp / "yaml-constructed"
    evil = pickle.dumps([[MarkerOnUnpickle(unpickled), 1], {}])
    yaml_body = f'!!python/object/apply:builtins.open ["{yaml_made}", "w"]\n'.encode()
    return Poison(
        [
            _bad(_id(case, 0), "content-type-not-accepted", body=evil, content_type=PICKLE),
            _bad(
                _id(case, 1),
                "content-type-not-accepted",
                body=evil,
                content_type=PICKLE + "; charset=binary",
            ),
            _bad(_id(case, 2), "undecodable", body=evil, content_type=JSON),
            _bad(_id(case, 3), "undecodable", body=evil, content_type=MSGPACK),
            _bad(_id(case, 4), "undecodable", body=yaml_body, content_type=YAML),
            _bad(_id(case, 5), "content-type-not-accepted", body=evil, content_type=None),
            _bad(_id(case, 6), "content-type-not-accepted", body=evil, content_type="text/plain"),
        ],
        must_not_exist=[unpickled, yaml_made],
    )


CASES: dict[str, Callable[[Path, str], Poison]] = {
    "undecodable-bodies": undecodable_bodies,
    "unknown-tasks": unknown_tasks,
    "bad-header-types": bad_header_types,
    "non-utf8-core-headers": non_utf8_core_headers,
    "non-utf8-user-header": non_utf8_user_header,
    "deep-chain-10000": deep_chain,
    "huge-number-chain": huge_number_chain,
    "deep-header-array-5000": deep_header_array,
    "oversized-bodies": oversized_bodies,
    "frame-limit-headers": frame_limit_headers,
    "pickle-and-yaml-payloads": pickle_and_yaml_payloads,
}


@pytest.mark.parametrize("case", list(CASES))
def test_poison_is_dead_lettered_once_and_the_worker_keeps_serving(
    case: str,
    app: App,
    admin: BrokerAdmin,
    queue: str,
    start_worker: Callable[..., RunningWorker],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    running = start_worker(app)
    client = app.portal_client()
    reply_to = app._portal.call(client.reply_to())
    poison = CASES[case](tmp_path, reply_to)
    for sent, _ in poison.messages:
        sent.reply_to = reply_to  # a caller waits: the worker tells it about bad messages
    handles = {task_id: AsyncResult(task_id, client=client) for task_id in poison.run_or_dlq}
    dlq = f"{queue}.dlq"
    publish(admin.url, queue, [m for m, _ in poison.messages], batch=50)
    ids = [m.message_id for m, _ in poison.messages]
    must_die = [m.message_id for m, _ in poison.messages if m.message_id not in poison.run_or_dlq]

    # The worker keeps serving: a normal task round-trips after the poison.
    try:
        served = app.tasks[ADD].delay(2, 3).get(timeout=ROUND_TRIP_TIMEOUT)
    except Exception as exc:
        served = f"{type(exc).__name__}: {exc}"

    # Every poison message ends: in the DLQ, or (where allowed) run.
    def ran(task_id: str) -> bool:
        result = handles[task_id]
        return result.state == SUCCESS and result.result == 5

    def all_ended() -> bool:
        maybe_ran = sum(1 for task_id in poison.run_or_dlq if ran(task_id))
        return count_or_zero(admin, dlq) >= len(ids) - maybe_ran

    ended = poll(all_ended, OUTCOME_TIMEOUT)
    depth = queue_depth(queue)
    stats = running.worker.stats
    received, requeued = stats.received, stats.requeued
    worker_alive = running.thread.is_alive() and running.error is None
    running.stop()
    left_after_stop = admin.message_count(queue)

    copies = take_all(admin.url, dlq, expected=count_or_zero(admin, dlq))
    by_id: Counter[str] = Counter(str(copy.message_id) for copy in copies)
    reasons = {str(copy.message_id): reason_of(copy) for copy in copies}
    executed = sorted(task_id for task_id in poison.run_or_dlq if ran(task_id))
    figures = {
        "case": case,
        "published": len(ids),
        "ended_in_time": ended,
        "round_trip": served,
        "dlq_copies": len(copies),
        "reasons": dict(Counter(reasons.values())),
        "executed": len(executed),
        "received": received,
        "requeued": requeued,
        "ready_unacked_while_running": depth,
        "left_after_stop": left_after_stop,
        "worker_alive": worker_alive,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"\nPOISON {json.dumps(figures, default=str)}")

    assert worker_alive, figures
    assert served == 5, figures
    # Exactly one end per message: one DLQ copy, or a run; nothing spins, nothing is lost.
    assert all(by_id[task_id] == 1 for task_id in must_die), (dict(by_id), figures)
    for task_id in poison.run_or_dlq:
        assert by_id[task_id] + (task_id in executed) == 1, figures
    assert set(by_id) <= set(ids), figures
    wanted = {m.message_id: allowed for m, allowed in poison.messages}
    for task_id, reason in reasons.items():
        assert reason in wanted[task_id], (task_id, reason, figures)
        assert reason in DOCUMENTED_REASONS, (task_id, reason)
    # Nothing unsettled, nothing redelivered.
    assert depth == (0, 0), figures
    assert left_after_stop == 0, figures
    assert received == len(ids) + 1, figures
    assert requeued == 0, figures
    # No unpickling and no code run by a decoder.
    for path in poison.must_not_exist:
        assert not path.exists(), f"{path} was created: a message ran code in the worker"


def test_forged_chord_failure_does_not_import_its_exc_module(
    app: App,
    admin: BrokerAdmin,
    queue: str,
    start_worker: Callable[..., RunningWorker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker rebuilds a chord header's exception from the chord queue: no import there.

    Anyone who can publish to the work queue can publish a join for a chord queue they
    filled; the failure's ``exc_module`` must not make the worker import a module.
    """
    name, marker = write_probe_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    chord_id = f"poison-{uuid.uuid4().hex[:10]}"
    chord_queue = f"amqpworker.chord.{chord_id}"
    admin.created.add(chord_queue)
    forged = {
        "task_id": "header-0",
        "status": FAILURE,
        "result": {"exc_type": "Boom", "exc_module": name, "exc_message": ["forged"]},
        "traceback": None,
        "date_done": None,
        "task_name": ADD,
    }

    async def fill(channel: Any) -> None:
        await channel.declare_queue(chord_queue, durable=True, arguments={"x-expires": 60_000})
        await channel.default_exchange.publish(
            aio_pika.Message(
                json.dumps(forged).encode(),
                content_type=JSON,
                correlation_id="header-0",
                headers={"task_id": "header-0", "status": FAILURE, "x-amqpworker-chord-index": 0},
            ),
            routing_key=chord_queue,
        )

    admin.run(admin._with_channel(fill))
    running = start_worker(app)
    body = {"task": ADD, "args": [], "kwargs": {}, "options": {}, "subtask_type": None}
    join_id = _id("join")
    join = message(
        join_id,
        body=json.dumps([[chord_id, 1, body, []], {}]).encode(),
        headers=task_headers(join_id, task="amqpworker.chord.join", ignore_result=True),
    )
    publish(admin.url, queue, [join])
    joined = poll(lambda: count_or_zero(admin, chord_queue) == 0, OUTCOME_TIMEOUT)
    assert app.tasks[ADD].delay(2, 3).get(timeout=ROUND_TRIP_TIMEOUT) == 5
    running.stop()
    print(f"\nPOISON forged-chord joined={joined} imported={marker.exists()}")
    assert joined, "the join did not consume the forged chord queue"
    assert not marker.exists(), f"the worker imported {name}, named by a message"
    assert name not in sys.modules


def test_forged_result_does_not_import_its_exc_module(
    app: App, admin: BrokerAdmin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FAILURE state forged onto a caller's reply queue makes no import in the caller."""
    name, marker = write_probe_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    client = app.portal_client()
    reply_to = app._portal.call(client.reply_to())
    task_id = _id("forged-result")
    forged = {
        "task_id": task_id,
        "status": FAILURE,
        "result": {"exc_type": "Boom", "exc_module": name, "exc_message": ["forged"]},
        "traceback": None,
        "date_done": None,
        "task_name": ADD,
    }
    admin.publish_raw(
        reply_to,
        aio_pika.Message(json.dumps(forged).encode(), content_type=JSON, correlation_id=task_id),
    )
    try:
        outcome: object = AsyncResult(task_id, app=app).get(timeout=ROUND_TRIP_TIMEOUT)
    except Exception as exc:
        outcome = exc
    print(f"\nPOISON forged-result outcome={outcome!r} imported={marker.exists()}")
    assert not marker.exists(), f"the caller imported {name}, named by a message"
    assert name not in sys.modules
    # The caller still gets the failure, as an exception it can catch.
    assert isinstance(outcome, Exception), outcome
    assert not isinstance(outcome, TimeoutError), outcome


# The fuzz run.

NOISE_KEYS = [f"x-fuzz-{n}" for n in range(6)] + ["tenant", "trace", "shadow", "stamps"]
UNKNOWN_TASK_PREFIX = "fuzz.unknown."


def _noise_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 4 else 9)
    if kind == 0:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(20)))
    if kind == 1:
        return rng.randrange(-(2**63), 2**63)
    if kind == 2:
        return rng.choice([0.5, -1e30, 3.25, 1e-30])  # RabbitMQ refuses NaN, inf
    if kind == 3:
        return rng.random() < 0.5
    if kind == 4:
        return None
    if kind == 5:
        return dt.datetime.fromtimestamp(rng.randrange(2**31), dt.timezone.utc)
    if kind == 6:
        return bytearray(rng.randbytes(rng.randrange(16)))
    if kind == 7:
        return NotUtf8(rng.randbytes(rng.randrange(1, 40)) + b"\xff")
    if kind == 8:
        return decimal.Decimal(rng.randrange(-1000, 1000)) / 10
    if kind in (9, 10):
        return [_noise_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{n}": _noise_value(rng, depth + 1) for n in range(rng.randrange(4))}


def _noise(rng: random.Random) -> dict[str, Any]:
    return {key: _noise_value(rng) for key in rng.sample(NOISE_KEYS, rng.randrange(4))}


def _body(rng: random.Random, content_type: str, payload: Any) -> bytes:
    if content_type == MSGPACK:
        return msgpack.packb(payload, use_bin_type=True)
    return json.dumps(payload).encode()  # JSON is YAML too


def _defect(rng: random.Random, headers: dict[str, Any], fields: dict[str, Any]) -> str:
    """Break one thing that must send the message to the DLQ; returns what was broken."""
    kind = rng.randrange(12)
    if kind == 0:
        fields["body"] = b"\xff" + rng.randbytes(rng.randrange(64))
        if fields["content_type"] == MSGPACK:
            fields["body"] = b"\xc1" + fields["body"]
        return "body-bytes"
    if kind == 1:
        headers["task"] = UNKNOWN_TASK_PREFIX + uuid.UUID(int=rng.getrandbits(128)).hex
        return "unknown-task"
    if kind == 2:
        headers["task"] = rng.choice([7, ["a"], {"a": 1}, NotUtf8(), bytearray(b"x"), 2.5, True])
        return "task-type"
    if kind == 3:
        headers["id"] = rng.choice([7, ["a"], {"a": 1}, NotUtf8(), bytearray(b"x"), 2.5, True])
        return "id-type"
    if kind == 4:
        headers["retries"] = rng.choice([-1, 1.5, "1", NotUtf8(), [1], -5])
        return "retries"
    if kind == 5:
        headers["x-amqpworker-protocol"] = rng.choice([2, 99, "1", 1.0, [1], NotUtf8()])
        return "protocol"
    if kind == 6:
        name, value = rng.choice(
            [
                ("timelimit", rng.choice([["x"], {"a": 1}, "30", NotUtf8(), 0.25, [0, 1]])),
                ("eta", rng.choice([["x"], {"a": 1}, "not a time", NotUtf8(), 0.25, 5])),
                ("expires", rng.choice([["x"], {"a": 1}, "not a time", NotUtf8(), 0.25])),
                ("group_index", rng.choice([["x"], {"a": 1}, "1", NotUtf8(), 0.25])),
                ("root_id", rng.choice([["x"], {"a": 1}, 7, NotUtf8(), 0.25, True])),
                ("parent_id", rng.choice([["x"], {"a": 1}, 7, NotUtf8(), 0.25])),
            ]
        )
        headers[name] = value
        return "core-header"
    if kind == 7:
        name = rng.choice(["chain", "callbacks", "errbacks", "chord"])
        depth = rng.choice([2, 50, 900, 3000, 20_000])
        headers[name] = rng.choice(
            [
                "[" * depth + "]" * depth,
                "{" + '"a":[' * depth + "1" + "]" * depth + "}",
                "[" + "7" * rng.choice([10, 5000]) + "]",
                "not json",
                '[{"no-task": 1}]',
                NotUtf8(),
                "[1, 2, 3]",
            ]
        )
        return f"canvas-{name}"
    if kind == 8:
        fields["content_type"] = rng.choice(
            [PICKLE, "text/plain", "", "APPLICATION/JSON", JSON + "; charset=utf-8", None]
        )
        return "content-type"
    if kind == 9:
        content_type = fields["content_type"] or JSON
        fields["content_type"] = content_type
        payload = rng.choice([{"a": 1}, [1], [1, {}], [[], {}, 1, 2], "s", 3, None, [[], []]])
        fields["body"] = _body(rng, content_type, payload)
        return "body-shape"
    if kind == 10:
        fields["content_type"] = MSGPACK
        fields["body"] = msgpack.packb([[1, 2], {1: 2}], use_bin_type=True)
        return "kwargs-keys"
    headers.pop("task")
    return "no-task"


def fuzz_messages(
    seed: int, count: int, reply_to: str
) -> tuple[list[aio_pika.Message], dict[str, int], set[str], Counter[str]]:
    """Seeded messages: about half valid add(x, y) calls, half garbage with one defect."""
    rng = random.Random(seed)
    messages: list[aio_pika.Message] = []
    valid: dict[str, int] = {}
    garbage: set[str] = set()
    defects: Counter[str] = Counter()
    for n in range(count):
        task_id = f"fuzz-{seed}-{n}"
        x, y = rng.randrange(-(10**6), 10**6), rng.randrange(-(10**6), 10**6)
        content_type: str | None = rng.choice([JSON, JSON, MSGPACK, YAML])
        assert content_type is not None
        headers = {**_noise(rng), **task_headers(task_id)}
        fields: dict[str, Any] = {
            "content_type": content_type,
            "body": _body(rng, content_type, [[x, y], {}]),
        }
        if rng.random() < 0.5:
            valid[task_id] = x + y
            target = reply_to
        else:
            garbage.add(task_id)
            defects[_defect(rng, headers, fields)] += 1
            target = reply_to if rng.random() < 0.5 else None
        messages.append(message(task_id, headers=headers, reply_to=target, **fields))
    return messages, valid, garbage, defects


@pytest.mark.parametrize(
    "count",
    [pytest.param(500, id="500"), pytest.param(20_000, id="20000", marks=pytest.mark.slow)],
)
@pytest.mark.timeout(900)
def test_fuzzed_messages_each_run_or_are_dead_lettered(
    count: int,
    app: App,
    admin: BrokerAdmin,
    queue: str,
    start_worker: Callable[..., RunningWorker],
) -> None:
    started = time.monotonic()
    running = start_worker(app)
    client = app.portal_client()
    reply_to = app._portal.call(client.reply_to())
    seed = 20_000 + count
    messages, valid, garbage, defects = fuzz_messages(seed, count, reply_to)
    # Handles keep the states of these tasks in the client (it keeps only the latest
    # 1000 states nobody holds a handle for).
    handles = [AsyncResult(task_id, client=client) for task_id in valid]
    publish(admin.url, queue, messages, batch=500)
    published_at = time.monotonic()
    dlq = f"{queue}.dlq"

    def executed() -> int:
        done = 0
        for task_id, value in valid.items():
            history = client.hub.history(task_id)
            if history and history[-1].status == SUCCESS and history[-1].result == value:
                done += 1
        return done

    progress: list[tuple[int, int]] = []

    def all_ended() -> bool:
        state = (executed(), count_or_zero(admin, dlq))
        # Give up early when nothing moved for 15 s (a stalled worker).
        progress.append(state)
        if len(progress) > 30 and progress[-30] == state and sum(state) < count:
            raise _Stalled(state)
        return sum(state) >= count

    try:
        ended = poll(all_ended, 60 + count / 50, interval=0.5)
    except _Stalled:
        ended = False
    finished_at = time.monotonic()
    ran = executed()
    del handles
    depth = queue_depth(queue)
    stats = running.worker.stats
    received, requeued = stats.received, stats.requeued
    worker_alive = running.thread.is_alive() and running.error is None
    running.stop()
    left_after_stop = admin.message_count(queue)
    copies = take_all(admin.url, dlq, expected=count_or_zero(admin, dlq))
    by_id = Counter(str(copy.message_id) for copy in copies)
    reasons = Counter(reason_of(copy) for copy in copies)
    figures = {
        "count": count,
        "valid": len(valid),
        "garbage": len(garbage),
        "defects": dict(defects),
        "ended_in_time": ended,
        "executed": ran,
        "dlq_copies": len(copies),
        "reasons": dict(reasons),
        "received": received,
        "requeued": requeued,
        "ready_unacked_while_running": depth,
        "left_after_stop": left_after_stop,
        "worker_alive": worker_alive,
        "publish_seconds": round(published_at - started, 1),
        "settle_seconds": round(finished_at - published_at, 1),
        "missing_garbage": sorted(garbage - set(by_id))[:10],
    }
    print(f"\nPOISON-FUZZ {json.dumps(figures, default=str)}")

    assert worker_alive, figures
    assert ran == len(valid), figures
    assert set(by_id) == garbage, figures
    assert all(n == 1 for n in by_id.values()), figures
    assert ran + len(copies) == count, figures
    assert set(reasons) <= BAD_MESSAGE_REASONS, figures
    assert depth == (0, 0), figures
    assert left_after_stop == 0, figures
    assert received == count, figures
    assert requeued == 0, figures


class _Stalled(Exception):
    """No message ended for a while: the worker stalls."""
