"""The beat process: stand by, become the active beat, fire each entry when due.

Any number of beats may run with one ``beat_queue_prefix``; the broker lets one be
active (see :mod:`amqpworker.broker.beat`). The active one reads when each entry last
fired (the due time, kept in the broker), fires what fell due while no beat was active
once (the most recent missed due time: a catch-up run), and then each run on time. Each
run goes out in one transaction with the new record of what fired, under the task id
``ENTRY@DUE-TIME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterable

from ..app import App
from ..app.publisher import Publisher
from ..broker import Broker
from ..broker.beat import (
    Leadership,
    Transactions,
    declare_state_queue,
    read_state,
    state_queue,
)
from ..exceptions import MalformedMessage, PublishError
from ..log import get_logger
from ..wire.beat import FiredRecord, tick_id
from .entries import Entry, load_entries, schedule_zone

log = get_logger(__name__)

#: The longest the active beat sleeps between two looks at the clock.
MAX_NAP = 5.0


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def read_record(broker: Broker, prefix: str) -> FiredRecord:
    """The newest record of what fired; an empty one when there is none (or it is bad)."""
    newest = FiredRecord(written=dt.datetime.min.replace(tzinfo=dt.timezone.utc))
    for envelope in await read_state(broker, prefix):
        try:
            record = FiredRecord.decode(envelope)
        except MalformedMessage as exc:
            log.warning("beat: skipped a malformed state record", error=str(exc))
            continue
        if record.written > newest.written:
            newest = record
    return newest


class Beat:
    """One beat: a standby until the broker makes it the active one."""

    def __init__(
        self, app: App, entries: Iterable[Entry] | None = None, *, name: str | None = None
    ) -> None:
        self.app = app
        self.entries = list(entries) if entries is not None else load_entries(app)
        self.zone = schedule_zone(app)
        self.prefix = app.conf.beat_queue_prefix
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        #: The due time each entry last fired for, as the broker's record says.
        self.last: dict[str, dt.datetime] = {}
        self.next: dict[str, dt.datetime | None] = {}
        #: Set once connected (standing by or active).
        self.ready = threading.Event()
        self.active = False
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False

    def request_stop(self) -> None:
        """Stop (from any thread): give up being active, close the connection, return."""
        self._stop_requested = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)

    async def run(self, install_signals: bool = False) -> None:
        """Run until :meth:`request_stop` (or SIGTERM/SIGINT with ``install_signals``)."""
        self._loop = asyncio.get_running_loop()
        self._stop = stop = asyncio.Event()
        if self._stop_requested:
            stop.set()
        if install_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(signum, stop.set)
        broker = Broker.for_settings(self.app.conf, f"amqpworker beat {self.id}")
        try:
            await broker.connect()
            await declare_state_queue(broker, self.prefix)
            leadership = Leadership(broker, self.prefix)
            self.ready.set()
            log.info("beat: standing by", beat=self.id, entries=len(self.entries))
            while not stop.is_set():
                if not await leadership.acquire(stop):
                    break
                try:
                    await self._lead(broker, leadership, stop)
                except Exception as exc:  # the broker went away mid-way: stand by again
                    log.warning("beat: stepped down after an error", error=f"{exc!r}")
                finally:
                    self.active = False
                    await leadership.release()
                if not stop.is_set():
                    log.info("beat: standing by", beat=self.id)
        finally:
            self.ready.set()
            if install_signals:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    self._loop.remove_signal_handler(signum)
            await broker.close()
            log.info("beat: stopped", beat=self.id)

    async def _lead(self, broker: Broker, leadership: Leadership, stop: asyncio.Event) -> None:
        transactions = Transactions(broker)
        await transactions.open()
        try:
            record = await read_record(broker, self.prefix)
            names = {entry.name for entry in self.entries}
            self.last = {name: due for name, due in record.fired.items() if name in names}
            anchor = utcnow().replace(microsecond=0)
            self.next = {
                entry.name: entry.schedule.next_due(self.last.get(entry.name, anchor), self.zone)
                for entry in self.entries
            }
            self.active = True
            log.info(
                "beat: active",
                beat=self.id,
                previous=record.by or None,
                entries=len(self.entries),
            )
            publisher = Publisher(
                broker, self.app.conf, self.app.serializers, lambda: self.app.topology
            )
            while leadership.held and not stop.is_set():
                now = utcnow()
                due = [
                    entry
                    for entry in self.entries
                    if (upcoming := self.next[entry.name]) is not None and upcoming <= now
                ]
                if due:
                    await self._fire(publisher, transactions, due, now, anchor)
                    continue
                await self._nap(stop, leadership.lost, now)
        finally:
            await transactions.close()

    async def _fire(
        self,
        publisher: Publisher,
        transactions: Transactions,
        due: list[Entry],
        now: dt.datetime,
        anchor: dt.datetime,
    ) -> None:
        """Send every entry that is due, with the new record, in one transaction.

        An entry late by more than one run (no beat was active, or this one stalled)
        sends one run, for the most recent due time it missed.
        """
        runs = []
        for entry in due:
            base = self.last.get(entry.name, anchor)
            when = entry.schedule.latest_due(base, now, self.zone)
            assert when is not None
            runs.append((entry, when, when != self.next[entry.name]))
        prepared = []
        for entry, when, _ in runs:
            message = entry.message(self.app, when)
            try:
                # A missing exchange would close the transaction's channel, every time.
                await publisher.broker.check_exchange(message[1].exchange)
            except PublishError as exc:
                log.error("beat: run dropped", id=message[0].id, error=str(exc))
                continue
            prepared.append(message)
        outgoing = await publisher.outgoing(prepared)
        fired = {**self.last, **{entry.name: when for entry, when, _ in runs}}
        record = FiredRecord(fired, self.id)
        await transactions.publish_together(
            [*outgoing, (record.encode(), "", state_queue(self.prefix))]
        )
        for entry, when, late in runs:
            self.last[entry.name] = when
            self.next[entry.name] = entry.schedule.next_due(when, self.zone)
            log.info(
                "beat: sent",
                entry=entry.name,
                task=entry.task,
                id=tick_id(entry.name, when),
                due=when.isoformat(),
                **({"catch_up": True} if late else {}),
            )

    async def _nap(self, stop: asyncio.Event, lost: asyncio.Event, now: dt.datetime) -> None:
        """Sleep until the next run is due, at most MAX_NAP; wake on stop or lost lock."""
        upcoming = [moment for moment in self.next.values() if moment is not None]
        seconds = min([(min(upcoming) - now).total_seconds(), MAX_NAP]) if upcoming else MAX_NAP
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
        try:
            await asyncio.wait(waiters, timeout=max(seconds, 0.0), return_when="FIRST_COMPLETED")
        finally:
            for waiter in waiters:
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
