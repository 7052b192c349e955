"""Prometheus metrics of a running worker, read when scraped.

Counts and gauges cost nothing per task: a collector reads, at scrape time, what the
worker keeps anyway (:class:`~.stats.WorkerStats`, the connections' reconnect counts,
the consumers' unsettled deliveries, the health look). Only the two histograms are
observed per task, by the ``Measure`` step, which is in the pipeline only when metrics
are served. Every metric carries the worker's name as the ``worker`` label.

Scrapes run on the HTTP server's thread and only read plain numbers and copies of
dicts (atomic under the GIL), never the loop's objects in the middle of a change.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .health import Health

if TYPE_CHECKING:
    from .worker import Worker

#: Seconds; tasks run from milliseconds to an hour, and wait as long in a backlog.
BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)


class WorkerMetrics:
    """The registry a worker's ``/metrics`` serves, and the run histograms' observer."""

    def __init__(self, worker: Worker, health: Health) -> None:
        self.worker_name = worker.hostname
        self.registry = CollectorRegistry()
        self.registry.register(WorkerCollector(worker, health))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.run_time = Histogram(
            "amqpworker_task_runtime_seconds",
            "How long task runs took, from start to outcome (retries are runs too).",
            ("worker", "task"),
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "amqpworker_task_queue_wait_seconds",
            "How long messages waited, from publish (or eta, if later) to the run's start.",
            ("worker", "task"),
            buckets=BUCKETS,
            registry=self.registry,
        )
        # A labelled child per task name, found once: labels() costs a lock and a tuple.
        self._runs: dict[str, Histogram] = {}
        self._waits: dict[str, Histogram] = {}

    def observe_run(self, task_name: str, seconds: float) -> None:
        child = self._runs.get(task_name)
        if child is None:
            child = self._runs[task_name] = self.run_time.labels(self.worker_name, task_name)
        child.observe(seconds)

    def observe_wait(self, task_name: str, seconds: float) -> None:
        child = self._waits.get(task_name)
        if child is None:
            child = self._waits[task_name] = self.queue_wait.labels(self.worker_name, task_name)
        child.observe(seconds)


class WorkerCollector(Collector):
    """Reads the worker's own counters at scrape time."""

    def __init__(self, worker: Worker, health: Health) -> None:
        self.worker = worker
        self.health = health

    def collect(self) -> Iterator[Metric]:
        worker, name = self.worker, self.worker.hostname
        stats = worker.stats

        tasks = CounterMetricFamily(
            "amqpworker_tasks",
            "Tasks that ended, by task name and state: succeeded, failed, retried, revoked.",
            labels=("worker", "task", "state"),
        )
        for (task, state), count in sorted(dict(stats.outcomes).items()):
            tasks.add_metric((name, task, state), count)
        yield tasks

        yield _counter(
            "amqpworker_deliveries_received",
            "Messages the broker delivered to this worker (redeliveries included).",
            name,
            stats.received,
        )
        yield _counter(
            "amqpworker_requeued",
            "Deliveries put back in their queue (a stop, a publish that failed).",
            name,
            stats.requeued,
        )
        dead = CounterMetricFamily(
            "amqpworker_dead_lettered",
            "Messages moved to their queue's DLQ, by reason (see docs/operations.md).",
            labels=("worker", "reason"),
        )
        for reason, count in sorted(dict(stats.dead_letter_reasons).items()):
            dead.add_metric((name, reason), count)
        yield dead

        running = GaugeMetricFamily(
            "amqpworker_tasks_running", "Tasks running now.", labels=("worker",)
        )
        running.add_metric((name,), stats.running)
        yield running

        in_use = GaugeMetricFamily(
            "amqpworker_prefetch_in_use",
            "Deliveries held and not yet acked or rejected, by queue.",
            labels=("worker", "queue"),
        )
        limit = GaugeMetricFamily(
            "amqpworker_prefetch_limit",
            "The most deliveries the broker hands this worker unsettled, by queue.",
            labels=("worker", "queue"),
        )
        for queue, consumer in sorted(worker.consumers().items()):
            in_use.add_metric((name, queue), consumer.unsettled)
            limit.add_metric((name, queue), worker.prefetch_of(queue))
        yield in_use
        yield limit

        look = self.health.last
        consuming = GaugeMetricFamily(
            "amqpworker_consuming",
            "1 while the broker delivers to this worker's consumer of the queue.",
            labels=("worker", "queue"),
        )
        for queue, on in sorted(look.consuming.items()):
            consuming.add_metric((name, queue), 1 if on else 0)
        yield consuming

        connected = GaugeMetricFamily(
            "amqpworker_broker_connected",
            "1 while the connection (consumer or publisher) is up.",
            labels=("worker", "connection"),
        )
        reconnects = CounterMetricFamily(
            "amqpworker_reconnects",
            "Times a connection to the broker was lost and made again.",
            labels=("worker", "connection"),
        )
        for role, broker in worker.brokers().items():
            connected.add_metric((name, role), 1 if look.connected.get(role) else 0)
            reconnects.add_metric((name, role), broker.reconnects if broker else 0)
        yield connected
        yield reconnects

        lag = GaugeMetricFamily(
            "amqpworker_event_loop_lag_seconds",
            "How far behind the worker's event loop runs (a blocked loop grows this).",
            labels=("worker",),
        )
        lag.add_metric((name,), self.health.loop_lag())
        yield lag


def _counter(metric: str, documentation: str, worker: str, value: int) -> CounterMetricFamily:
    family = CounterMetricFamily(metric, documentation, labels=("worker",))
    family.add_metric((worker,), value)
    return family
