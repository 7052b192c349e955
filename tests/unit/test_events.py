"""Events without a broker: the wire format, the monitor's bookkeeping, what events cost."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from amqpworker import App
from amqpworker.broker import Broker
from amqpworker.broker.events import EventSender
from amqpworker.monitor.state import MonitorState
from amqpworker.monitor.watch import Reader
from amqpworker.wire import Envelope, TaskMessage
from amqpworker.wire.events import (
    MalformedEvent,
    Stamper,
    decode_events,
    describe_task,
    encode_events,
    routing_key,
)
from amqpworker.worker.steps.events import AnnounceEnding, AnnounceReceived, AnnounceRun

from .conftest import stub_steps


def test_routing_keys_are_celerys() -> None:
    assert routing_key("task-succeeded") == "task.succeeded"
    assert routing_key("worker-heartbeat") == "worker.heartbeat"


def test_an_event_goes_out_as_json_and_comes_back() -> None:
    stamper = Stamper("w1@host")
    message = TaskMessage("tasks.add", (1, "x"), {"k": [1]}, id="t1", retries=2)
    event = stamper.event("task-received", describe_task(message))
    envelope, key = encode_events([event])
    assert key == "task.received"
    assert envelope.content_type == "application/json"
    assert not envelope.persistent
    assert isinstance(json.loads(envelope.body), dict)  # one event: an object, as Celery's
    [decoded], problems = decode_events(envelope)
    assert problems == []
    assert decoded == json.loads(envelope.body)
    assert decoded["uuid"] == "t1"
    assert decoded["name"] == "tasks.add"
    assert decoded["args"] == "(1, 'x')"
    assert decoded["kwargs"] == "{'k': [1]}"
    assert decoded["retries"] == 2
    assert decoded["root_id"] == "t1"
    assert {"hostname", "timestamp", "utcoffset", "pid", "clock"} <= set(decoded)
    assert stamper.event("task-started", {"uuid": "t1"})["clock"] == decoded["clock"] + 1


def test_events_of_one_type_travel_together_as_a_list() -> None:
    stamper = Stamper("w1@host")
    events = [stamper.event("task-started", {"uuid": f"t{i}"}) for i in range(3)]
    envelope, key = encode_events(events)
    assert key == "task.started"
    decoded, problems = decode_events(envelope)
    assert [event["uuid"] for event in decoded] == ["t0", "t1", "t2"]
    assert problems == []
    with pytest.raises(ValueError, match="one type"):
        encode_events([events[0], stamper.event("task-failed", {"uuid": "t0"})])


def test_a_bad_event_in_a_list_is_reported_and_the_others_read() -> None:
    body = json.dumps([{"type": "task-started", "hostname": "h", "uuid": "a"}, 7, {}])
    events, problems = decode_events(Envelope(body=body.encode()))
    assert [event["uuid"] for event in events] == ["a"]
    assert problems == ["event must be a JSON object, not int", "event has no 'type' string"]


def test_long_arguments_are_cut_and_unrepresentable_ones_described() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    fields = describe_task(TaskMessage("t", ("x" * 5000,)))
    assert len(fields["args"]) == 1024
    assert fields["args"].endswith("...")
    assert describe_task(TaskMessage("t", (Broken(),)))["args"].startswith("<unrepresentable")
    envelope, _ = encode_events([{"type": "task-succeeded", "result": Broken()}])
    assert "unrepresentable Broken" in json.loads(envelope.body)["result"]


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b"not json", None, "not JSON"),
        (b"7", None, "must be a JSON object or list"),
        (b"[1]", None, "must be a JSON object, not int"),
        (b'{"hostname": "h"}', None, "no 'type'"),
        (b'{"type": "task-started"}', None, "no 'hostname'"),
        (b'{"type": "task-started", "hostname": "h"}', None, "no 'uuid'"),
        (b'{"type": "x-y", "hostname": "h", "timestamp": "now"}', None, "'timestamp'"),
        (b'{"type": "worker-heartbeat", "hostname": "h", "active": "2"}', None, "'active'"),
        (b'{"type": "x-y", "hostname": "h"}', "application/x-msgpack", "not JSON"),
        (b"[" * 100_000, None, "not JSON"),
    ],
)
def test_a_malformed_event_is_a_clear_error(
    body: bytes, content_type: str | None, says: str
) -> None:
    try:
        events, problems = decode_events(Envelope(body=body, content_type=content_type))
    except MalformedEvent as exc:
        problems = [str(exc)]
    else:
        assert events == []
    [problem] = problems
    assert says in problem


def test_events_of_other_types_are_read() -> None:
    [event], _ = decode_events(Envelope(body=b'{"type": "custom-thing", "hostname": "h"}'))
    assert event["type"] == "custom-thing"


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "hostname": "w1", **fields}


def test_the_monitor_state_follows_workers_and_tasks() -> None:
    state = MonitorState()
    state.feed(_event("worker-online", freq=2.0, active=0, processed=0), now=100)
    state.feed(_event("task-received", uuid="a", name="tasks.add"), now=101)
    state.feed(_event("task-started", uuid="a"), now=101)
    state.feed(_event("task-received", uuid="b", name="tasks.div"), now=101)
    state.feed(_event("task-started", uuid="b"), now=101)
    assert set(state.running) == {"a", "b"}
    assert state.running["a"].name == "tasks.add"
    state.feed(_event("task-succeeded", uuid="a", result="3"), now=102)
    state.feed(_event("task-failed", uuid="b", exception="ZeroDivisionError()"), now=102)
    state.feed(_event("worker-heartbeat", active=0, processed=2, loadavg=[0.5, 0.4, 0.3]), now=102)
    assert state.running == {}
    assert state.totals["succeeded"] == 1
    assert state.totals["failed"] == 1
    assert state.rate("received", now=103) == pytest.approx(2 / 5)
    assert state.rate("received", now=200) == 0
    [failure] = state.failures
    assert (failure.name, failure.exception) == ("tasks.div", "ZeroDivisionError()")
    worker = state.workers["w1"]
    assert (worker.processed, worker.loadavg) == (2, [0.5, 0.4, 0.3])
    assert worker.status(now=103) == "online"
    assert worker.status(now=109) == "silent"  # three heartbeats missed
    state.feed(_event("worker-offline"), now=110)
    assert worker.status(now=110) == "offline"


class FakeDelivery:
    def __init__(self, body: bytes) -> None:
        self.envelope = Envelope(body=body)
        self.acked = False

    def ack_soon(self) -> None:
        self.acked = True


def test_the_reader_warns_once_about_malformed_events_and_goes_on() -> None:
    seen: list[dict[str, Any]] = []
    warnings: list[str] = []
    reader = Reader(seen.append, warnings.append)
    bad = [FakeDelivery(b"garbage") for _ in range(3)]
    good = FakeDelivery(json.dumps(_event("task-started", uuid="a")).encode())
    for delivery in [*bad, good]:
        reader.on_delivery(cast(Any, delivery))
    assert all(delivery.acked for delivery in [*bad, good])
    assert [event["uuid"] for event in seen] == ["a"]
    assert reader.malformed == 3
    assert len(warnings) == 1
    assert "not JSON" in warnings[0]


async def test_an_event_that_cannot_be_buffered_is_dropped_and_counted() -> None:
    sender = EventSender(cast(Broker, None), "w1", buffer=2)
    for _ in range(5):
        sender.send("task-started", {"uuid": "a"})
    assert sender.dropped == 3
    await sender.close()  # never started: what it held is dropped too, nothing raises
    assert sender.dropped == 5
    sender.send("task-started", {"uuid": "b"})
    assert sender.dropped == 6


def _steps(events: EventSender | None) -> list[Any]:
    return stub_steps(App("events-unit"), events=events)


async def test_event_steps_are_in_the_pipeline_only_when_events_are_on() -> None:
    kinds = (AnnounceReceived, AnnounceEnding, AnnounceRun)
    assert not [step for step in _steps(None) if isinstance(step, kinds)]
    names = [type(step).__name__ for step in _steps(EventSender(cast(Broker, None), "w1"))]
    assert names.index("AnnounceReceived") == names.index("Decode") + 1
    assert names.index("AnnounceEnding") == names.index("Slots") + 1
    assert names.index("AnnounceRun") == names.index("Execute") - 1


class FakeUnderlay:
    def __init__(self) -> None:
        self.published: list[tuple[str, Any]] = []

    async def basic_publish(
        self, body: bytes, *, exchange: str, routing_key: str, **_: Any
    ) -> None:
        self.published.append((routing_key, json.loads(body)))


class FakeChannel:
    is_closed = False

    def __init__(self) -> None:
        self.underlay = FakeUnderlay()

    async def get_underlay_channel(self) -> FakeUnderlay:
        return self.underlay


async def test_events_sent_together_go_out_by_type_in_a_tasks_order() -> None:
    sender = EventSender(cast(Broker, None), "w1")
    channel = FakeChannel()
    sender._channel = cast(Any, channel)
    batch = [
        sender.stamper.event(kind, {"uuid": uuid})
        for kind, uuid in [
            ("task-succeeded", "a"),
            ("task-received", "b"),
            ("task-started", "b"),
            ("task-succeeded", "b"),
            ("worker-heartbeat", ""),
        ]
    ]
    await sender._publish(batch)
    keys = [key for key, _ in channel.underlay.published]
    assert keys == ["task.received", "task.started", "task.succeeded", "worker.heartbeat"]
    assert [event["uuid"] for event in channel.underlay.published[2][1]] == ["a", "b"]
    assert sender.sent == 5
