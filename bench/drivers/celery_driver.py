"""Celery's caller side: ``delay()``, ``group(...).apply_async()``, ``delay().get()``."""

from __future__ import annotations

import argparse
import time
from typing import Any

from celery import group

from bench.apps.celery_app import add, app, mark, noop

from ._cli import main


def fill(args: argparse.Namespace) -> dict[str, Any]:
    mark.delay(args.start_file)  # also opens the connection, untimed
    began = time.perf_counter()
    for _ in range(args.n):
        noop.delay()
    elapsed = time.perf_counter() - began
    mark.delay(args.end_file)
    return {"elapsed": elapsed}


def fill_bulk(args: argparse.Namespace) -> dict[str, Any]:
    mark.delay(args.start_file)
    began = time.perf_counter()
    group(noop.s() for _ in range(args.n)).apply_async()
    elapsed = time.perf_counter() - began
    mark.delay(args.end_file)
    return {"elapsed": elapsed}


def round_trips(args: argparse.Namespace) -> dict[str, Any]:
    latencies = []
    for index in range(args.warmup + args.rt):
        began = time.perf_counter()
        value = add.delay(1, 2).get(timeout=args.rt_timeout)
        elapsed = time.perf_counter() - began
        if value != 3:
            raise SystemExit(f"celery round trip returned {value!r}, not 3")
        if index >= args.warmup:
            latencies.append(elapsed)
    return {"latencies": latencies}


if __name__ == "__main__":
    try:
        main({"fill": fill, "fill-bulk": fill_bulk, "rt": round_trips})
    finally:
        app.close()
