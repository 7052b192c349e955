"""``amqpworker events``: read events from a queue of the monitor's own, dump or draw them.

The queue is exclusive and auto-deleted (it goes with the monitor's connection), with
the app's ``event_queue_ttl`` and ``event_queue_expires`` and a length bound, so a
monitor that stops reading never fills the broker. A malformed event is counted and
warned about (once, then at most every :data:`WARN_INTERVAL` seconds), never a reason
to stop. Ctrl-C or SIGTERM ends it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from ..broker import Broker, Delivery
from ..broker.events import consume_events
from ..exceptions import DeliveryLost
from ..settings import Settings
from ..wire.events import Event, MalformedEvent, decode_events
from .state import MonitorState
from .view import render

#: The most events a monitor's queue holds; past it the oldest are dropped.
MAX_LENGTH = 10_000
#: Seconds between two warnings about malformed events.
WARN_INTERVAL = 10.0
#: Seconds between two redraws of the live view.
REFRESH = 0.5


class Reader:
    """Decodes each delivery; a malformed one is counted and warned about, then skipped."""

    def __init__(
        self,
        on_event: Callable[[Event], None],
        warn: Callable[[str], None],
        state: MonitorState | None = None,
    ) -> None:
        self.on_event = on_event
        self.warn = warn
        self.state = state
        self.malformed = 0
        self._warned = 0
        self._last_warning = -WARN_INTERVAL

    def on_delivery(self, delivery: Delivery) -> None:
        with contextlib.suppress(DeliveryLost):
            delivery.ack_soon()
        try:
            events, problems = decode_events(delivery.envelope)
        except MalformedEvent as exc:
            events, problems = [], [str(exc)]
        for problem in problems:
            self._malformed(problem)
        for event in events:
            self.on_event(event)

    def _malformed(self, why: str) -> None:
        self.malformed += 1
        if self.state is not None:
            self.state.malformed = self.malformed
        now = time.monotonic()
        if now - self._last_warning >= WARN_INTERVAL:
            more = self.malformed - self._warned - 1
            also = f" ({more} more since the last warning)" if more > 0 else ""
            self.warn(f"skipped a malformed event: {why}{also}")
            self._warned = self.malformed
            self._last_warning = now


async def watch(
    conf: Settings,
    *,
    dump: bool,
    max_length: int = MAX_LENGTH,
    keys: tuple[str, ...] = ("#",),
    out: TextIO | None = None,
) -> None:
    """Print events as JSON lines (``dump``) or draw the live view, until a signal."""
    out = out or sys.stdout
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    broker = Broker.for_settings(conf, "amqpworker events")
    try:
        await broker.connect()
        if dump:
            await _dump(broker, conf, max_length, keys, out, stop)
        else:
            await _live(broker, conf, max_length, keys, out, stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await broker.close()  # the exclusive queue goes with the connection


async def _consume(
    broker: Broker, conf: Settings, max_length: int, keys: tuple[str, ...], reader: Reader
) -> str:
    name, _ = await consume_events(
        broker,
        reader.on_delivery,
        ttl=conf.event_queue_ttl,
        expires=conf.event_queue_expires,
        max_length=max_length,
        keys=keys,
    )
    return name


def _to_stderr(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


async def _dump(
    broker: Broker,
    conf: Settings,
    max_length: int,
    keys: tuple[str, ...],
    out: TextIO,
    stop: asyncio.Event,
) -> None:
    def write(event: Event) -> None:
        try:
            out.write(json.dumps(event, default=str, separators=(",", ":")) + "\n")
            out.flush()
        except BrokenPipeError:  # piped into `head`, say: the reader is gone
            stop.set()

    name = await _consume(broker, conf, max_length, keys, Reader(write, _to_stderr))
    _announce(broker, name)
    await stop.wait()


async def _live(
    broker: Broker,
    conf: Settings,
    max_length: int,
    keys: tuple[str, ...],
    out: TextIO,
    stop: asyncio.Event,
) -> None:
    state = MonitorState()
    console = Console(file=out)

    def warn(text: str) -> None:
        console.print(Text(f"warning: {text}", style="yellow"))

    name = await _consume(broker, conf, max_length, keys, Reader(state.feed, warn, state))
    _announce(broker, name)
    source = broker.safe_url
    with Live(render(state, source), console=console, auto_refresh=False) as live:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH)
            live.update(render(state, source), refresh=True)


def _announce(broker: Broker, queue: str) -> None:
    print(f"watching events on {broker.safe_url} (queue {queue})", file=sys.stderr, flush=True)
