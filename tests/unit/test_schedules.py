"""Schedules: crontab against Celery's own answers, time zones across DST, intervals, solar.

The table below was computed with Celery 5.7's ``crontab.remaining_delta`` (UTC), not
with croniter (which amqpworker uses), so it checks both the arithmetic and that Celery's
meaning holds: 0 is Sunday, names, steps, wrapping ranges, and a day matching both
``day_of_month`` and ``day_of_week``.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from amqpworker.schedules import ScheduleError, as_schedule, crontab, schedule, solar, zone_for

UTC = dt.timezone.utc

CELERY_TABLE: list[tuple[dict[str, Any], str, str]] = [
    ({}, "2024-01-01T00:00:00", "2024-01-01T00:01:00"),
    ({"minute": "*/15"}, "2024-01-01T10:07:12", "2024-01-01T10:15:00"),
    ({"minute": "*/15"}, "2024-01-01T23:45:00", "2024-01-02T00:00:00"),
    ({"minute": 0, "hour": "*/3"}, "2024-01-01T22:00:00", "2024-01-02T00:00:00"),
    ({"minute": 30, "hour": 7}, "2024-01-01T07:30:00", "2024-01-02T07:30:00"),
    ({"minute": 30, "hour": 7}, "2024-01-01T07:29:59", "2024-01-01T07:30:00"),
    ({"minute": 30, "hour": 7, "day_of_month": 1}, "2024-01-15T00:00:00", "2024-02-01T07:30:00"),
    (
        {"minute": 0, "hour": 0, "day_of_week": "mon-fri"},
        "2024-01-05T12:00:00",
        "2024-01-08T00:00:00",
    ),
    (
        {"minute": 0, "hour": 0, "day_of_week": "sat,sun"},
        "2024-01-01T12:00:00",
        "2024-01-06T00:00:00",
    ),
    ({"minute": 0, "hour": 9, "day_of_week": "sun"}, "2024-01-01T12:00:00", "2024-01-07T09:00:00"),
    ({"minute": 0, "hour": 9, "day_of_week": 0}, "2024-01-01T12:00:00", "2024-01-07T09:00:00"),
    ({"minute": 0, "hour": 9, "day_of_week": "1-5"}, "2024-01-06T00:00:00", "2024-01-08T09:00:00"),
    (
        {"minute": 0, "hour": 9, "day_of_week": "fri-mon"},
        "2024-01-02T00:00:00",
        "2024-01-05T09:00:00",
    ),
    (
        {"minute": 0, "hour": 9, "day_of_week": "thursday"},
        "2024-01-01T00:00:00",
        "2024-01-04T09:00:00",
    ),
    ({"minute": "0,30", "hour": "8-17/2"}, "2024-01-01T17:45:00", "2024-01-02T08:00:00"),
    ({"minute": "1-10/3"}, "2024-01-01T10:11:00", "2024-01-01T11:01:00"),
    (
        {"minute": "5", "hour": "1,13", "day_of_week": "mon,wed,fri"},
        "2024-01-03T13:05:00",
        "2024-01-05T01:05:00",
    ),
    ({"minute": 0, "hour": 0, "day_of_month": 31}, "2024-01-31T00:00:00", "2024-03-31T00:00:00"),
    ({"minute": 0, "hour": 0, "day_of_month": 31}, "2024-03-31T00:00:00", "2024-05-31T00:00:00"),
    ({"minute": 0, "hour": 0, "day_of_month": 30}, "2024-01-30T12:00:00", "2024-03-30T00:00:00"),
    (
        {"minute": 0, "hour": 0, "day_of_month": "28-31"},
        "2023-02-28T00:00:00",
        "2023-03-28T00:00:00",
    ),
    (
        {"minute": 0, "hour": 0, "day_of_month": "28-31"},
        "2024-02-28T00:00:00",
        "2024-02-29T00:00:00",
    ),
    (
        {"minute": 0, "hour": 12, "day_of_month": 29, "month_of_year": 2},
        "2024-03-01T00:00:00",
        "2028-02-29T12:00:00",
    ),
    (
        {"minute": 0, "hour": 12, "day_of_month": 29, "month_of_year": 2},
        "2023-06-01T00:00:00",
        "2024-02-29T12:00:00",
    ),
    (
        {"minute": 0, "hour": 0, "day_of_month": 1, "month_of_year": "*/3"},
        "2024-01-01T00:00:00",
        "2024-04-01T00:00:00",
    ),
    (
        {"minute": 0, "hour": 0, "day_of_month": 1, "month_of_year": "1,7"},
        "2024-08-01T00:00:00",
        "2025-01-01T00:00:00",
    ),
    (
        {"minute": 0, "hour": 0, "day_of_month": "1-7", "day_of_week": "mon"},
        "2024-01-02T00:00:00",
        "2024-02-05T00:00:00",
    ),
    (
        {"minute": 0, "hour": 0, "day_of_month": 13, "day_of_week": "fri"},
        "2024-01-01T00:00:00",
        "2024-09-13T00:00:00",
    ),
    (
        {"minute": 59, "hour": 23, "day_of_month": 31, "month_of_year": 12},
        "2024-06-01T00:00:00",
        "2024-12-31T23:59:00",
    ),
    ({"minute": "*/20", "hour": "22-2"}, "2024-01-01T02:45:00", "2024-01-01T22:00:00"),
    (
        {"minute": 0, "hour": 0, "day_of_month": "*/10"},
        "2024-01-31T00:00:00",
        "2024-02-01T00:00:00",
    ),
    (
        {"minute": 15, "hour": 0, "month_of_year": "feb"},
        "2024-03-01T00:00:00",
        "2025-02-01T00:15:00",
    ),
    ({"minute": "*/7"}, "2024-01-01T10:59:00", "2024-01-01T11:00:00"),
    (
        {"minute": 0, "hour": 6, "day_of_week": "sat", "day_of_month": "1-7"},
        "2024-02-01T00:00:00",
        "2024-02-03T06:00:00",
    ),
]


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("fields", "after", "expected"), CELERY_TABLE)
def test_crontab_next_due_matches_celery(fields: dict[str, Any], after: str, expected: str) -> None:
    assert crontab(**fields).next_due(_utc(after)) == _utc(expected)


NEW_YORK = ZoneInfo("America/New_York")
SYDNEY = ZoneInfo("Australia/Sydney")
SHANGHAI = ZoneInfo("Asia/Shanghai")

#: Worked out by hand from the zones' rules (New York: 2025-03-09 02:00 EST -> 03:00 EDT,
#: 2025-11-02 02:00 EDT -> 01:00 EST; Sydney: 2025-04-06 03:00 AEDT -> 02:00 AEST).
ZONED_TABLE: list[tuple[dict[str, Any], dt.tzinfo, str, str]] = [
    # 07:30 local stays 07:30 local: 12:30Z in winter, 11:30Z once summer time starts.
    ({"hour": 7, "minute": 30}, NEW_YORK, "2025-03-08T12:31:00", "2025-03-09T11:30:00"),
    ({"hour": 7, "minute": 30}, NEW_YORK, "2025-03-07T12:31:00", "2025-03-08T12:30:00"),
    ({"hour": 7, "minute": 30}, NEW_YORK, "2025-11-01T11:31:00", "2025-11-02T12:30:00"),
    # 02:30 does not exist on 2025-03-09: it runs at the same instant an hour on (03:30).
    ({"hour": 2, "minute": 30}, NEW_YORK, "2025-03-08T12:00:00", "2025-03-09T07:30:00"),
    ({"hour": 2, "minute": 30}, NEW_YORK, "2025-03-09T07:30:00", "2025-03-10T06:30:00"),
    # Half-hourly across the jump: 01:30 EST, then 03:00 EDT (02:00 and 03:00 are one).
    ({"minute": "*/30"}, NEW_YORK, "2025-03-09T06:30:00", "2025-03-09T07:00:00"),
    ({"minute": "*/30"}, NEW_YORK, "2025-03-09T07:00:00", "2025-03-09T07:30:00"),
    # 01:30 happens twice on 2025-11-02: it runs once, the first time (EDT).
    ({"hour": 1, "minute": 30}, NEW_YORK, "2025-11-01T12:00:00", "2025-11-02T05:30:00"),
    ({"hour": 1, "minute": 30}, NEW_YORK, "2025-11-02T05:30:00", "2025-11-03T06:30:00"),
    # The southern hemisphere: Sydney falls back in April.
    ({"hour": 9, "minute": 0}, SYDNEY, "2025-04-04T00:00:00", "2025-04-04T22:00:00"),
    ({"hour": 9, "minute": 0}, SYDNEY, "2025-04-04T22:00:00", "2025-04-05T23:00:00"),
    # Shanghai: 07:30 local is 23:30Z the day before, all year.
    ({"hour": 7, "minute": 30}, SHANGHAI, "2025-01-01T00:00:00", "2025-01-01T23:30:00"),
    ({"hour": 7, "minute": 30}, SHANGHAI, "2025-07-01T00:00:00", "2025-07-01T23:30:00"),
    # Weekday names are the zone's weekdays: Monday 00:15 in Shanghai is Sunday in UTC.
    (
        {"hour": 0, "minute": 15, "day_of_week": "mon"},
        SHANGHAI,
        "2025-01-01T00:00:00",
        "2025-01-05T16:15:00",
    ),
]


@pytest.mark.parametrize(("fields", "zone", "after", "expected"), ZONED_TABLE)
def test_crontab_in_a_time_zone_across_daylight_saving(
    fields: dict[str, Any], zone: dt.tzinfo, after: str, expected: str
) -> None:
    assert crontab(**fields).next_due(_utc(after), zone) == _utc(expected)


def test_the_tables_cover_at_least_30_expressions() -> None:
    assert len(CELERY_TABLE) + len(ZONED_TABLE) >= 30


def test_crontab_prints_as_celery_does() -> None:
    assert repr(crontab(minute=30, hour=7, day_of_month=1)) == (
        "<crontab: 30 7 1 * * (m/h/dM/MY/d)>"
    )
    assert repr(crontab(minute="*/15", day_of_week="mon-fri")) == (
        "<crontab: */15 * * * mon-fri (m/h/dM/MY/d)>"
    )
    assert repr(schedule(10)) == "<freq: 10.00 seconds>"
    assert repr(schedule(dt.timedelta(minutes=1))) == "<freq: 1.00 minute>"
    assert repr(schedule(90)) == "<freq: 1.50 minutes>"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"minute": "61"}, "crontab minute='61': 61 is out of range 0-59"),
        ({"hour": 24}, "crontab hour=24: 24 is out of range 0-23"),
        ({"day_of_week": "7"}, "7 is out of range 0-6"),
        ({"day_of_week": "funday"}, "'funday' is not a number or a name"),
        ({"minute": "*/0"}, "step 0 must be 1 or more"),
        ({"minute": "1-2-3"}, "is not *, N, N-M"),
        ({"day_of_month": 31, "month_of_year": 2}, "never matches a date"),
        ({"month_of_year": 0}, "0 is out of range 1-12"),
    ],
)
def test_a_bad_crontab_says_which_field_and_why(fields: dict[str, Any], message: str) -> None:
    made = crontab(**fields)  # inside a settings dict: kept for beat to report per entry
    with pytest.raises(ScheduleError, match=message.replace("*", r"\*")):
        made.check()
    with pytest.raises(ScheduleError):
        as_schedule(made)


def test_crontab_accepts_celery_forms() -> None:
    assert crontab(day_of_week="fri-mon").day_of_week == {5, 6, 0, 1}
    assert crontab(hour="22-2").hour == {22, 23, 0, 1, 2}
    assert crontab(minute="1-10/3").minute == {1, 4, 7, 10}
    assert crontab(day_of_week={1, 3}).day_of_week == {1, 3}
    assert crontab(month_of_year="jan,jul").month_of_year == {1, 7}
    assert crontab(day_of_week="Sunday").day_of_week == {0}


@pytest.mark.parametrize("bad", [-5, 0, dt.timedelta(seconds=-1), "10", True, float("nan")])
def test_an_interval_must_be_a_positive_number_of_seconds(bad: Any) -> None:
    with pytest.raises(ScheduleError):
        as_schedule(bad)


def test_intervals_count_from_the_last_run_or_align_to_the_clock() -> None:
    last = _utc("2024-01-01T10:00:03")
    assert schedule(10).next_due(last) == _utc("2024-01-01T10:00:13")
    assert schedule(300, relative=True).next_due(last) == _utc("2024-01-01T10:05:00")
    assert schedule(1).latest_due(last, _utc("2024-01-01T10:00:13.5")) == _utc(
        "2024-01-01T10:00:13"
    )
    assert schedule(10).latest_due(last, _utc("2024-01-01T10:00:12")) is None


def test_latest_due_after_a_long_downtime_is_the_most_recent_missed_time() -> None:
    every_15 = crontab(minute="*/15")
    last = _utc("2024-01-01T00:00:00")
    assert every_15.latest_due(last, _utc("2024-03-10T09:07:00")) == _utc("2024-03-10T09:00:00")
    assert every_15.latest_due(last, _utc("2024-01-01T00:14:59")) is None


def test_solar_events_come_from_astral() -> None:
    sunrise = solar("sunrise", 51.5, 0.0)
    due = sunrise.next_due(_utc("2024-06-21T00:00:00"))
    assert due is not None
    assert _utc("2024-06-21T03:30:00") < due < _utc("2024-06-21T04:00:00")
    following = sunrise.next_due(due)
    assert following is not None
    assert dt.timedelta(hours=23) < following - due < dt.timedelta(hours=25)
    assert repr(solar("sunset", 40.7, -74.0)) == (
        "<solar: sunset at latitude 40.7, longitude: -74.0>"
    )


def test_solar_is_never_due_where_the_sun_does_not_set() -> None:
    # Polar day at 80 N around the June solstice: the next sunset is in late August.
    due = solar("sunset", 80.0, 0.0).next_due(_utc("2024-06-21T00:00:00"))
    assert due is not None
    assert due > _utc("2024-08-01T00:00:00")


def test_a_bad_solar_event_or_place_is_named() -> None:
    with pytest.raises(ScheduleError, match="unknown solar event 'moonrise'; choose from"):
        solar("moonrise", 0, 0).check()
    with pytest.raises(ScheduleError, match="latitude 91"):
        solar("sunrise", 91, 0).check()


def test_solar_without_astral_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "astral", None)
    with pytest.raises(ScheduleError, match=r"pip install 'amqpworker\[solar\]'"):
        solar("sunrise", 51.5, 0.0).check()


def test_the_schedule_zone_is_timezone_or_utc_or_the_system_zone() -> None:
    assert zone_for("Asia/Shanghai", True, True) == SHANGHAI
    assert zone_for("Asia/Shanghai", False, True) == SHANGHAI
    assert zone_for("UTC", True, False) == ZoneInfo("UTC")
    assert zone_for("UTC", False, False).utcoffset(dt.datetime.now()) is not None
