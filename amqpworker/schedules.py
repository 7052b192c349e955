"""When periodic tasks are due: ``crontab``, ``schedule`` (intervals) and ``solar``.

Each schedule answers one question, :meth:`~Schedule.next_due`: the first due time
strictly after a given instant, as an aware UTC datetime (None: never again). Beat asks
it once per run, and :meth:`~Schedule.latest_due` after downtime, to fire one catch-up
run for the most recent due time it missed.

Crontab fields follow Celery's syntax and meaning: ``day_of_week`` 0 is Sunday, names
(``"mon-fri"``, ``"sat,sun"``, ``"thursday"``), steps (``"*/15"``, ``"1-10/3"``),
ranges that wrap (``"fri-mon"``, ``"22-2"``), and a day must match both ``day_of_month``
and ``day_of_week`` (Celery's rule, not Vixie cron's "either"). The cron arithmetic is
croniter's. A crontab is evaluated in wall-clock time of the zone beat passes (the app's
``timezone``): a time a spring-forward change skips runs at the same instant an hour
late (02:30 becomes 03:30), and a time a fall-back change repeats runs once, the first
time.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .exceptions import ImproperlyConfigured

UTC = dt.timezone.utc
#: The most a zone's offset moves at a change (Antarctica/Troll: 2 h), with room.
OFFSET_SWING = dt.timedelta(hours=3)
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


class ScheduleError(ImproperlyConfigured, ValueError):
    """A schedule that cannot be: a field out of range, a negative interval, ..."""


class Schedule:
    """Something that says when it is next due.

    A schedule made with bad values does not raise where it is made (often inside a
    settings dict): it keeps the problem, and :meth:`check` (which beat runs for every
    entry at start-up, naming the entry) raises it.
    """

    problem: str | None = None

    def check(self) -> None:
        """Raise ScheduleError if this schedule was made with bad values."""
        if self.problem is not None:
            raise ScheduleError(self.problem)

    def next_due(self, after: dt.datetime, tz: dt.tzinfo = UTC) -> dt.datetime | None:
        """The first due time strictly after ``after`` (aware, UTC); None: never again."""
        raise NotImplementedError

    def latest_due(
        self, last: dt.datetime, now: dt.datetime, tz: dt.tzinfo = UTC
    ) -> dt.datetime | None:
        """The most recent due time in ``(last, now]``; None when none fell in it.

        Looks back from ``now`` in growing windows, so a long downtime costs a few
        look-ups rather than one per missed run.
        """
        first = self.next_due(last, tz)
        if first is None or first > now:
            return None
        window = dt.timedelta(minutes=1)
        while True:
            start = max(last, now - window)
            found = self.next_due(start, tz)
            if found is not None and found <= now:
                break
            window *= 4
        while True:
            following = self.next_due(found, tz)
            if following is None or following > now:
                return found
            found = following


# Intervals.


class schedule(Schedule):
    """Every ``run_every`` (seconds or a timedelta), counted from the last run.

    With ``relative=True`` the runs are aligned to the clock instead: whole multiples of
    the interval since midnight UTC (every 5 minutes: at :00, :05, ...).
    """

    def __init__(self, run_every: float | dt.timedelta, relative: bool = False) -> None:
        self.relative = relative
        try:
            self.run_every = as_interval(run_every)
        except ScheduleError as exc:
            self.problem = str(exc)
            self.run_every = dt.timedelta(seconds=1)

    @property
    def seconds(self) -> float:
        return self.run_every.total_seconds()

    def next_due(self, after: dt.datetime, tz: dt.tzinfo = UTC) -> dt.datetime:
        self.check()
        if not self.relative:
            return after + self.run_every
        epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
        periods = math.floor((after - epoch) / self.run_every) + 1
        return epoch + periods * self.run_every

    def latest_due(
        self, last: dt.datetime, now: dt.datetime, tz: dt.tzinfo = UTC
    ) -> dt.datetime | None:
        first = self.next_due(last, tz)
        if first > now:
            return None
        return first + math.floor((now - first) / self.run_every) * self.run_every

    def __repr__(self) -> str:
        return f"<freq: {humanize_seconds(self.seconds)}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, schedule):
            return NotImplemented
        return (self.run_every, self.relative) == (other.run_every, other.relative)

    def __hash__(self) -> int:
        return hash((self.run_every, self.relative))


def as_interval(value: Any) -> dt.timedelta:
    """Seconds or a timedelta as a positive timedelta; anything else is a ScheduleError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, dt.timedelta)):
        raise ScheduleError(f"an interval is seconds or a timedelta, not {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ScheduleError(f"an interval must be a finite number of seconds, not {value!r}")
    interval = value if isinstance(value, dt.timedelta) else dt.timedelta(seconds=value)
    if interval <= dt.timedelta(0):
        raise ScheduleError(f"an interval must be more than zero seconds, not {value!r}")
    return interval


def humanize_seconds(seconds: float) -> str:
    """``10.00 seconds``, ``1.50 minutes``: how Celery prints an interval."""
    for unit, size in (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0)):
        if seconds >= size:
            amount = seconds / size
            return f"{amount:.2f} {unit}{'' if amount == 1 else 's'}"
    return f"{seconds:.2f} second{'' if seconds == 1 else 's'}"


