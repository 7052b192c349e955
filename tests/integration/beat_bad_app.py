"""An app whose beat_schedule is wrong four ways: beat must refuse to start, naming each."""

from __future__ import annotations

from amqpworker import App
from amqpworker.schedules import crontab, solar

app = App("beat_bad_app")


@app.task
def fine() -> None:
    return None


app.conf.beat_schedule = {
    "good": {"task": fine.name, "schedule": 60},
    "no-such-task": {"task": "tests.integration.beat_bad_app.nope", "schedule": 60},
    "minute-61": {"task": fine.name, "schedule": crontab(minute="61")},
    "negative": {"task": fine.name, "schedule": -5},
    "moonrise": {"task": fine.name, "schedule": solar("moonrise", 40.0, -74.0)},
}
