"""Run the benchmark: ``python -m bench.run`` from the repository root.

Settings come from ``BENCH_*`` environment variables (see bench/README.md). Systems are
measured in turn within each repeat (amqpworker, celery, dramatiq, taskiq, raw, amqpworker,
...) so that a burst of load from elsewhere hits all of them; the table shows the median
of the repeats with amqpworker's ratio to each other system, then the issue's target
ratios, met or not. ``bench/results/latest.json`` holds every repeat.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .common import (
    RESULTS,
    ROOT,
    Config,
    Watchdog,
    broker_cpu_seconds,
    delete_queues,
    kill_children,
    load_average,
    median,
)
from .peers import peer_versions
from .systems import METRICS, System, base_metric, load_system

BASELINE = "raw"
SUBJECT = "amqpworker"
#: Variants on whose rows the baseline's bare value (one consumer) is repeated.
ONE_PROCESS = (None, "threads", "asyncio")


def _lookup(values: dict[str, float], key: str) -> float | None:
    """The exact metric, else its bare form on a one-process row (raw has no variants)."""
    if key in values:
        return values[key]
    base, variant = base_metric(key)
    if variant not in ONE_PROCESS:
        return None
    return values.get(base)


@dataclass(frozen=True)
class Target:
    """One ratio the issue asks for: ``amqpworker[mine] / peer[theirs]`` op ``factor``."""

    what: str
    mine: str
    peer: str
    theirs: str
    op: str  # ">=" (a rate) or "<=" (a latency)
    factor: float
    also: str | None = None  # amqpworker's other pool, shown for information

    def ratio(self, medians: dict[str, dict[str, float]], mine: str | None = None) -> float | None:
        ours = medians.get(SUBJECT, {}).get(mine or self.mine)
        theirs = _lookup(medians.get(self.peer, {}), self.theirs)
        if ours is None or not theirs:
            return None
        return ours / theirs

    def met(self, ratio: float) -> bool:
        return ratio >= self.factor if self.op == ">=" else ratio <= self.factor


TARGETS = (
    Target("drain, 1 process: amqpworker >= 1.5x Dramatiq", "drain_rate[threads]",
           "dramatiq", "drain_rate[threads]", ">=", 1.5, also="drain_rate[asyncio]"),
    Target("drain, 1 process: amqpworker >= 2x Celery", "drain_rate[threads]",
           "celery", "drain_rate[threads]", ">=", 2.0, also="drain_rate[asyncio]"),
    Target("drain, 1 process: amqpworker ~0.75x raw aio-pika consume", "drain_rate[threads]",
           "raw", "drain_rate", ">=", 0.75, also="drain_rate[asyncio]"),
    Target("drain, 2 processes: amqpworker >= Dramatiq", "drain_rate[threads x2]",
           "dramatiq", "drain_rate[threads x2]", ">=", 1.0, also="drain_rate[asyncio x2]"),
    Target("enqueue: delay() >= Celery delay()", "enqueue_rate",
           "celery", "enqueue_rate", ">=", 1.0),
    Target("enqueue: bulk of N (send_many) >= Dramatiq send() loop", "enqueue_bulk_rate",
           "dramatiq", "enqueue_rate", ">=", 1.0),
    Target("round trip p50 <= 1.25x raw aio-pika RPC", "rt_p50_ms[threads]",
           "raw", "rt_p50_ms", "<=", 1.25, also="rt_p50_ms[asyncio]"),
    Target("round trip p50 <= 0.6x Celery rpc://", "rt_p50_ms[threads]",
           "celery", "rt_p50_ms[threads]", "<=", 0.6, also="rt_p50_ms[asyncio]"),
)  # fmt: skip


def evaluate_targets(medians: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    found = []
    for target in TARGETS:
        ratio = target.ratio(medians)
        also = target.ratio(medians, target.also) if target.also else None
        found.append(
            {
                "target": target.what,
                "amqpworker": target.mine,
                "peer": f"{target.peer}:{target.theirs}",
                "want": f"{target.op} {target.factor:g}x",
                "ratio": ratio,
                "met": None if ratio is None else target.met(ratio),
                "other_pool": target.also,
                "other_pool_ratio": also,
            }
        )
    return found


def _met(item: dict[str, Any], ratio: float) -> bool:
    factor = float(item["want"].split()[1].rstrip("x"))
    return ratio >= factor if item["want"].startswith(">=") else ratio <= factor


def render_targets(found: list[dict[str, Any]]) -> str:
    lines = [
        "| target | amqpworker metric / peer metric | want | ratio | verdict |",
        "|---|---|---|---|---|",
    ]
    for item in found:
        ratio = item["ratio"]
        other = item["other_pool_ratio"]
        if ratio is None:
            verdict = "not measured"
        elif item["met"]:
            verdict = "met"
        elif other is not None and _met(item, other):
            verdict = f"met with the {base_metric(item['other_pool'])[1]} pool only"
        else:
            verdict = "NOT met"
        shown = "-" if ratio is None else f"{ratio:.2f}x"
        if item["other_pool_ratio"] is not None:
            pool = base_metric(item["other_pool"])[1]
            shown += f" ({pool} pool: {item['other_pool_ratio']:.2f}x)"
        lines.append(
            f"| {item['target']} | {item['amqpworker']} / {item['peer']} | {item['want']} "
            f"| {shown} | {verdict} |"
        )
    return "\n".join(lines)


def _rows(medians: dict[str, dict[str, float]]) -> list[str]:
    keys = list(dict.fromkeys(key for values in medians.values() for key in values))
    with_variants = {base_metric(key)[0] for key in keys if base_metric(key)[1] is not None}
    keys = [key for key in keys if base_metric(key)[1] is not None or key not in with_variants]
    order = list(METRICS)
    variants = list(dict.fromkeys(base_metric(key)[1] or "" for key in keys))

    def sort_key(key: str) -> tuple[int, int]:
        base, variant = base_metric(key)
        return (order.index(base) if base in order else len(order), variants.index(variant or ""))

    return sorted(keys, key=sort_key)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "msg/s":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.2f}"
    if unit in ("us", "% of a core"):
        return f"{value:.0f}"
    return f"{value:.1f}"


def _value(medians: dict[str, dict[str, float]], name: str, key: str) -> float | None:
    values = medians.get(name, {})
    # The baseline's bare value is repeated on the one-process rows of the others.
    return _lookup(values, key) if name == BASELINE else values.get(key)


def ratios(medians: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{peer: {metric: amqpworker/peer}}`` for every metric both have."""
    ours = medians.get(SUBJECT)
    if ours is None:
        return {}
    found: dict[str, dict[str, float]] = {}
    for name in medians:
        if name == SUBJECT:
            continue
        for key, value in ours.items():
            theirs = _value(medians, name, key)
            if theirs:
                found.setdefault(name, {})[key] = value / theirs
    return found


