"""``amqpworker beat --list``: every entry, its schedule, last run and next due time."""

from __future__ import annotations

import datetime as dt

from ..app import App
from ..broker import Broker
from .entries import Entry, schedule_zone
from .service import read_record, utcnow


async def describe(app: App, entries: list[Entry]) -> list[dict[str, str]]:
    """One row per entry; last and next in the schedule's zone (the last from the broker)."""
    broker = Broker.for_settings(app.conf, "amqpworker beat --list")
    await broker.connect()
    try:
        record = await read_record(broker, app.conf.beat_queue_prefix)
    finally:
        await broker.close()
    zone = schedule_zone(app)
    now = utcnow()
    rows = []
    for entry in entries:
        last = record.fired.get(entry.name)
        upcoming: dt.datetime | None
        if last is None:
            upcoming = entry.schedule.next_due(now.replace(microsecond=0), zone)
        else:
            upcoming = entry.schedule.next_due(last, zone)
        if upcoming is None:
            next_text = "never"
        elif upcoming <= now:
            next_text = "now (missed while no beat was active: one catch-up run)"
        else:
            next_text = upcoming.astimezone(zone).isoformat()
        rows.append(
            {
                "name": entry.name,
                "task": entry.task,
                "schedule": repr(entry.schedule),
                "last": last.astimezone(zone).isoformat() if last else "never",
                "next": next_text,
            }
        )
    return rows