# Crontab.


class _Field:
    """One crontab field: its name, range and the names its values may have."""

    def __init__(self, name: str, low: int, high: int, names: tuple[str, ...] = ()) -> None:
        self.name = name
        self.low = low
        self.high = high
        self.names = names

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def parse(self, spec: Any) -> list[int]:
        """Celery's syntax to the sorted values it stands for."""
        if isinstance(spec, bool):
            raise self._error(spec, "is not a crontab value")
        if isinstance(spec, int):
            return [self._check(spec, spec)]
        if isinstance(spec, str):
            values: set[int] = set()
            for part in spec.replace(" ", "").split(","):
                values.update(self._part(part, spec))
            return sorted(values)
        if isinstance(spec, Iterable):
            return sorted({self._check(self._number(item, spec), spec) for item in spec})
        raise self._error(spec, "is not a crontab value (a string, a number or numbers)")

    def _part(self, part: str, spec: Any) -> list[int]:
        match = re.fullmatch(r"(\*|\w+(?:-\w+)?)(?:/(\w+))?", part)
        if match is None:
            raise self._error(spec, f"{part!r} is not *, N, N-M or one of those with /STEP")
        span, step_text = match.groups()
        step = 1
        if step_text is not None:
            step = self._number(step_text, spec, named=False)
            if step < 1:
                raise self._error(spec, f"step {step} must be 1 or more")
        if span == "*":
            first, last = self.low, self.high
        elif "-" in span:
            first_text, last_text = span.split("-")
            first = self._check(self._number(first_text, spec), spec)
            last = self._check(self._number(last_text, spec), spec)
        else:
            first = self._check(self._number(span, spec), spec)
            last = self.high if step_text is not None else first
        if last < first:  # wraps around: fri-mon, 22-2
            last += self.size
        return [self.low + (value - self.low) % self.size for value in range(first, last + 1, step)]

    def _number(self, text: Any, spec: Any, named: bool = True) -> int:
        if isinstance(text, int) and not isinstance(text, bool):
            return text
        if isinstance(text, str):
            if text.isdigit():
                return int(text)
            key = text[:3].lower()
            if named and self.names and key in self.names and text.isalpha():
                return self.names.index(key) + self.low
        raise self._error(spec, f"{text!r} is not a number" + (" or a name" if named else ""))

    def _check(self, value: int, spec: Any) -> int:
        if not self.low <= value <= self.high:
            raise self._error(spec, f"{value} is out of range {self.low}-{self.high}")
        return value

    def _error(self, spec: Any, why: str) -> ScheduleError:
        return ScheduleError(f"crontab {self.name}={spec!r}: {why}")


FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day_of_month", 1, 31),
    _Field("month_of_year", 1, 12, MONTHS),
    _Field("day_of_week", 0, 6, WEEKDAYS),
)


class crontab(Schedule):
    """Due at every wall-clock minute that matches all five fields (Celery's syntax)."""

    def __init__(
        self,
        minute: Any = "*",
        hour: Any = "*",
        day_of_week: Any = "*",
        day_of_month: Any = "*",
        month_of_year: Any = "*",
    ) -> None:
        self._orig = (minute, hour, day_of_month, month_of_year, day_of_week)
        try:
            parsed = [field.parse(spec) for field, spec in zip(FIELDS, self._orig, strict=True)]
        except ScheduleError as exc:
            self.problem = str(exc)
            parsed = [list(range(field.low, field.high + 1)) for field in FIELDS]
        self.minute, self.hour, self.day_of_month, self.month_of_year, self.day_of_week = (
            set(values) for values in parsed
        )
        self._expression = " ".join(
            "*" if len(values) == field.size else ",".join(map(str, values))
            for field, values in zip(FIELDS, parsed, strict=True)
        )
        if self.problem is None and self._match_after(dt.datetime(2000, 1, 1), years=28) is None:
            self.problem = f"{self!r} never matches a date (no such day in those months)"

    def _match_after(self, local: dt.datetime, years: int = 50) -> dt.datetime | None:
        """The first matching wall-clock time after ``local`` (naive), or None."""
        try:
            found = croniter(
                self._expression, local, day_or=False, max_years_between_matches=years
            ).get_next(dt.datetime)
        except Exception:  # croniter's CroniterBadDateError: nothing within `years`
            return None
        assert isinstance(found, dt.datetime)
        return found

    def next_due(self, after: dt.datetime, tz: dt.tzinfo = UTC) -> dt.datetime | None:
        self.check()
        after = after.astimezone(UTC)
        local = after.astimezone(tz).replace(tzinfo=None)
        # Near an offset change a wall time before `local` can map to an instant after
        # `after` (a skipped time moves an hour on), so those are looked at too.
        cursor = local if _steady(tz, after) else local - OFFSET_SWING
        best: dt.datetime | None = None
        best_local = local
        while True:
            candidate = self._match_after(cursor)
            if candidate is None:
                return best
            if best is not None and candidate > best_local + OFFSET_SWING:
                return best
            instant = candidate.replace(tzinfo=tz).astimezone(UTC)
            if instant > after and (best is None or instant < best):
                best, best_local = instant, candidate
                if _steady(tz, instant) and candidate > local:
                    return best
            cursor = candidate

    def __repr__(self) -> str:
        minute, hour, day_of_month, month_of_year, day_of_week = self._orig
        return (
            f"<crontab: {minute} {hour} {day_of_month} {month_of_year} {day_of_week} (m/h/dM/MY/d)>"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, crontab):
            return NotImplemented
        return self._expression == other._expression

    def __hash__(self) -> int:
        return hash(self._expression)


