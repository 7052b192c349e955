"""The systems the harness can measure, and the metrics they report.

A system is anything with a ``name`` and a ``measure(config, watchdog)`` that returns one
repeat's metrics as ``{metric: value}``. Metric names come from :data:`METRICS`, with an
optional variant in brackets (``drain_rate[threads]``), so the same row of the table
compares like with like across systems. Systems are imported lazily by dotted path. The
peers (Celery, Dramatiq, Taskiq) live in their own venv and are only driven from here:
their systems (bench/systems/peer_system.py) start ``<peers' venv>/bin/python -m
bench.drivers.<name>_driver`` and the library's own worker CLI as child processes.

Variants: ``[threads]`` and ``[asyncio]`` are one worker process with that kind of
concurrency; ``[threads x2]`` is two worker processes with threads.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from ..common import Config, Watchdog


class System(Protocol):
    name: str
    description: str

    def measure(self, config: Config, watchdog: Watchdog) -> dict[str, float]:
        """Run every measurement once; return ``{metric[variant]: value}``."""
        ...

    def close(self) -> None:
        """Release connections and threads after the last repeat."""
        ...


@dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    higher_is_better: bool


METRICS: dict[str, Metric] = {
    "enqueue_rate": Metric("enqueue, sequential, confirmed", "msg/s", True),
    "enqueue_noconfirm_rate": Metric("enqueue, sequential, no confirms", "msg/s", True),
    "enqueue_bulk_rate": Metric("enqueue, bulk API (send_many / group)", "msg/s", True),
    "enqueue_group_rate": Metric("enqueue, group(noop.s() x N)", "msg/s", True),
    "enqueue_async_rate": Metric("enqueue, async, 500 in flight", "msg/s", True),
    "drain_rate": Metric("drain (delivery to ack)", "msg/s", True),
    "rt_p50_ms": Metric("round trip p50", "ms", False),
    "rt_p99_ms": Metric("round trip p99", "ms", False),
    "cpu_us_per_msg": Metric("consumer CPU per message in drain", "us", False),
    "cpu_pct": Metric("consumer CPU during drain", "% of a core", False),
    "broker_cpu_us_per_msg": Metric("broker (beam.smp) CPU per message in drain", "us", False),
    "rss_mb": Metric("worker RSS after drain", "MiB", False),
}

#: name -> "module:Class"; a system is imported only when it is selected.
REGISTRY: dict[str, str] = {
    "amqpworker": "bench.systems.amqpworker_system:AmqpWorkerSystem",
    "raw": "bench.systems.raw_system:RawSystem",
    "celery": "bench.systems.celery_system:CelerySystem",
    "dramatiq": "bench.systems.dramatiq_system:DramatiqSystem",
    "taskiq": "bench.systems.taskiq_system:TaskiqSystem",
}


def load_system(name: str) -> System:
    try:
        path = REGISTRY[name]
    except KeyError:
        raise SystemExit(f"unknown system {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
    module_name, _, attribute = path.partition(":")
    system: System = getattr(importlib.import_module(module_name), attribute)()
    return system


def base_metric(name: str) -> tuple[str, str | None]:
    """``"drain_rate[threads]"`` -> ``("drain_rate", "threads")``."""
    if name.endswith("]") and "[" in name:
        base, _, variant = name[:-1].partition("[")
        return base, variant
    return name, None
