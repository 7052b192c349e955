"""Run the benchmark: ``python -m bench.run`` from the repository root.

Settings come from ``BENCH_*`` environment variables (see bench/README.md). Systems are
measured in turn within each repeat (amqpworker, raw, amqpworker, raw, ...) so that a
burst of load from elsewhere hits both; the table shows the median of the repeats, and
``bench/results/latest.json`` holds every repeat.
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
from importlib import metadata
from pathlib import Path
from typing import Any

from .common import (
    RESULTS,
    ROOT,
    Config,
    Watchdog,
    delete_queues,
    kill_children,
    load_average,
    median,
)
from .systems import METRICS, System, base_metric, load_system

BASELINE = "raw"


def _lookup(values: dict[str, float], key: str) -> float | None:
    """The exact metric, else its bare form (the baseline has no pool variants)."""
    if key in values:
        return values[key]
    base, _ = base_metric(key)
    return values.get(base)


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


def ratios(medians: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{system: {metric: system/baseline}}`` for every metric both have."""
    baseline = medians.get(BASELINE)
    if baseline is None:
        return {}
    found: dict[str, dict[str, float]] = {}
    for name, values in medians.items():
        if name == BASELINE:
            continue
        for key in values:
            reference = _lookup(baseline, key)
            if reference:
                found.setdefault(name, {})[key] = values[key] / reference
    return found


def table(medians: dict[str, dict[str, float]], names: list[str]) -> str:
    found = ratios(medians)
    others = [name for name in names if name in found]
    header = ["metric", "unit", *names, *(f"{name}/{BASELINE}" for name in others)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in _rows(medians):
        base, variant = base_metric(key)
        meta = METRICS.get(base)
        unit = meta.unit if meta else ""
        label = (meta.label if meta else base) + (f" [{variant}]" if variant else "")
        cells = [label, unit]
        for name in names:
            values = medians.get(name, {})
            # The baseline's bare value is repeated on each variant row of other systems.
            cells.append(_fmt(_lookup(values, key) if name == BASELINE else values.get(key), unit))
        for name in others:
            ratio = found[name].get(key)
            cells.append("-" if ratio is None else f"{ratio:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("amqpworker", "aio-pika", "aiormq", "pamqp"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
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
    load_before = load_average()
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
    began = time.monotonic()
    try:
        for repeat in range(1, config.repeats + 1):
            for system in systems:
                started = time.monotonic()
                metrics = system.measure(config, watchdog)
                repeats[system.name].append(metrics)
                print(
                    f"  [{repeat}/{config.repeats}] {system.name} "
                    f"({time.monotonic() - started:.0f}s): {_short(metrics)}",
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
        f"{time.monotonic() - began:.0f}s"
    )
    print()
    print(rendered)
    found = ratios(medians)
    if "amqpworker" in found:
        wanted = [
            key
            for key in found["amqpworker"]
            if base_metric(key)[0] in ("drain_rate", "rt_p50_ms", "rt_p99_ms")
        ]
        print()
        print("amqpworker/raw (drain: share of raw throughput; round trip: times raw latency):")
        for key in wanted:
            print(f"  {key}: {found['amqpworker'][key]:.2f}x")

    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.run",
        "config": config.as_dict(),
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_before": load_before,
            "load_after": load_after,
        },
        "versions": _versions(),
        "source": _source(),
        "systems": {name: {"median": medians[name], "repeats": repeats[name]} for name in names},
        "ratios_vs_raw": found,
        "table_markdown": rendered,
    }
    path = RESULTS / "latest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    print(f"\nwrote {path.relative_to(RESULTS.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
