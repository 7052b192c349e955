"""The broker goes away or stops taking messages: nothing confirmed is lost, nothing hangs.

Pass figures (from the issue):

* A broker node stopped and started 3 times during publish and consume: every publish
  that returned ok runs; consumers are back within 10 s of each start; no call hangs.
* A memory alarm: a publish raises the typed "unknown outcome" error
  (:class:`~amqpworker.exceptions.PublishOutcomeUnknown`) in bounded time; 0 lost; the
  backlog flows within 1 s of the alarm clearing.

Both run on a PRIVATE RabbitMQ node (:class:`~tests.integration.rabbit_node.RabbitNode`),
never the shared broker. The worker is an ``amqpworker serve`` subprocess running
``tests.reliability.chaos_app``; every run leaves a line in ``runs.log``, so the test
counts what ran whatever happened to the result messages. A node start takes 5-15 s
here (2 cores): the module shares one node, the restart test runs once quick (1 restart)
and once ``slow`` (3 restarts, the issue's figure).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import amqpworker.exceptions
from amqpworker import App
from amqpworker.exceptions import AmqpWorkerError

from ..integration.rabbit_node import RabbitNode, node_fixture
from .chaos_app import runs
from .conftest import ServeProcess, wait_for

CHAOS = "tests.reliability.chaos_app"
RECORD = f"{CHAOS}.record"

#: One private node for the module (a start costs 6-15 s); each test has its own queue,
#: and each leaves the node running with the default memory watermark.
rabbit = node_fixture(scope="module")


# Helpers: what ran and when, a publisher on a thread, the client's blocked notices.


class RunMonitor:
    """Polls ``runs.log`` on a thread and notes when each key was first seen (time.time())."""

    def __init__(self, marker_dir: Path, interval: float = 0.02) -> None:
        self.marker_dir = marker_dir
        self.interval = interval
        self.first_seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="run-monitor", daemon=True)

    def __enter__(self) -> RunMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self) -> None:
        now = time.time()
        seen = runs(str(self.marker_dir))
        with self._lock:
            for key in seen:
                self.first_seen.setdefault(key, now)

    def first_after(self, moment: float, keys: set[str] | None = None) -> float | None:
        """The first time after ``moment`` a key (of ``keys``, if given) was seen to run."""
        with self._lock:
            times = [
                at
                for key, at in self.first_seen.items()
                if at > moment and (keys is None or key in keys)
            ]
        return min(times, default=None)


@dataclass
class Call:
    key: str
    began: float  # time.time()
    ended: float
    error: BaseException | None = None

    @property
    def took(self) -> float:
        return self.ended - self.began


@dataclass
class Publisher:
    """Publishes ``record`` tasks one by one on a thread until stopped; notes every call."""

    app: App
    marker_dir: Path
    prefix: str
    interval: float = 0.05
    limit: int = 5000
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self, timeout: float) -> bool:
        """Stop after the current call; False if that call did not return in ``timeout``."""
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        for number in range(self.limit):
            if self._stop.is_set():
                return
            key = f"{self.prefix}-{number}"
            began = time.time()
            error: BaseException | None = None
            try:
                self.app.send_task(RECORD, (str(self.marker_dir), key))
            except Exception as exc:  # noted and judged by the test
                error = exc
            with self.lock:
                self.calls.append(Call(key, began, time.time(), error))
            self._stop.wait(self.interval)

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)

    def ok_keys(self) -> set[str]:
        return {call.key for call in self.snapshot() if call.error is None}

    def ok_after(self, moment: float) -> int:
        return sum(1 for call in self.snapshot() if call.error is None and call.began > moment)


class BlockNotices(logging.Handler):
    """aiormq's "was blocked" / "was unblocked" warnings, with the moment each came."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.blocked: list[float] = []
        self.unblocked: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "was unblocked" in text:
            self.unblocked.append(record.created)
        elif "was blocked" in text:
            self.blocked.append(record.created)


