"""Beat against the real broker, as `amqpworker beat` processes.

Every test has its own task queue, its own beat queues (``beat_queue_prefix``) and its
own entry names, so beats of other tests (or programs) never count here. Runs are
counted by the due time each message carries (its id is ENTRY@DUE).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from amqpworker.wire.beat import DUE_HEADER, ENTRY_HEADER

from .conftest import BrokerAdmin, CliProcess, run_cli, wait_for

APP = "tests.integration.beat_app"
ONE = dt.timedelta(seconds=1)


class BeatProcess(CliProcess):
    """`amqpworker beat` as a subprocess."""

    def wait_for_line(self, text: str, timeout: float) -> float:
        wait_for(lambda: self.first(text) is not None, timeout, f"{text!r} from beat")
        found = self.first(text)
        assert found is not None
        return found

    @property
    def active(self) -> bool:
        return self.process.poll() is None and self.first("beat: active") is not None


@pytest.fixture
def beat_env(broker_url: str, queue: str, admin: BrokerAdmin, tmp_path: Path) -> dict[str, str]:
    """The environment of this test's beats and workers: its queue, prefix and entries."""
    label = uuid.uuid4().hex[:8]
    prefix = f"beat-test-{label}"
    admin.created.update({f"{prefix}.leader", f"{prefix}.state"})
    return {
        **os.environ,
        "AMQPWORKER_BROKER_URL": broker_url,
        "AMQPWORKER_TASK_DEFAULT_QUEUE": queue,
        "AMQPWORKER_BEAT_QUEUE_PREFIX": prefix,
        "BEAT_TEST_ENTRY": f"every-second-{label}",
        "BEAT_TEST_MARKERS": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def start_beat(beat_env: dict[str, str]) -> Iterator[Callable[..., BeatProcess]]:
    started: list[BeatProcess] = []

    def start(*extra: str, env: dict[str, str] | None = None) -> BeatProcess:
        process = BeatProcess(["beat", "-A", APP, *extra], {**beat_env, **(env or {})})
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def due_times(admin: BrokerAdmin, queue: str, entry: str) -> list[dt.datetime]:
    """The due time of every run of ``entry`` waiting in ``queue`` (taken out of it)."""
    found = []
    for message in admin.get_all(queue, limit=5000):
        headers = message.headers or {}
        if headers.get(ENTRY_HEADER) == entry:
            due = dt.datetime.fromisoformat(str(headers[DUE_HEADER]))
            assert message.message_id == f"{entry}@{due.isoformat()}"
            found.append(due)
    return sorted(found)


def runs(markers: Path, entry: str) -> int:
    return len(list(markers.glob(f"{entry}.run*")))


def test_an_interval_entry_and_an_add_periodic_task_entry_run_three_times_in_4s(
    start_beat, serve, beat_env: dict[str, str], tmp_path: Path
) -> None:
    periodic = f"periodic-{uuid.uuid4().hex[:8]}"
    env = {**beat_env, "BEAT_TEST_PERIODIC": periodic}
    serve(app_path=APP, env=env).wait_consuming()
    beat = start_beat(env=env)
    beat.wait_for_line("beat: active", 30)
    entry = beat_env["BEAT_TEST_ENTRY"]
    wait_for(
        lambda: runs(tmp_path, entry) >= 3 and runs(tmp_path, periodic) >= 3,
        4.0,
        f"3 runs of each entry (have {runs(tmp_path, entry)} and {runs(tmp_path, periodic)})",
    )


def test_serve_B_runs_beat_inside_the_worker(serve, beat_env: dict[str, str], tmp_path) -> None:
    worker = serve("-B", app_path=APP, env=beat_env).wait_consuming()
    entry = beat_env["BEAT_TEST_ENTRY"]
    wait_for(lambda: runs(tmp_path, entry) >= 3, 10.0, "3 runs from serve -B")
    assert "beat: active" in worker.output


def test_beat_stopped_for_10s_fires_one_catch_up_run_then_on_schedule(
    start_beat, admin: BrokerAdmin, queue: str, beat_env: dict[str, str]
) -> None:
    entry = beat_env["BEAT_TEST_ENTRY"]
    first = start_beat()
    first.wait_for_line("beat: active", 30)
    first.wait_for_line("beat: sent", 5)
    time.sleep(2.5)  # a few runs on schedule (a duration, not an event to wait for)
    first.stop()
    before = due_times(admin, queue, entry)
    assert len(before) >= 2
    assert all(b - a == ONE for a, b in itertools.pairwise(before))

    time.sleep(10)  # the downtime under test
    restarted, restarted_at = dt.datetime.now(dt.timezone.utc), time.monotonic()
    second = start_beat()
    active = second.wait_for_line("beat: active", 30)
    active_wall = restarted + dt.timedelta(seconds=active - restarted_at)
    time.sleep(3.5)
    second.stop()
    after = due_times(admin, queue, entry)

    catch_up, *on_schedule = after
    # One run for the whole downtime: the most recent due time missed, at start-up.
    assert before[-1] + 9 * ONE <= catch_up
    assert active_wall - ONE <= catch_up <= active_wall
    caught_up_at = second.first("catch_up=True", active)
    assert caught_up_at is not None, second.output
    assert caught_up_at - active < 1.0, second.output
    # Then every second after it, none twice.
    assert len(on_schedule) >= 2
    assert [due - catch_up for due in on_schedule] == [
        (n + 1) * ONE for n in range(len(on_schedule))
    ]


def test_a_run_to_a_missing_exchange_is_dropped_and_the_others_go_on(
    start_beat, admin: BrokerAdmin, queue: str, beat_env: dict[str, str]
) -> None:
    broken = f"broken-{uuid.uuid4().hex[:8]}"
    beat = start_beat(env={"BEAT_TEST_BROKEN_ENTRY": broken})
    beat.wait_for_line("beat: run dropped", 30)
    wait_for(lambda: beat.output.count("beat: sent") >= 6, 10, "runs after the dropped one")
    beat.stop()
    assert "does not exist" in beat.output
    assert "stepped down" not in beat.output
    dues = due_times(admin, queue, beat_env["BEAT_TEST_ENTRY"])
    assert len(dues) >= 3
    assert all(b - a == ONE for a, b in itertools.pairwise(dues))


def test_beat_list_shows_entries_schedule_last_run_and_next_due(
    start_beat, beat_env: dict[str, str]
) -> None:
    entry = beat_env["BEAT_TEST_ENTRY"]
    listed = run_cli("beat", "-A", APP, "--list", env=beat_env)
    assert listed.returncode == 0, listed.stderr
    assert f"{entry}: tests.integration.beat_app.tick <freq: 1.00 second>" in listed.stdout
    assert "last run: never" in listed.stdout

    beat = start_beat()
    beat.wait_for_line("beat: sent", 30)
    beat.stop()
    listed = run_cli("beat", "-A", APP, "--list", env=beat_env)
    assert "last run: never" not in listed.stdout
    assert "last run: 20" in listed.stdout


def test_bad_entries_stop_beat_at_start_naming_each(beat_env: dict[str, str]) -> None:
    result = run_cli("beat", "-A", "tests.integration.beat_bad_app", env=beat_env)
    assert result.returncode == 2
    for entry, why in [
        ("no-such-task", "unknown task 'tests.integration.beat_bad_app.nope'"),
        ("minute-61", "crontab minute='61': 61 is out of range 0-59"),
        ("negative", "more than zero seconds"),
        ("moonrise", "unknown solar event 'moonrise'"),
    ]:
        assert f"entry {entry!r}: " in result.stderr, result.stderr
        assert why in result.stderr, result.stderr
    assert "beat: standing by" not in result.stderr + result.stdout


def test_a_queue_in_the_way_of_the_state_queue_is_a_clear_error(
    start_beat, admin: BrokerAdmin, beat_env: dict[str, str]
) -> None:
    name = f"{beat_env['AMQPWORKER_BEAT_QUEUE_PREFIX']}.state"
    admin.run(admin._with_channel(lambda channel: channel.declare_queue(name, durable=True)))
    beat = start_beat()
    assert beat.process.wait(30) == 1
    beat.stop()
    assert f"queue '{name}' exists and is not beat's state queue" in beat.output


def _takeovers(
    start_beat: Callable[..., BeatProcess], kills: int, every: float
) -> tuple[list[float], list[tuple[float, float]]]:
    """Run two beats; kill the active one (SIGKILL) ``kills`` times, starting another each
    time. Returns the takeover times and the (kill, takeover) wall-clock windows."""
    beats = [start_beat(), start_beat()]
    wait_for(lambda: any(beat.active for beat in beats), 30, "an active beat")
    takeovers: list[float] = []
    windows: list[tuple[float, float]] = []
    for _ in range(kills):
        time.sleep(every)  # runs on schedule between kills (the duration under test)
        (active,) = [beat for beat in beats if beat.active]
        killed_at, killed_wall = time.monotonic(), time.time()
        active.process.send_signal(signal.SIGKILL)
        active.process.wait(10)
        beats.remove(active)
        beats.append(start_beat())

        def took_over(since: float = killed_at) -> bool:
            return any(beat.first("beat: active", since) is not None for beat in beats)

        wait_for(took_over, 10, "another beat to take over")
        at = min(
            found for beat in beats if (found := beat.first("beat: active", killed_at)) is not None
        )
        takeovers.append(at - killed_at)
        windows.append((killed_wall, killed_wall + (at - killed_at)))
    time.sleep(every)
    for beat in beats:
        beat.stop()
    return takeovers, windows


def _check_every_due_second_once(
    dues: list[dt.datetime], windows: list[tuple[float, float]]
) -> tuple[int, int]:
    """No due time twice; a missing one only inside a takeover window (then caught up)."""
    doubled = [due for due, count in Counter(dues).items() if count > 1]
    assert not doubled, f"fired twice: {doubled}"
    missing = []
    due = dues[0]
    while due < dues[-1]:
        if due not in dues:
            missing.append(due)
        due += ONE
    for gone in missing:
        stamp = gone.timestamp()
        assert any(start - 1 <= stamp <= end + 1 for start, end in windows), (
            f"{gone} missing outside any takeover ({windows})"
        )
        caught = [d for d in dues if d > gone]
        assert caught, f"{gone} was never caught up"
    return len(missing), len(doubled)


def test_killing_the_active_beat_hands_over_within_5s_without_double_runs(
    start_beat, admin: BrokerAdmin, queue: str, beat_env: dict[str, str]
) -> None:
    takeovers, windows = _takeovers(start_beat, kills=1, every=3)
    dues = due_times(admin, queue, beat_env["BEAT_TEST_ENTRY"])
    missing, doubled = _check_every_due_second_once(dues, windows)
    print(f"takeover: {takeovers}; missing ticks {missing}, doubled {doubled}")
    assert all(seconds < 5 for seconds in takeovers), takeovers


@pytest.mark.slow
def test_five_sigkills_in_60s_every_due_second_fires_once(
    start_beat, admin: BrokerAdmin, queue: str, beat_env: dict[str, str]
) -> None:
    started = time.monotonic()
    takeovers, windows = _takeovers(start_beat, kills=5, every=10)
    dues = due_times(admin, queue, beat_env["BEAT_TEST_ENTRY"])
    missing, doubled = _check_every_due_second_once(dues, windows)
    print(
        f"\nran {time.monotonic() - started:.1f}s, {len(dues)} runs; takeover after each "
        f"SIGKILL: {[round(seconds, 2) for seconds in takeovers]}; "
        f"missing ticks: {missing}; doubled: {doubled}"
    )
    assert all(seconds < 5 for seconds in takeovers), takeovers
    assert len(dues) >= 55
