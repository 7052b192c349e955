"""What every driver shares: its command line and how it hands results back.

``<peers' python> -m bench.drivers.<name>_driver OP --out FILE [options]`` with OP one of

- ``fill``: a start marker, N sequential calls of the library's own API (timed), an end
  marker; writes ``{"elapsed": seconds}``.
- ``fill-bulk``: the same with the library's bulk API for the N (Celery's
  ``group(...).apply_async()``, Dramatiq's ``group(...).run()``).
- ``fill-async``: the same with ``ASYNC_IN_FLIGHT`` calls in flight (Taskiq's ``kiq()``
  under ``asyncio.gather``), like amqpworker's ``adelay()`` fill.
- ``rt``: ``warmup + rt`` sequential ``add.delay(1, 2).get(timeout=...)``; writes
  ``{"latencies": [seconds, ...]}`` of the timed ones.

The queue, broker URL and prefetch come from ``BENCH_*`` environment variables, which the
apps read on import. Standard library only, so it imports in any venv.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

ASYNC_IN_FLIGHT = 500


def parse(ops: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("op", choices=ops)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--start-file", default="")
    parser.add_argument("--end-file", default="")
    parser.add_argument("--rt", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--rt-timeout", type=float, default=10.0)
    return parser.parse_args()


def write(path: str, result: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        json.dump(result, out)
    os.replace(tmp, path)


def main(ops: dict[str, Callable[[argparse.Namespace], dict[str, Any]]]) -> None:
    args = parse(list(ops))
    write(args.out, ops[args.op](args))
