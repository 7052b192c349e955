"""Dramatiq's caller side: ``send()`` and ``group(...).run()``."""

from __future__ import annotations

import argparse
import time
from typing import Any

import dramatiq

from bench.apps.dramatiq_app import broker, mark, noop

from ._cli import main


def fill(args: argparse.Namespace) -> dict[str, Any]:
    mark.send(args.start_file)  # also opens the connection and declares the queues
    began = time.perf_counter()
    for _ in range(args.n):
        noop.send()
    elapsed = time.perf_counter() - began
    mark.send(args.end_file)
    return {"elapsed": elapsed}


def fill_bulk(args: argparse.Namespace) -> dict[str, Any]:
    mark.send(args.start_file)
    began = time.perf_counter()
    dramatiq.group(noop.message() for _ in range(args.n)).run()
    elapsed = time.perf_counter() - began
    mark.send(args.end_file)
    return {"elapsed": elapsed}


if __name__ == "__main__":
    try:
        main({"fill": fill, "fill-bulk": fill_bulk})
    finally:
        broker.close()
