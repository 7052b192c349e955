"""Taskiq's caller side: sequential ``await kiq()``, and ``kiq()`` under ``gather``."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.apps.taskiq_app import broker, mark, noop

from ._cli import ASYNC_IN_FLIGHT, main


async def _sequential(n: int) -> None:
    for _ in range(n):
        await noop.kiq()


async def _in_flight(n: int) -> None:
    for offset in range(0, n, ASYNC_IN_FLIGHT):
        batch = min(ASYNC_IN_FLIGHT, n - offset)
        await asyncio.gather(*(noop.kiq() for _ in range(batch)))


def _fill(args: argparse.Namespace, body: Callable[[int], Awaitable[None]]) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        await broker.startup()  # connects and declares the exchange and queues, untimed
        try:
            await mark.kiq(args.start_file)
            began = time.perf_counter()
            await body(args.n)
            elapsed = time.perf_counter() - began
            await mark.kiq(args.end_file)
            return {"elapsed": elapsed}
        finally:
            await broker.shutdown()

    return asyncio.run(run())


def fill(args: argparse.Namespace) -> dict[str, Any]:
    return _fill(args, _sequential)


def fill_async(args: argparse.Namespace) -> dict[str, Any]:
    return _fill(args, _in_flight)


if __name__ == "__main__":
    main({"fill": fill, "fill-async": fill_async})
