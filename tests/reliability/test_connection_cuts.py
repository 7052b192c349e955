"""Connections cut under callers waiting for results: every call still gets its own answer.

Pass figure (from the issue): the connection cut 10 times: calls resume within 2 s of
each cut; 0 lost tasks; 0 lost results; 0 results to the wrong caller.

The worker (an ``amqpworker serve`` subprocess running ``tests.reliability.chaos_app``)
and the callers all reach the shared broker through a :class:`CuttableProxy`, and every
cut drops all of their connections at once, as a network failure would. Several caller
threads, each with an App of its own (its own connection and reply queue), call
``record``, ``echo`` and ``add`` one after the other and ``get()`` every result with a
timeout; each call's arguments are unique, so an answer meant for another call shows.
``record`` also leaves a line in ``runs.log``, which tells a lost task from a lost
result. The quick variant cuts 3 times; the full one, 10 times, is ``slow``.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from amqpworker import App
from amqpworker.exceptions import PublishError

from ..integration.proxy import CuttableProxy
from .chaos_app import runs
from .conftest import wait_for

CHAOS = "tests.reliability.chaos_app"
RECORD, ECHO, ADD = f"{CHAOS}.record", f"{CHAOS}.echo", f"{CHAOS}.add"
CALLERS = 3
RESUME = 2.0  # seconds from a cut to the first round trip begun after it completing
GET_TIMEOUT = 10.0
PUBLISH_TIMEOUT = 10.0
#: The longest one call may take: a publish (its retries bounded by the publish timeout,
#: twice over: the channel, then the confirm) and a get.
CALL_BOUND = 2 * PUBLISH_TIMEOUT + GET_TIMEOUT + 5
CALLS_BETWEEN_CUTS = 3  # round trips completed after a resume before the next cut


@dataclass
class Call:
    caller: int
    kind: str
    key: str
    expected: Any
    began: float
    published: float | None = None  # send_task returned
    ended: float | None = None
    outcome: str = "running"  # ok | wrong | publish-error | <exception type> on get
    got: Any = None
    detail: str = ""


@dataclass
class Caller:
    """One caller thread: round trips, one at a time, until told to stop."""

    number: int
    app: App
    marker_dir: Path
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"caller-{self.number}", daemon=True)

    def one(self, seq: int) -> tuple[str, str, tuple[Any, ...], Any]:
        """The next call: its task, unique key, arguments and the answer it must get."""
        key = f"c{self.number}-{seq}-{uuid.uuid4().hex[:6]}"
        kind = ("record", "echo", "record", "add")[seq % 4]
        if kind == "record":
            return RECORD, key, (str(self.marker_dir), key), key
        if kind == "echo":
            value = {"caller": self.number, "seq": seq, "key": key}
            return ECHO, key, (value,), value
        x, y = self.number * 1_000_000, seq
        return ADD, key, (x, y), x + y

    def run(self) -> None:
        for seq in range(100_000):
            if self.stop.is_set():
                return
            name, key, args, expected = self.one(seq)
            call = Call(self.number, name.rsplit(".", 1)[1], key, expected, time.time())
            with self.lock:
                self.calls.append(call)
            try:
                result = self.app.send_task(name, args)
            except PublishError as exc:
                call.outcome, call.detail, call.ended = "publish-error", str(exc), time.time()
                continue
            call.published = time.time()
            try:
                got = result.get(timeout=GET_TIMEOUT)
            except Exception as exc:  # a lost result: TimeoutError, ResultLost, ...
                call.outcome, call.detail = type(exc).__name__, str(exc)[:200]
            else:
                call.got = got
                call.outcome = "ok" if got == expected else "wrong"
            call.ended = time.time()

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)


@pytest.fixture
def callers(proxy: CuttableProxy, queue: str, tmp_path: Path) -> Iterator[list[Caller]]:
    made = [
        Caller(
            number,
            App(
                f"cut-caller-{number}",
                broker=proxy.url,
                task_default_queue=queue,
                task_publish_timeout=PUBLISH_TIMEOUT,
            ),
            tmp_path,
        )
        for number in range(CALLERS)
    ]
    yield made
    for caller in made:
        caller.stop.set()
    for caller in made:
        caller.thread.join(CALL_BOUND)
        caller.app.close()


def ok_begun_after(callers: list[Caller], moment: float) -> list[Call]:
    """Round trips that began after ``moment`` and got their answer.

    Begun, not published, after a cut: a confirm and a result already on their way when
    the proxy drops the sockets can complete a call published just before the cut
    within milliseconds after it, which says nothing about resuming.
    """
    return [
        call
        for caller in callers
        for call in caller.snapshot()
        if call.outcome == "ok" and call.began > moment
    ]


@pytest.mark.parametrize(
    "cuts",
    [pytest.param(3, id="3-cuts"), pytest.param(10, id="10-cuts", marks=pytest.mark.slow)],
)
@pytest.mark.timeout(300)
def test_calls_survive_connection_cuts_with_their_own_results(
    cuts: int, proxy: CuttableProxy, callers: list[Caller], serve, tmp_path: Path
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    worker = serve(
        "--concurrency", "4", app_path=CHAOS, env={"AMQPWORKER_BROKER_URL": proxy.url}
    ).wait_consuming()
    began = time.time()
    for caller in callers:
        caller.thread.start()
    wait_for(
        lambda: all(any(c.outcome == "ok" for c in caller.snapshot()) for caller in callers),
        20,
        "a first round trip by every caller",
    )
    resumes: list[float] = []
    stalled: list[int] = []
    reconnected: list[int] = []  # connections the proxy accepted between one cut and the next
    for cut in range(cuts):
        # Cut at a random moment of the traffic, not right after a completed call.
        moment = time.time() + rng.uniform(0.0, 0.3)
        wait_for(lambda moment=moment: time.time() >= moment, 1, "the cut's moment")
        cut_at = time.time()
        before = proxy.connections
        proxy.cut()
        try:
            wait_for(
                lambda cut_at=cut_at: bool(ok_begun_after(callers, cut_at)),
                RESUME + 10,
                f"a round trip after cut {cut + 1}",
            )
        except AssertionError:
            stalled.append(cut + 1)
            continue
        resumes.append(min(c.ended or 0.0 for c in ok_begun_after(callers, cut_at)) - cut_at)
        with contextlib.suppress(AssertionError):  # a stall shows in the figures below
            wait_for(
                lambda cut_at=cut_at: len(ok_begun_after(callers, cut_at)) >= CALLS_BETWEEN_CUTS,
                10,
                "a few round trips before the next cut",
            )
        reconnected.append(proxy.connections - before)
    for caller in callers:
        caller.stop.set()
    for caller in callers:
        caller.thread.join(CALL_BOUND)
    hung = [caller.number for caller in callers if caller.thread.is_alive()]
    calls = [call for caller in callers for call in caller.snapshot()]
    finished = [call for call in calls if call.outcome != "running"]
    recorded = {c.key for c in finished if c.kind == "record" and c.published is not None}
    with contextlib.suppress(AssertionError):  # reported below
        wait_for(lambda: recorded <= set(runs(str(tmp_path))), 15, "every record task to run")
    ran = runs(str(tmp_path))

    outcomes = Counter(call.outcome for call in finished)
    wrong = [call for call in finished if call.outcome == "wrong"]
    no_result = [c for c in finished if c.outcome not in ("ok", "wrong", "publish-error")]
    publish_errors = [call for call in finished if call.outcome == "publish-error"]
    lost_tasks = sorted(recorded - set(ran))
    record_lost_result = [c for c in no_result if c.kind == "record" and c.key in ran]
    timed_out_callers = sorted({call.caller for call in no_result})
    summary = [
        f"seed {seed}; {cuts} cuts in {time.time() - began:.1f}s; proxy connections "
        f"{proxy.connections}, new after each cut {reconnected}; {CALLERS} callers",
        "resume after each cut (first round trip begun after it done): "
        + ", ".join(f"{value:.2f}s" for value in resumes)
        + (f"; no round trip within {RESUME + 10}s after cuts {stalled}" if stalled else ""),
        f"calls {len(finished)}: {dict(outcomes)}; wrong answers {len(wrong)}",
        f"lost tasks (record published ok, never ran) {len(lost_tasks)}; results lost "
        f"{len(no_result)} (of them record tasks that ran: {len(record_lost_result)}); "
        f"callers with a lost result: {timed_out_callers}; ran twice "
        f"{sum(1 for n in ran.values() if n > 1)}",
        *(f"  lost result: {c.kind} {c.key} {c.outcome}: {c.detail}" for c in no_result[:10]),
        *(f"  publish error: {c.kind} {c.key}: {c.detail}" for c in publish_errors[:5]),
        *(f"  wrong: {c.kind} {c.key} expected {c.expected!r} got {c.got!r}" for c in wrong[:5]),
    ]
    print("\n".join(summary))
    context = "\n".join(summary) + f"\nworker output (tail):\n{worker.output[-3000:]}"
    assert not hung, f"callers {hung} still in a call after {CALL_BOUND}s\n{context}"
    assert not wrong, f"results to the wrong call\n{context}"
    assert not lost_tasks, f"tasks lost: {lost_tasks[:10]}\n{context}"
    assert not no_result, f"results lost\n{context}"
    assert not publish_errors, f"publishes failed across a short cut\n{context}"
    assert not stalled, f"no round trip at all after cuts {stalled}\n{context}"
    assert max(resumes) <= RESUME, f"calls did not resume within {RESUME}s\n{context}"
    assert worker.process.poll() is None, f"the worker exited\n{context}"
