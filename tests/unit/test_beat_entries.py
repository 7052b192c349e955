"""Declaring periodic tasks: beat_schedule, add_periodic_task, the app's signals, checks."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from amqpworker import App
from amqpworker.beat import load_entries
from amqpworker.beat.entries import schedule_zone
from amqpworker.exceptions import ImproperlyConfigured
from amqpworker.schedules import ScheduleError, crontab, schedule, solar
from amqpworker.wire.beat import DUE_HEADER, ENTRY_HEADER, FiredRecord, tick_id


def make_app(**settings: Any) -> App:
    app = App("beatunit", **settings)

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def test_beat_schedule_entries_as_in_celery() -> None:
    app = make_app(
        beat_schedule={
            "add-every-30": {"task": "t.add", "schedule": 30.0, "args": (16, 16)},
            "mornings": {
                "task": "t.add",
                "schedule": crontab(hour=7, minute=30, day_of_week=1),
                "kwargs": {"x": 1, "y": 2},
                "options": {"queue": "q1", "priority": 5, "expires": 60},
            },
            "every-minute": {
                "task": "t.add",
                "schedule": dt.timedelta(minutes=1),
                "relative": True,
            },
        }
    )
    entries = {entry.name: entry for entry in load_entries(app)}
    assert entries["add-every-30"].schedule == schedule(30)
    assert entries["every-minute"].schedule == schedule(60, relative=True)
    due = dt.datetime(2024, 1, 1, 7, 30, tzinfo=dt.timezone.utc)
    message, destination, _ = entries["mornings"].message(app, due)
    assert message.id == "mornings@2024-01-01T07:30:00+00:00" == tick_id("mornings", due)
    assert message.kwargs == {"x": 1, "y": 2}
    assert message.ignore_result
    assert message.expires is not None
    assert destination.queue == "q1"
    assert message.priority == 5
    assert message.headers[ENTRY_HEADER] == "mornings"
    assert message.headers[DUE_HEADER] == "2024-01-01T07:30:00+00:00"


def test_add_periodic_task_in_an_on_after_configure_handler() -> None:
    app = make_app()
    add = app.tasks["t.add"]

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender: App, **kwargs: Any) -> None:
        sender.add_periodic_task(10.0, add.s(2, 2), name="add every 10")
        sender.add_periodic_task(crontab(hour=7, minute=30), add.s(3, 3), queue="q2")

    finalized: list[App] = []
    app.on_after_finalize.connect(lambda sender, **_: finalized.append(sender))
    assert load_entries(app) == []  # nothing until the app is finalized
    app.finalize()
    app.finalize()  # once only
    assert finalized == [app]
    entries = {entry.name: entry for entry in load_entries(app)}
    assert set(entries) == {"add every 10", "t.add(3, 3)"}
    assert entries["add every 10"].args == (2, 2)
    assert entries["t.add(3, 3)"].options == {"queue": "q2"}


def test_connect_with_options_is_a_decorator_too() -> None:
    app = make_app()
    calls = []

    @app.on_after_configure.connect(weak=False)
    def handler(sender: App, **kwargs: Any) -> None:
        calls.append(kwargs["source"])

    app.finalize()
    assert calls == [app.conf]
    with pytest.raises(TypeError, match="unknown option"):
        app.on_after_configure.connect(handler, bogus=True)


def test_add_periodic_task_refuses_a_bad_schedule_at_once() -> None:
    app = make_app()
    with pytest.raises(ScheduleError, match="more than zero"):
        app.add_periodic_task(-1, app.tasks["t.add"].s(1, 1))


def test_every_bad_entry_is_reported_at_once_by_name() -> None:
    app = make_app(
        beat_schedule={
            "ok": {"task": "t.add", "schedule": 5, "args": [1, 2]},
            "typo": {"task": "t.ad", "schedule": 5},
            "minute-61": {"task": "t.add", "schedule": crontab(minute="61")},
            "negative": {"task": "t.add", "schedule": -1},
            "moon": {"task": "t.add", "schedule": solar("moonrise", 1, 1)},
            "unknown-key": {"task": "t.add", "schedule": 5, "every": 3},
            "countdown": {"task": "t.add", "schedule": 5, "options": {"countdown": 3}},
            "bad-option": {"task": "t.add", "schedule": 5, "options": {"prio": 3}},
            "no-schedule": {"task": "t.add"},
            "bad-priority": {"task": "t.add", "schedule": 5, "options": {"priority": 900}},
            "unencodable": {"task": "t.add", "schedule": 5, "args": [object()]},
        }
    )
    with pytest.raises(ImproperlyConfigured) as info:
        load_entries(app)
    text = str(info.value)
    for name, why in [
        ("typo", "unknown task 't.ad' (not registered in <App beatunit>); did you mean 't.add'?"),
        ("minute-61", "crontab minute='61': 61 is out of range 0-59"),
        ("negative", "more than zero seconds"),
        ("moon", "unknown solar event 'moonrise'"),
        ("unknown-key", "unknown key(s) ['every']"),
        ("countdown", "option 'countdown' is not for beat entries"),
        ("bad-option", "unknown option 'prio'"),
        ("no-schedule", "'schedule' is missing"),
        ("bad-priority", "priority"),
        ("unencodable", "entry 'unencodable'"),
    ]:
        assert f"beat_schedule entry {name!r}: " in text, (name, text)
        assert why in text, (why, text)
    assert "entry 'ok'" not in text


def test_crontabs_are_read_in_the_apps_timezone() -> None:
    assert str(schedule_zone(make_app(timezone="Asia/Shanghai"))) == "Asia/Shanghai"
    assert str(schedule_zone(make_app())) == "UTC"


def test_the_fired_record_round_trips() -> None:
    due = dt.datetime(2024, 1, 1, 7, 30, tzinfo=dt.timezone.utc)
    record = FiredRecord({"a": due}, "beat-1")
    back = FiredRecord.decode(record.encode())
    assert back.fired == {"a": due}
    assert back.by == "beat-1"