def table(medians: dict[str, dict[str, float]], names: list[str]) -> str:
    found = ratios(medians)
    peers = [name for name in names if name != SUBJECT and SUBJECT in medians]
    header = ["metric", "unit", *names, *(f"{SUBJECT}/{name}" for name in peers)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in _rows(medians):
        base, variant = base_metric(key)
        meta = METRICS.get(base)
        unit = meta.unit if meta else ""
        label = (meta.label if meta else base) + (f" [{variant}]" if variant else "")
        cells = [label, unit]
        cells.extend(_fmt(_value(medians, name, key), unit) for name in names)
        for name in peers:
            ratio = found.get(name, {}).get(key)
            cells.append("-" if ratio is None else f"{ratio:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _versions(names: list[str]) -> dict[str, Any]:
    versions: dict[str, Any] = {"python": platform.python_version()}
    for package in ("amqpworker", "aio-pika", "aiormq", "pamqp", "uvloop"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    if any(name not in (SUBJECT, BASELINE) for name in names):
        versions["peers_venv"] = peer_versions()
    return versions


def _source() -> dict[str, Any]:
    """Which amqpworker was measured: its path, and the commit and state of its tree."""
    import amqpworker

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    return {
        "amqpworker_path": str(Path(amqpworker.__file__).parent),
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_changes_in_amqpworker": bool(git("status", "--porcelain", "amqpworker")),
    }


def _short(metrics: dict[str, float]) -> str:
    return ", ".join(
        f"{key}={value:,.0f}" if value >= 100 else f"{key}={value:.2f}"
        for key, value in metrics.items()
    )


def main() -> int:
    config = Config.from_env()
    os.environ["BENCH_URL"] = config.url  # the amqpworker app reads it on import
    watchdog = Watchdog(config)
    broker_local = broker_cpu_seconds() is not None  # finds the broker once, untimed
    load_before = load_average()
    run_began = time.monotonic()
    print(
        f"bench run {config.run_id}: N={config.n} RT={config.rt} repeats={config.repeats} "
        f"systems={','.join(config.systems)} concurrency={config.concurrency} "
        f"prefetch={config.prefetch} ({config.concurrency}x{config.prefetch_multiplier}) "
        f"pools={','.join(config.pools)} cpus={os.cpu_count()} "
        f"load={load_before[0]:.2f},{load_before[1]:.2f},{load_before[2]:.2f}",
        flush=True,
    )
    systems: list[System] = [load_system(name) for name in config.systems]
    repeats: dict[str, list[dict[str, float]]] = {system.name: [] for system in systems}
    loads: list[dict[str, Any]] = []
    began = time.monotonic()
    try:
        for repeat in range(1, config.repeats + 1):
            for system in systems:
                started = time.monotonic()
                load = load_average()[0]
                metrics = system.measure(config, watchdog)
                repeats[system.name].append(metrics)
                loads.append({"repeat": repeat, "system": system.name, "load1_before": load})
                print(
                    f"  [{repeat}/{config.repeats}] {system.name} "
                    f"({time.monotonic() - started:.0f}s, load {load:.2f}): {_short(metrics)}",
                    flush=True,
                )
    finally:
        for system in systems:
            try:
                system.close()
            except Exception as exc:
                print(f"warning: closing {system.name}: {exc!r}", file=sys.stderr)
        kill_children()
        delete_queues(config.url)
    load_after = load_average()

    medians = {
        name: {
            key: median([run[key] for run in runs if key in run])
            for key in dict.fromkeys(key for run in runs for key in run)
        }
        for name, runs in repeats.items()
    }
    names = [system.name for system in systems]
    rendered = table(medians, names)
    print()
    print(
        f"Medians of {config.repeats} repeat(s), N={config.n}, R={config.rt}, "
        f"concurrency {config.concurrency}, prefetch {config.prefetch}; "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
        f"measuring {time.monotonic() - began:.0f}s, in all {time.monotonic() - run_began:.0f}s"
    )
    print()
    print(rendered)
    print()
    print(
        f"Ratios are {SUBJECT}/peer: above 1 means more for amqpworker (better for rates, "
        "worse for latency, CPU and memory). [threads]/[asyncio]: one worker process; "
        "[threads x2]: two; raw's single consumer is repeated on the one-process rows."
    )
    notes = [
        f"{system.name}: {note}" for system in systems for note in getattr(system, "notes", ())
    ]
    for note in notes:
        print(f"- {note}")
    found = ratios(medians)
    targets = evaluate_targets(medians)
    rendered_targets = render_targets(targets)
    print()
    print("Targets of the issue (threads pool, the default; the asyncio pool in brackets):")
    print()
    print(rendered_targets)

    report: dict[str, Any] = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.run",
        "config": config.as_dict(),
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "broker_on_this_machine": broker_local,
            "load_before": load_before,
            "load_after": load_after,
            "load1_before_each_system": loads,
            "seconds_measuring": round(time.monotonic() - began),
            "seconds_in_all": round(time.monotonic() - run_began),
        },
        "versions": _versions(names),
        "source": _source(),
        "systems": {
            system.name: {
                "description": system.description,
                "median": medians[system.name],
                "repeats": repeats[system.name],
            }
            for system in systems
        },
        "ratios_amqpworker_over": found,
        "targets": targets,
        "notes": notes,
        "table_markdown": rendered,
        "targets_markdown": rendered_targets,
    }
    path = Path(os.environ.get("BENCH_OUTPUT") or RESULTS / "latest.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
