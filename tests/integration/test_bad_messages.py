"""Malformed messages go to <queue>.dlq with the reason; the worker keeps serving."""

from __future__ import annotations

import json
import pickle

import aio_pika
import pytest

from amqpworker import App
from amqpworker.exceptions import NotRegistered

from .conftest import wait_for


def _raw(headers: dict, body: bytes, content_type: str = "application/json") -> aio_pika.Message:
    return aio_pika.Message(body=body, headers=headers, content_type=content_type, message_id="m1")


def test_bad_messages_are_dead_lettered_with_reasons(
    app: App, admin, queue: str, start_worker
) -> None:
    worker = start_worker(app)
    good_headers = {"task": "tests.integration.sample_app.add", "id": "x"}
    admin.publish_raw(queue, _raw({"task": "no.such.task", "id": "a"}, b"[[], {}]"))
    admin.publish_raw(queue, _raw({**good_headers, "id": "b"}, b"{not json"))
    admin.publish_raw(
        queue,
        _raw(
            {**good_headers, "id": "c"},
            pickle.dumps([[1, 2], {}]),
            "application/x-python-serialize",
        ),
    )
    admin.publish_raw(queue, _raw({"id": "d"}, b"[[], {}]"))
    admin.publish_raw(queue, _raw({**good_headers, "id": "e", "retries": "many"}, b"[[1, 2], {}]"))
    admin.publish_raw(queue, _raw({**good_headers, "id": "f"}, json.dumps({"a": 1}).encode()))

    dlq = f"{queue}.dlq"
    wait_for(lambda: admin.message_count(dlq) == 6, 15, "six dead-lettered messages")
    # The worker goes on serving.
    assert app.tasks["tests.integration.sample_app.add"].delay(2, 3).get(timeout=10) == 5

    by_id = {
        message.headers["id"]: message for message in admin.get_all(dlq) if "id" in message.headers
    }
    reasons = {key: message.headers["x-amqpworker-reason"] for key, message in by_id.items()}
    assert reasons == {
        "a": "unknown-task",
        "b": "undecodable",
        "c": "content-type-not-accepted",
        "d": "malformed",
        "e": "malformed",
        "f": "malformed",
    }
    assert (
        "pickle" in by_id["c"].headers["x-amqpworker-detail"]
        or "x-python-serialize" in by_id["c"].headers["x-amqpworker-detail"]
    )
    assert "retries" in by_id["e"].headers["x-amqpworker-detail"]
    for message in by_id.values():
        assert message.headers["x-amqpworker-queue"] == queue
        assert message.headers["x-amqpworker-routing-key"] == queue
    # The body is kept byte for byte so a person can replay it.
    assert by_id["b"].body == b"{not json"
    assert worker.worker.stats.dead_lettered == 6


def test_unknown_task_also_fails_the_callers_result(
    app: App, admin, queue: str, start_worker
) -> None:
    start_worker(app)
    result = app.send_task("sample.not_registered", args=(1,))
    with pytest.raises(NotRegistered, match="not registered"):
        result.get(timeout=10)
    wait_for(lambda: admin.message_count(f"{queue}.dlq") == 1, 10, "the dead-lettered message")


def test_undecodable_message_fails_the_waiting_caller(
    app: App, admin, queue: str, start_worker
) -> None:
    start_worker(app)
    client = app.portal_client()
    reply_to = app._portal.call(client.reply_to())
    admin.publish_raw(
        queue,
        aio_pika.Message(
            body=b"{broken",
            headers={"task": "tests.integration.sample_app.add", "id": "bad-1"},
            content_type="application/json",
            correlation_id="bad-1",
            reply_to=reply_to,
        ),
    )
    from amqpworker import AsyncResult
    from amqpworker.exceptions import DecodeError

    with pytest.raises(DecodeError, match="cannot decode"):
        AsyncResult("bad-1", app=app).get(timeout=10)