@pytest.fixture
def block_notices() -> Iterator[BlockNotices]:
    handler = BlockNotices()
    logger = logging.getLogger("aiormq.connection")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def start_chaos_worker(
    serve: Callable[..., ServeProcess], node: RabbitNode, concurrency: int = 4
) -> ServeProcess:
    return serve(
        "--concurrency",
        str(concurrency),
        app_path=CHAOS,
        env={"AMQPWORKER_BROKER_URL": node.url},
    ).wait_consuming(60)


def all_ran(marker_dir: Path, keys: set[str]) -> Callable[[], bool]:
    return lambda: keys <= set(runs(str(marker_dir)))


# 1. Restarts.

RESTART_PUBLISH_TIMEOUT = 5.0
#: The longest a publish may take while the broker is away: one wait for the channel and
#: one for the confirm (each bounded by task_publish_timeout), plus scheduling slack.
CALL_BOUND = 2 * RESTART_PUBLISH_TIMEOUT + 2.0
CONSUMERS_BACK = 10.0


@pytest.mark.parametrize(
    "restarts",
    [pytest.param(1, id="1-restart"), pytest.param(3, id="3-restarts", marks=pytest.mark.slow)],
)
@pytest.mark.timeout(420)
def test_broker_restarts_lose_nothing_confirmed(
    restarts: int, rabbit: RabbitNode, serve, queue: str, tmp_path: Path
) -> None:
    worker = start_chaos_worker(serve, rabbit)
    caller = App(
        "restart-caller",
        broker=rabbit.url,
        task_default_queue=queue,
        task_publish_timeout=RESTART_PUBLISH_TIMEOUT,
        broker_connection_timeout=5,
    )
    publisher = Publisher(caller, tmp_path, "r")
    cycles: list[str] = []
    recovery: list[float] = []
    publisher_back: list[float] = []
    try:
        with RunMonitor(tmp_path) as monitor:
            publisher.start()
            for cycle in range(restarts):
                mark = time.time()
                wait_for(
                    lambda mark=mark: (
                        publisher.ok_after(mark) >= 20 and monitor.first_after(mark) is not None
                    ),
                    CONSUMERS_BACK + 20,
                    f"publishing and consuming before stop {cycle + 1}",
                )
                stop_took = rabbit.stop()
                down = rabbit.down_since
                start_took = rabbit.start()
                up = rabbit.serving_since
                assert down is not None
                assert up is not None
                wait_for(
                    lambda up=up: monitor.first_after(up) is not None,
                    CONSUMERS_BACK + start_took + 5,
                    f"a task to run after start {cycle + 1}",
                )
                first_run = monitor.first_after(up)
                assert first_run is not None
                ok_after = [
                    c.ended for c in publisher.snapshot() if c.error is None and c.ended > up
                ]
                recovery.append(first_run - up)
                publisher_back.append(min(ok_after, default=float("nan")) - up)
                cycles.append(
                    f"cycle {cycle + 1}: stop {stop_took:.1f}s, start {start_took:.1f}s "
                    f"(no broker for {up - down:.1f}s); first publish ok "
                    f"{publisher_back[-1]:.2f}s and first run {recovery[-1]:.2f}s "
                    "after the port accepted again"
                )
            mark = time.time()
            wait_for(lambda: publisher.ok_after(mark) >= 20, CALL_BOUND + 10, "publishing after")
            stopped = publisher.stop(CALL_BOUND + 5)
            calls = publisher.snapshot()
            ok = {call.key for call in calls if call.error is None}
            with_error = [call for call in calls if call.error is not None]
            with contextlib.suppress(AssertionError):  # reported below
                wait_for(all_ran(tmp_path, ok), 60, "every confirmed task to run")
    finally:
        publisher.stop(CALL_BOUND + 5)
        caller.close()
    ran = runs(str(tmp_path))
    lost = sorted(ok - set(ran), key=lambda key: int(key.split("-")[1]))
    twice = sum(1 for count in ran.values() if count > 1)
    slowest = max(calls, key=lambda call: call.took)
    untyped = [c for c in with_error if not isinstance(c.error, AmqpWorkerError)]
    error_kinds = sorted({f"{type(c.error).__name__}: {c.error}"[:160] for c in with_error})
    summary = [
        *cycles,
        f"published {len(calls)}: ok {len(ok)}, raised {len(with_error)}; lost {len(lost)} "
        f"of {len(ok)} confirmed; ran twice {twice}; ran though the publish raised "
        f"{sum(1 for c in with_error if c.key in ran)}",
        f"slowest call {slowest.took:.2f}s (bound {CALL_BOUND}s); publisher stopped: {stopped}",
        f"errors: {error_kinds[:6]}",
    ]
    print("\n".join(summary))
    context = "\n".join(summary) + f"\nworker output (tail):\n{worker.output[-3000:]}"
    assert stopped, f"a publish call hung (> {CALL_BOUND + 5}s)\n{context}"
    assert not lost, f"{len(lost)} confirmed tasks never ran: {lost[:20]}\n{context}"
    assert max(recovery) <= CONSUMERS_BACK, f"consumers not back in time\n{context}"
    assert slowest.took <= CALL_BOUND, f"a publish call took too long\n{context}"
    assert not untyped, f"untyped errors from send_task: {untyped[:5]}\n{context}"
    assert worker.process.poll() is None, f"the worker exited\n{context}"


