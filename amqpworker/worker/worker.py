"""The worker's lifecycle: connect, declare, consume, stop gracefully.

What happens to each delivery is the pipeline's business (``pipeline.py``, with one
module per step in ``steps/``): decode, copies, eta, joins, admission to run, the run,
its retry, result and workflow, and how the delivery ends. The worker owns what those
steps share: two broker connections (one consuming, one publishing), the thread pool,
the counters, and the signals.

Each delivery is handled in a task of our own, not in aio-pika's consumer task, so a
reconnect (which closes the old channel and cancels its consumer tasks) never cancels
a running job; its ack then fails and the broker redelivers the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ..app import App
from ..app.publisher import Publisher
from ..broker import Broker, Consumer, Delivery
from ..broker.events import EventSender
from ..log import get_logger, hide_password
from ..loop import resolved
from ..topology import QueueSpec
from .control import RemoteControl
from .health import Look
from .limits import start_up_warnings
from .pipeline import Job, Proceed, compose
from .pool import TaskThreads
from .presence import Presence
from .processes import ProcessPool, child_spec
from .revocations import Revocations
from .settle import Settler
from .stats import WorkerStats
from .steps import Eta, Execute, RateLimits, Slots, default_steps

if TYPE_CHECKING:
    from .monitoring import Monitoring

__all__ = ["Worker", "WorkerStats"]

log = get_logger(__name__)


class Worker:
    """Consumes the given queues and runs the app's tasks."""

    def __init__(
        self,
        app: App,
        queues: Sequence[str] | None = None,
        *,
        concurrency: int | None = None,
        pool: str | None = None,
        prefetch_multiplier: int | None = None,
        shutdown_timeout: float | None = None,
        hostname: str | None = None,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.queues = list(queues or [conf.task_default_queue])
        self.concurrency = concurrency or conf.worker_concurrency
        self.pool = pool or conf.worker_pool
        if self.pool not in ("threads", "asyncio", "process"):
            raise ValueError(f"pool must be 'threads', 'asyncio' or 'process', not {self.pool!r}")
        self._child_spec = child_spec(app, self.pool)
        self.prefetch = self.concurrency * (prefetch_multiplier or conf.worker_prefetch_multiplier)
        self.shutdown_timeout = (
            conf.worker_shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        )
        self.hostname = node_name(hostname or f"{app.main or 'amqpworker'}@%h")
        self.metrics_port = conf.worker_metrics_port if metrics_port is None else metrics_port
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics port must be 0 to 65535, not {self.metrics_port}")
        self.metrics_host = metrics_host or conf.worker_metrics_host
        self.stats = WorkerStats()
        self.topology = app.topology
        self._specs = {name: self.topology.queue(name) for name in self.queues}
        self._stop = asyncio.Event()
        self._stopping = False
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._threads: TaskThreads | None = None
        self._processes: ProcessPool | None = None
        self._consumer: Broker | None = None
        self._publisher: Broker | None = None
        self._consumers: dict[str, Consumer] = {}
        self.revocations = Revocations()
        self._events: EventSender | None = None
        self._presence: Presence | None = None
        self._settle: Settler
        self._slots: Slots
        self._eta: Eta
        #: ``None`` where rate limits are disabled (``worker_disable_rate_limits``).
        self.rate_limits: RateLimits | None = None
        self._handle: Proceed
        self._monitoring: Monitoring | None = None

    # Lifecycle.

    def banner(self) -> str:
        tasks = "\n".join(f"  . {name}" for name in sorted(self.app.tasks)) or "  (none)"
        queues = ", ".join(
            f"{name} ({spec.type}, prefetch {spec.prefetch or self.prefetch})"
            for name, spec in self._specs.items()
        )
        broker = self._consumer.safe_url if self._consumer else self.app.conf.broker_url[0]
        return (
            f"amqpworker {self.hostname}\n"
            f"  app:         {self.app.main or '__main__'}\n"
            f"  broker:      {hide_password(broker)}\n"
            f"  queues:      {queues}\n"
            f"  pool:        {self.pool} (concurrency {self.concurrency})\n"
            f"  loop:        {resolved(self.app.conf.event_loop)}\n"
            + (
                f"  metrics:     {self.metrics_host}:{self.metrics_port}"
                " (/metrics, /livez, /readyz)\n"
                if self.metrics_port is not None
                else ""
            )
            + f"[tasks]\n{tasks}"
        )

    @property
    def ready(self) -> threading.Event:
        """Set once the worker consumes; lets a test or a supervisor wait for start-up."""
        return self._ready

    def request_stop(self) -> None:
        """Begin a graceful stop; safe to call from any thread or a signal handler."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: graceful stop; the second one exits at once."""
        assert self._loop is not None
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        if self._stop.is_set():
            log.warning("second signal: exiting now; unacknowledged tasks go back to the queue")
            os._exit(128 + signum)
        log.info(
            "stopping: waiting for running tasks",
            signal=signal.Signals(signum).name,
            grace_seconds=self.shutdown_timeout,
        )
        self._stop.set()

    def _build_pipeline(self, publisher: Broker) -> None:
        conf = self.app.conf
        self._settle = Settler(publisher, self.stats, self.topology)
        sender = Publisher(publisher, conf, self.app.serializers, lambda: self.app.topology)
        if conf.task_send_sent_event:
            sender.events = self._events
        steps = default_steps(
            app=self.app,
            publisher=sender,
            settle=self._settle,
            stats=self.stats,
            specs=self._specs,
            threads=self._threads,
            processes=self._processes,
            concurrency=self.concurrency,
            hostname=self.hostname,
            timezone=ZoneInfo(conf.timezone),
            accepted=self.app.serializers.content_types(conf.accept_content),
            revocations=self.revocations,
            metrics=self._monitoring.metrics if self._monitoring is not None else None,
            events=self._events if conf.worker_send_task_events else None,
        )
        self._slots = next(step for step in steps if isinstance(step, Slots))
        self._eta = next(step for step in steps if isinstance(step, Eta))
        self.revocations.on_terminate = next(
            step for step in steps if isinstance(step, Execute)
        ).terminate
        self.rate_limits = next((step for step in steps if isinstance(step, RateLimits)), None)
        self._handle = compose(steps)

    async def run(self, install_signals: bool = False) -> None:
        """Consume until :meth:`request_stop` (or a signal), then stop gracefully."""
        self._loop = asyncio.get_running_loop()
        if self.metrics_port is not None:
            # prometheus_client is imported only when metrics are asked for.
            from .monitoring import Monitoring

            self._monitoring = Monitoring(
                self, self.metrics_host, self.metrics_port, self.app.conf.worker_health_loop_timeout
            )
            self._monitoring.start(self._loop)  # a port that is taken fails here, at once
        if install_signals:
            self.install_signal_handlers()
        if self.pool == "threads":
            self._threads = TaskThreads(self._loop, self.concurrency)
        if self._child_spec is not None:
            self._processes = ProcessPool(self._loop, self.concurrency, self._child_spec)
        for warning in start_up_warnings(self.app.tasks.values(), self.app.conf, self.pool):
            log.warning(warning)
        self._consumer = Broker.for_settings(self.app.conf, f"{self.hostname} consumer")
        self._publisher = Broker.for_settings(self.app.conf, f"{self.hostname} publisher")
        try:
            if self._processes is not None:
                await self._processes.start()
            await self._publisher.connect()
            await self._consumer.connect()
            await self._start_events(self._publisher)
            self._build_pipeline(self._publisher)
            setup = await self._consumer.channel()
            await self._consumer.declare_for_worker(
                setup, self.topology, self.queues, self.app.conf.task_queue_max_priority
            )
            await setup.close()
            # Before any task: a revoke made while this worker was away must hold.
            await self.revocations.follow(self._consumer, self.app.conf.worker_revoke_expires)
            for name in self.queues:
                await self._consume(name)
            if self.app.conf.worker_enable_remote_control:
                await RemoteControl(self).start()
            if self._presence is not None:
                self._presence.online()
            log.info("consuming", queues=self.queues, hostname=self.hostname)
            self._ready.set()
            self._tell_health()
            await self._stop.wait()
            self._stopping = True
            self._tell_health()
            for consumer in self._consumers.values():
                with contextlib.suppress(Exception):
                    await consumer.cancel()
            await self._drain()
            if self._presence is not None:
                self._presence.offline()
        finally:
            if self._presence is not None:
                self._presence.stop()
            if self._events is not None:
                await self._events.close()
            await self._consumer.close()
            await self._publisher.close()
            await self.app.aclose()  # a client the tasks used on this loop
            if self._threads is not None:
                self._threads.shutdown()
            if self._processes is not None:
                await self._processes.close()
            if self._monitoring is not None:
                self._monitoring.close()
            log.info("stopped", **self.stats.counters())

    async def _start_events(self, publisher: Broker) -> None:
        """The event sender, when this worker sends events or announces what it sends."""
        conf = self.app.conf
        if not (conf.worker_send_task_events or conf.task_send_sent_event):
            return
        self._events = EventSender(publisher, self.hostname)
        await self._events.start()
        if conf.worker_send_task_events:
            self._presence = Presence(
                self._events,
                active=lambda: len(self._slots.active),
                processed=lambda: sum(self.stats.by_task.values()),
            )

    async def _drain(self) -> None:
        waiting = [self._slots.waiting]
        if self.rate_limits is not None:  # first: a held job would go on to wait for a slot
            waiting.insert(0, self.rate_limits.holding)
        for jobs in waiting:  # not admitted to run yet: back to their queues
            for delivery in list(jobs):
                del jobs[delivery]
                await self._settle.requeue(delivery)
        busy = set(self._slots.running)
        if self.rate_limits is not None:  # sending a message back: let it get there
            busy.update(self.rate_limits.sending)
        if busy:
            _, late = await asyncio.wait(busy, timeout=self.shutdown_timeout)
            if late:
                log.warning(
                    "grace period over; unfinished tasks go back to the queue",
                    unfinished=len(late),
                )
                for handler in late:
                    handler.cancel()

    async def _consume(self, name: str) -> None:
        spec = self._specs[name]
        self._consumers[name] = await self.consumer_broker.consume(
            name, spec.prefetch or self.prefetch, self._on_delivery
        )

    # What remote control reads and changes (worker/control.py).

    @property
    def consumer_broker(self) -> Broker:
        assert self._consumer is not None, "the worker is not running"
        return self._consumer

    @property
    def publisher_broker(self) -> Broker:
        assert self._publisher is not None, "the worker is not running"
        return self._publisher

    def _tell_health(self) -> None:
        if self._monitoring is not None:
            self._monitoring.health.refresh()

    # What the metrics and health checks read (worker/metrics.py, worker/health.py).

    def brokers(self) -> dict[str, Broker | None]:
        """The worker's two connections by role; None before it connects."""
        return {"consumer": self._consumer, "publisher": self._publisher}

    def consumers(self) -> dict[str, Consumer]:
        """The consumers of the queues consumed now, by queue (a copy)."""
        return dict(self._consumers)

    def pool_pids(self) -> list[int]:
        """The processes tasks run in: the children with ``--pool process``, else this one."""
        if self._processes is not None:
            return self._processes.pids()
        return [os.getpid()]

    def prefetch_of(self, queue: str) -> int:
        spec = self._specs.get(queue)
        return (spec.prefetch if spec is not None else None) or self.prefetch

    def look(self, now: float) -> Look:
        """What health checks report, seen from the loop at ``now``."""
        connected = {
            role: broker is not None and broker.is_connected
            for role, broker in self.brokers().items()
        }
        consuming = {name: consumer.consuming for name, consumer in self._consumers.items()}
        return Look(now, self._problem(connected, consuming), consuming, connected)

    def _problem(self, connected: dict[str, bool], consuming: dict[str, bool]) -> str | None:
        if self._stopping or self._stop.is_set():
            return "stopping: finishing the running tasks"
        if not self._ready.is_set():
            return "starting: not consuming yet"
        down = [role for role, up in connected.items() if not up]
        if down:
            return f"no connection to the broker ({' and '.join(down)}); reconnecting"
        idle = [name for name, on in consuming.items() if not on]
        if idle:
            return f"not consuming {', '.join(idle)}; consuming again once the broker allows"
        if not consuming:
            return "consuming no queue (all cancelled by remote control)"
        return None

    def active_jobs(self) -> list[tuple[Job, float]]:
        return list(self._slots.active.items())

    def reserved_jobs(self) -> list[Job]:
        """Received, not running yet: waiting for a slot or for a rate limit's token."""
        held = self.rate_limits.holding.values() if self.rate_limits is not None else ()
        return [*self._slots.waiting.values(), *held]

    def scheduled_jobs(self) -> list[Job]:
        return list(self._eta.holding)

    def resize_pool(self, delta: int) -> int:
        """Grow (``delta`` > 0) or shrink the pool; returns the new concurrency.

        The prefetch stays as it was, as in Celery. Raises ``ValueError`` for the process
        pool (its size is fixed) or below one slot.
        """
        if self._processes is not None:
            raise ValueError("the process pool has a fixed size (--concurrency)")
        if self.concurrency + delta < 1:
            raise ValueError(f"cannot shrink below 1 (concurrency is {self.concurrency})")
        if delta > 0:
            self._slots.grow(delta)
            if self._threads is not None:
                self._threads.grow(delta)
        elif delta < 0:
            self._slots.shrink(-delta)
            if self._threads is not None:
                self._threads.shrink(-delta)
        self.concurrency += delta
        return self.concurrency

    def consumed_queues(self) -> dict[str, QueueSpec]:
        return {name: self._specs[name] for name in self._consumers}

    async def add_consumer(self, queue: str) -> bool:
        """Consume one more queue (declared as the routing file says); False if it already is."""
        if queue in self._consumers or self._stopping:
            return False
        self._specs[queue] = self.topology.queue(queue)
        channel = await self.consumer_broker.channel()
        try:
            await self.consumer_broker.declare_for_worker(
                channel, self.topology, [queue], self.app.conf.task_queue_max_priority
            )
        finally:
            await channel.close()
        await self._consume(queue)
        log.info("consuming", queues=[queue], added=True)
        return True

    async def cancel_consumer(self, queue: str) -> bool:
        """Stop consuming a queue; what was delivered from it still runs."""
        consumer = self._consumers.pop(queue, None)
        if consumer is None:
            return False
        await consumer.cancel()
        log.info("stopped consuming", queue=queue)
        return True

    # Deliveries.

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` in a task of the worker's own (kept until it ends)."""
        assert self._loop is not None
        handler = self._loop.create_task(coroutine)
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)

    def _on_delivery(self, delivery: Delivery) -> None:
        self.stats.received += 1
        if self._stopping:
            self.spawn(self._settle.requeue(delivery))
        else:
            self.spawn(self._handle(Job(delivery)))


def node_name(template: str) -> str:
    """A worker name from a template, as in Celery.

    ``%h`` is the host name, ``%n`` its first label, ``%d`` the rest (the domain), and
    ``%%`` a percent sign.
    """
    host = socket.gethostname()
    name, _, domain = host.partition(".")
    return (
        template.replace("%%", "\0")
        .replace("%h", host)
        .replace("%n", name)
        .replace("%d", domain)
        .replace("\0", "%")
    )