def test_newer_protocol_version_is_dead_lettered(app: App, admin, queue: str, start_worker) -> None:
    start_worker(app)
    headers = {"task": "tests.integration.sample_app.add", "id": "v2", "x-amqpworker-protocol": 2}
    admin.publish_raw(queue, _raw(headers, b"[[1, 2], {}]"))
    wait_for(lambda: admin.message_count(f"{queue}.dlq") == 1, 10, "the dead-lettered message")
    [message] = admin.get_all(f"{queue}.dlq")
    assert message.headers["x-amqpworker-reason"] == "malformed"
    assert "newer" in message.headers["x-amqpworker-detail"]


def test_deleted_dlq_is_declared_again_and_nothing_is_lost(
    app: App, admin, queue: str, start_worker
) -> None:
    start_worker(app)
    app.tasks["tests.integration.sample_app.add"].delay(1, 1).get(timeout=10)

    async def delete_dlq(channel) -> None:
        await channel.queue_delete(f"{queue}.dlq")

    admin.run(admin._with_channel(delete_dlq))
    admin.publish_raw(queue, _raw({"task": "no.such.task", "id": "z"}, b"[[], {}]"))
    wait_for(lambda: _count_or_zero(admin, f"{queue}.dlq") == 1, 10, "the message in a new DLQ")


def _count_or_zero(admin, queue: str) -> int:
    try:
        return admin.message_count(queue)
    except Exception:
        return 0


class _RawBytes(str):
    """A header value pamqp writes as a long string of these bytes, valid UTF-8 or not."""

    def __new__(cls, raw: bytes) -> _RawBytes:
        made = super().__new__(cls, "raw")
        made.raw = raw  # type: ignore[attr-defined]
        return made

    def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        return self.raw  # type: ignore[attr-defined,no-any-return]


def test_header_that_is_not_utf8_is_dead_lettered_once_with_its_bytes(
    app: App, admin, queue: str, start_worker
) -> None:
    raw = b"\xff\xfe\xfd" * 100
    running = start_worker(app)
    admin.publish_raw(
        queue,
        _raw({"task": _RawBytes(raw), "id": "utf", "note": _RawBytes(b"\xc3\x28")}, b"[[], {}]"),
    )

    wait_for(lambda: admin.message_count(f"{queue}.dlq") == 1, 10, "the dead-lettered message")
    assert app.tasks["tests.integration.sample_app.add"].delay(2, 3).get(timeout=10) == 5
    [message] = admin.get_all(f"{queue}.dlq")
    assert message.headers["x-amqpworker-reason"] == "malformed"
    assert message.headers["task"] == raw  # every byte kept, as an AMQP byte array
    assert message.headers["note"] == b"\xc3\x28"
    assert sorted(message.headers["x-amqpworker-rewritten-headers"]) == ["note", "task"]
    assert message.body == b"[[], {}]"
    # Dead-lettered once: not put back and redelivered over and over.
    assert running.worker.stats.dead_lettered == 1
    assert running.worker.stats.requeued == 0
    assert admin.message_count(queue) == 0


def test_deeply_nested_headers_are_dead_lettered_and_do_not_stall_the_worker(
    app: App, admin, queue: str, start_worker
) -> None:
    running = start_worker(app, concurrency=1, prefetch_multiplier=1)
    nested = "[" * 10_000 + "]" * 10_000
    for index in range(4):  # more than the worker's prefetch of 1
        headers = {"task": "tests.integration.sample_app.add", "id": f"deep{index}"}
        admin.publish_raw(queue, _raw({**headers, "chain": nested}, b"[[1, 2], {}]"))

    wait_for(lambda: admin.message_count(f"{queue}.dlq") == 4, 15, "four dead-lettered messages")
    assert app.tasks["tests.integration.sample_app.add"].delay(2, 3).get(timeout=10) == 5
    reasons = {m.headers["x-amqpworker-reason"] for m in admin.get_all(f"{queue}.dlq")}
    assert reasons == {"malformed"}
    assert running.worker.stats.dead_lettered == 4