# 3. A memory alarm.

ALARM_PUBLISH_TIMEOUT = 2.0
#: A publish during the alarm must raise within the publish timeout plus this much.
ALARM_SLACK = 1.5
BACKLOG_FLOWS = 1.0
BEFORE, BACKLOG, DURING, AFTER = 20, 20, 3, 20


def test_memory_alarm_raises_outcome_unknown_and_the_backlog_flows_after(
    rabbit: RabbitNode, serve, queue: str, tmp_path: Path, block_notices: BlockNotices
) -> None:
    outcome_unknown = getattr(amqpworker.exceptions, "PublishOutcomeUnknown", None)
    assert outcome_unknown is not None, "amqpworker.exceptions.PublishOutcomeUnknown is missing"
    assert issubclass(outcome_unknown, amqpworker.exceptions.PublishError)
    marker = str(tmp_path)
    worker = start_chaos_worker(serve, rabbit, concurrency=2)
    caller = App(
        "alarm-caller",
        broker=rabbit.url,
        task_default_queue=queue,
        task_publish_timeout=ALARM_PUBLISH_TIMEOUT,
    )
    during: list[Call] = []
    alarm_raised = alarm_cleared = False
    try:
        with RunMonitor(tmp_path) as monitor:
            before = [f"before-{n}" for n in range(BEFORE)]
            caller.send_many([(RECORD, (marker, key)) for key in before])
            wait_for(all_ran(tmp_path, set(before)), 20, "the tasks before the alarm")
            # A backlog: slow tasks still queued when the alarm goes off.
            backlog = [f"backlog-{n}" for n in range(BACKLOG)]
            caller.send_many([(RECORD, (marker, key, 0.3)) for key in backlog])

            alarm_set = time.time()
            alarm_raised = True
            rabbit.ctl("set_vm_memory_high_watermark", "absolute", "1")
            alarm_on = time.time()
            for number in range(DURING):
                key = f"during-{number}"
                began = time.time()
                error: BaseException | None = None
                try:
                    caller.send_task(RECORD, (marker, key), task_id=f"id-{key}")
                except Exception as exc:  # judged below
                    error = exc
                during.append(Call(key, began, time.time(), error))
            ran_before_clearing = set(runs(marker))

            cleared = time.time()
            rabbit.ctl("set_vm_memory_high_watermark", "0.4")
            alarm_off = time.time()
            alarm_cleared = True
            wait_for(lambda: bool(block_notices.unblocked), 15, "connection.unblocked")
            unblocked = block_notices.unblocked[-1]
            waiting = set(backlog) - ran_before_clearing
            wait_for(
                lambda: monitor.first_after(unblocked, waiting) is not None,
                10,
                "the backlog to flow after the alarm cleared",
            )
            flowed = monitor.first_after(unblocked, waiting)
            assert flowed is not None

            after = [f"after-{n}" for n in range(AFTER)]
            caller.send_many([(RECORD, (marker, key)) for key in after])
            confirmed = set(before) | set(backlog) | set(after)
            confirmed |= {call.key for call in during if call.error is None}
            with contextlib.suppress(AssertionError):  # reported below
                wait_for(all_ran(tmp_path, confirmed), 60, "every confirmed task to run")
            # The tasks whose outcome was unknown may run (or not): count those that do.
            with contextlib.suppress(AssertionError):
                wait_for(all_ran(tmp_path, {c.key for c in during}), 3, "the unknown ones")
    finally:
        if alarm_raised and not alarm_cleared:
            rabbit.ctl("set_vm_memory_high_watermark", "0.4", check=False)
        caller.close()

    ran = runs(marker)
    lost = sorted(confirmed - set(ran))
    raised = [call for call in during if call.error is not None]
    unknown = [call for call in raised if isinstance(call.error, outcome_unknown)]
    other = [call for call in raised if not isinstance(call.error, outcome_unknown)]
    slow = [call for call in raised if call.took > ALARM_PUBLISH_TIMEOUT + ALARM_SLACK]
    no_id = [c for c in unknown if getattr(c.error, "message_id", None) in (None, "")]
    no_reason = [c for c in unknown if "block" not in str(c.error).lower()]
    summary = [
        f"alarm set by rabbitmqctl in {alarm_on - alarm_set:.2f}s; client saw "
        f"connection.blocked {[round(t - alarm_set, 2) for t in block_notices.blocked]}s "
        "after the call",
        "publishes during the alarm: "
        + ", ".join(
            f"{c.key} {c.took:.2f}s {type(c.error).__name__ if c.error else 'ok'}" for c in during
        ),
        f"errors: {sorted({str(c.error)[:200] for c in raised})}",
        f"cleared by rabbitmqctl in {alarm_off - cleared:.2f}s; connection.unblocked "
        f"{unblocked - cleared:.2f}s after the call; the backlog flowed {flowed - unblocked:.3f}s "
        f"after connection.unblocked ({flowed - alarm_off:+.3f}s after rabbitmqctl returned)",
        f"backlog still waiting when the alarm cleared: {len(waiting)} of {BACKLOG}",
        f"confirmed {len(confirmed)}, lost {len(lost)}; of {len(raised)} whose publish raised, "
        f"ran {sum(1 for c in raised if c.key in ran)}; ran twice "
        f"{sum(1 for count in ran.values() if count > 1)}",
    ]
    print("\n".join(summary))
    context = "\n".join(summary) + f"\nworker output (tail):\n{worker.output[-3000:]}"
    assert raised, f"no publish failed during the alarm: was it in effect?\n{context}"
    assert not other, f"publishes raised something else than PublishOutcomeUnknown\n{context}"
    assert not slow, f"publishes took longer than the timeout allows\n{context}"
    assert not no_id, f"PublishOutcomeUnknown without the message_id\n{context}"
    wrong_id = [c for c in unknown if getattr(c.error, "message_id", None) != f"id-{c.key}"]
    assert not wrong_id, f"message_id is not the task's id\n{context}"
    assert not no_reason, f"the error does not say the broker blocked the connection\n{context}"
    assert not lost, f"{len(lost)} confirmed tasks never ran: {lost[:20]}\n{context}"
    assert waiting, f"no backlog was left when the alarm cleared: nothing to measure\n{context}"
    assert flowed - unblocked <= BACKLOG_FLOWS, f"the backlog was slow to flow\n{context}"
    assert worker.process.poll() is None, f"the worker exited\n{context}"