def _steady(tz: dt.tzinfo, instant: dt.datetime) -> bool:
    """True when the zone's offset does not change within OFFSET_SWING of ``instant``."""
    before = (instant - OFFSET_SWING).astimezone(tz).utcoffset()
    after = (instant + OFFSET_SWING).astimezone(tz).utcoffset()
    return before == after


# Solar events.

#: Celery's event names -> (astral function, the sun's depression below the horizon).
SOLAR_EVENTS: dict[str, tuple[str, float | None]] = {
    "dawn_astronomical": ("dawn", 18.0),
    "dawn_nautical": ("dawn", 12.0),
    "dawn_civil": ("dawn", 6.0),
    "sunrise": ("sunrise", None),
    "solar_noon": ("noon", None),
    "sunset": ("sunset", None),
    "dusk_civil": ("dusk", 6.0),
    "dusk_nautical": ("dusk", 12.0),
    "dusk_astronomical": ("dusk", 18.0),
}


class solar(Schedule):
    """Due at a solar event (``"sunrise"``, ``"dusk_civil"``, ...) at a place on Earth.

    Needs the ``astral`` package: ``pip install amqpworker[solar]``. On days the event
    does not happen there (polar day or night) there is no run.
    """

    def __init__(self, event: str, lat: float, lon: float) -> None:
        self.event, self.lat, self.lon = event, lat, lon
        self._sun: Any = None
        self._observer: Any = None
        if event not in SOLAR_EVENTS:
            self.problem = f"unknown solar event {event!r}; choose from {', '.join(SOLAR_EVENTS)}"
        elif not -90 <= lat <= 90:
            self.problem = f"solar latitude {lat} is out of range -90..90"
        elif not -180 <= lon <= 180:
            self.problem = f"solar longitude {lon} is out of range -180..180"
        else:
            try:
                import astral
                import astral.sun
            except ImportError:
                self.problem = (
                    "solar schedules need the astral package: pip install 'amqpworker[solar]'"
                )
            else:
                self._observer = astral.Observer(latitude=lat, longitude=lon)
                self._sun = astral.sun

    def _event_on(self, day: dt.date) -> dt.datetime | None:
        function_name, depression = SOLAR_EVENTS[self.event]
        function = getattr(self._sun, function_name)
        options: dict[str, Any] = {"tzinfo": UTC}
        if depression is not None:
            options["depression"] = depression
        try:
            moment = function(self._observer, day, **options)
        except ValueError:  # the sun does not get there that day
            return None
        assert isinstance(moment, dt.datetime)
        return moment.astimezone(UTC).replace(microsecond=0)

    def next_due(self, after: dt.datetime, tz: dt.tzinfo = UTC) -> dt.datetime | None:
        self.check()
        after = after.astimezone(UTC)
        day = after.date() - dt.timedelta(days=1)
        for _ in range(370):
            moment = self._event_on(day)
            if moment is not None and moment > after:
                return moment
            day += dt.timedelta(days=1)
        return None

    def __repr__(self) -> str:
        return f"<solar: {self.event} at latitude {self.lat}, longitude: {self.lon}>"


def as_schedule(value: Any, relative: bool = False) -> Schedule:
    """An entry's ``schedule``, checked: a Schedule, or seconds / a timedelta (an interval).

    Raises:
        ScheduleError: the schedule is made with bad values, or is not a schedule.
    """
    made = value if isinstance(value, Schedule) else schedule(as_interval(value), relative)
    made.check()
    return made


def zone_for(timezone: str, enable_utc: bool, timezone_set: bool) -> dt.tzinfo:
    """The zone crontabs are read in, as Celery picks it.

    The ``timezone`` setting when it was set; else UTC, or the system's zone when
    ``enable_utc`` is off.
    """
    if timezone_set or enable_utc:
        return ZoneInfo(timezone)
    return system_zone()


def system_zone() -> dt.tzinfo:
    """This machine's zone: TZ, else /etc/localtime's name, else its current offset."""
    names = [os.environ.get("TZ", "").lstrip(":")]
    localtime = Path("/etc/localtime")
    if localtime.is_symlink():
        names.append(str(localtime.resolve()).partition("zoneinfo/")[2])
    for name in names:
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    zone = dt.datetime.now().astimezone().tzinfo
    return zone or UTC
