"""Delays: ``python -m bench.delays`` from the repository root.

Runs against a PRIVATE RabbitMQ node (tests/integration/rabbit_node.py), never a shared
broker: it leaves 100,000 hour-long messages behind, and they vanish with the node.

(a) hold: with one ``amqpworker serve`` worker running, publish ``DELAYS_HOLD`` tasks
    (default 100,000) with ``countdown=3600`` in batches (``app.send_many``). Before and
    after: the worker's VmRSS, the work queue's ready/unacked counts, the broker's RSS;
    after: every delay level queue's count. A delayed message waits in the broker: the
    worker's queue stays empty and its memory flat.
(b) precision: against the same, idle worker, ``DELAYS_PRECISION`` tasks (default 200)
    with random countdowns in [1, 5] s, fractions included, sent at once ("burst"), then
    the same countdowns sent one every 25 ms ("paced"). Each task returns the time it
    ran and the eta its message carried: lateness = run - eta. Early runs (before the
    eta, beyond 1 ms of float rounding) must be 0.

Prints a table and writes ``bench/results/delays.json``. Every wait is bounded, and a
watchdog kills the worker and the node if the whole run overruns ``DELAYS_TIMEOUT``.
"""

from __future__ import annotations

import datetime as dt
import faulthandler
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from amqpworker import App
from tests.integration.rabbit_node import RabbitNode, RabbitNodeError

from .common import RESULTS, ROOT, log_tail, percentile, rss_kib, start_process, stop_process

HOLD_COUNTDOWN = 3600
BATCH = 5_000
EARLY_TOLERANCE = 0.001  # eta is serialized with microseconds; float rounding only


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name) or str(default)
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None


HOLD = _env_int("DELAYS_HOLD", 100_000)
PRECISION = _env_int("DELAYS_PRECISION", 200)
TIMEOUT = _env_int("DELAYS_TIMEOUT", 900)
SEED = _env_int("DELAYS_SEED", 20_240_601)


class Run:
    """What to clean up, whatever happens: the worker process and the node."""

    def __init__(self) -> None:
        self.node: RabbitNode | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.app: App | None = None

    def cleanup(self) -> None:
        if self.app is not None:
            try:
                self.app.close()
            except Exception as exc:
                print(f"warning: closing the app: {exc!r}", file=sys.stderr)
        if self.worker is not None:
            stop_process(self.worker, grace=20)
        if self.node is not None:
            self.node.destroy()


def watchdog(run: Run, seconds: float) -> threading.Timer:
    def expired() -> None:
        print(f"\nDELAYS TIMEOUT: not done in {seconds:.0f}s; stacks follow", file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        if run.worker is not None and run.worker.poll() is None:
            run.worker.kill()
        if run.node is not None:
            run.node.destroy()
        os._exit(3)

    timer = threading.Timer(seconds, expired)
    timer.daemon = True
    timer.start()
    return timer


def wait_consuming(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while "consuming" not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not consuming within {timeout}s:\n{log_tail(log)}")
        time.sleep(0.05)


def queue_counts(node: RabbitNode) -> dict[str, dict[str, int]]:
    text = node.ctl(
        "list_queues", "name", "messages_ready", "messages_unacknowledged", "memory", "--quiet"
    )
    counts = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[1].isdigit():
            counts[parts[0]] = {
                "ready": int(parts[1]),
                "unacked": int(parts[2]),
                "memory": int(parts[3]),
            }
    return counts


def snapshot(node: RabbitNode, worker_pid: int, queue: str) -> dict[str, Any]:
    counts = queue_counts(node)
    beam = node.beam_pid()
    worker_rss, worker_peak = rss_kib(worker_pid)
    broker_rss = rss_kib(beam)[0] / 1024 if beam is not None else float("nan")
    levels = {
        name: count
        for name, count in sorted(counts.items())
        if name.startswith("amqpworker.delay.") and count["ready"] + count["unacked"]
    }
    return {
        "worker_rss_mib": worker_rss / 1024,
        "worker_peak_rss_mib": worker_peak / 1024,
        "broker_rss_mib": broker_rss,
        "work_queue": counts.get(queue, {"ready": -1, "unacked": -1}),
        "delay_levels": {name: c["ready"] + c["unacked"] for name, c in levels.items()},
        "delay_levels_memory_mib": {name: c["memory"] / 2**20 for name, c in levels.items()},
    }


def hold(app: App, node: RabbitNode, worker_pid: int, queue: str) -> dict[str, Any]:
    time.sleep(2)  # let the worker settle after start-up
    before = snapshot(node, worker_pid, queue)
    began = time.perf_counter()
    for start in range(0, HOLD, BATCH):
        size = min(BATCH, HOLD - start)
        app.send_many([("delay_app.hold", (), {}, {"countdown": HOLD_COUNTDOWN})] * size)
    took = time.perf_counter() - began
    time.sleep(5)  # anything that were to reach the worker would have by now
    after = snapshot(node, worker_pid, queue)
    return {
        "tasks": HOLD,
        "countdown_s": HOLD_COUNTDOWN,
        "batch": BATCH,
        "publish_s": took,
        "publish_rate": HOLD / took,
        "before": before,
        "after": after,
    }


def precision(app: App, pace: float) -> dict[str, Any]:
    """Countdowns of 1..5 s: all sent at once (``pace`` 0) or one every ``pace`` seconds."""
    rng = random.Random(SEED)
    countdowns = [rng.uniform(1.0, 5.0) for _ in range(PRECISION)]
    calls = [("delay_app.clock", (), {}, {"countdown": c}) for c in countdowns]
    intended, results = [], []
    if pace == 0:
        sent = time.time()
        intended = [sent + c for c in countdowns]
        results = app.send_many(calls)
    else:
        for countdown, call in zip(countdowns, calls, strict=True):
            intended.append(time.time() + countdown)
            results += app.send_many([call])
            time.sleep(pace)
    deadline = time.monotonic() + 5.0 + 60
    lateness, lateness_vs_intended = [], []
    for meant, result in zip(intended, results, strict=True):
        ran, eta = result.get(timeout=max(deadline - time.monotonic(), 0.1))
        eta_ts = dt.datetime.fromisoformat(eta).timestamp()
        lateness.append(ran - eta_ts)
        lateness_vs_intended.append(ran - meant)
    early = [value for value in lateness if value < -EARLY_TOLERANCE]
    return {
        "tasks": PRECISION,
        "countdowns": "uniform 1..5 s",
        "sent": "at once (send_many)" if pace == 0 else f"one every {pace * 1000:.0f} ms",
        "seed": SEED,
        "lateness_p50_s": percentile(lateness, 50),
        "lateness_p99_s": percentile(lateness, 99),
        "lateness_max_s": max(lateness),
        "lateness_min_s": min(lateness),
        "early_runs": len(early),
        "late_over_100ms": sum(1 for value in lateness if value > 0.1),
        "vs_intended_p50_s": percentile(lateness_vs_intended, 50),
        "vs_intended_max_s": max(lateness_vs_intended),
        "countdowns_s": [round(value, 6) for value in countdowns],
        "lateness_s": [round(value, 6) for value in lateness],
    }


def table(result: dict[str, Any]) -> str:
    h = result["hold"]
    b, a = h["before"], h["after"]
    levels = ", ".join(
        f"{name.rsplit('.', 1)[1]}: {count:,} ({a['delay_levels_memory_mib'][name]:.1f} MiB)"
        for name, count in a["delay_levels"].items()
    )
    wq_b, wq_a = b["work_queue"], a["work_queue"]
    rows = [
        ("private node start", f"{result['node']['start_s']:.2f} s"),
        (f"publish {h['tasks']:,} x countdown={h['countdown_s']}", f"{h['publish_s']:.1f} s "
         f"({h['publish_rate']:,.0f} msg/s, send_many batches of {h['batch']:,})"),
        ("worker RSS before -> after", f"{b['worker_rss_mib']:.1f} -> "
         f"{a['worker_rss_mib']:.1f} MiB (peak {a['worker_peak_rss_mib']:.1f})"),
        ("work queue ready / unacked before", f"{wq_b['ready']} / {wq_b['unacked']}"),
        ("work queue ready / unacked after", f"{wq_a['ready']} / {wq_a['unacked']}"),
        ("delay levels after (level: messages)", levels or "none"),
        ("broker RSS before -> after", f"{b['broker_rss_mib']:.0f} -> "
         f"{a['broker_rss_mib']:.0f} MiB"),
    ]  # fmt: skip
    for key in ("burst", "paced"):
        p = result["precision"][key]
        rows += [
            (f"precision, {p['tasks']} x 1..5 s, {p['sent']}", ""),
            ("  lateness p50 / p99 / max", f"{1000 * p['lateness_p50_s']:.1f} / "
             f"{1000 * p['lateness_p99_s']:.1f} / {1000 * p['lateness_max_s']:.1f} ms"),
            ("  lateness min", f"{1000 * p['lateness_min_s']:.2f} ms"),
            ("  runs > 100 ms late", str(p["late_over_100ms"])),
            ("  early runs", str(p["early_runs"])),
        ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'what':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name:<{width}} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> int:
    run = Run()
    timer = watchdog(run, TIMEOUT)
    tmp = Path(f"/tmp/bench-delays-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    queue = f"bench-delays-{uuid.uuid4().hex[:8]}"
    try:
        try:
            run.node = RabbitNode(prefix="aw-bench")
            started = run.node.start()
        except RabbitNodeError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"private node {run.node.name} up in {started:.2f}s at {run.node.url}")
        env = {
            **os.environ,
            "AMQPWORKER_BROKER_URL": run.node.url,
            "AMQPWORKER_TASK_DEFAULT_QUEUE": queue,
            "PYTHONUNBUFFERED": "1",
        }
        log = tmp / "worker.log"
        command = [sys.executable, "-m", "amqpworker", "serve", "-A", "bench.apps.delay_app"]
        run.worker = start_process(
            [*command, "--queues", queue, "--concurrency", "4"], log, env=env
        )
        wait_consuming(run.worker, log, 30)
        run.app = App("bench-delays", broker=run.node.url, task_default_queue=queue)
        print(f"(a) publishing {HOLD:,} tasks with countdown={HOLD_COUNTDOWN} ...")
        held = hold(run.app, run.node, run.worker.pid, queue)
        print(f"(b) {PRECISION} tasks with countdowns of 1..5 s, at once, then paced ...")
        precise = {"burst": precision(run.app, 0.0), "paced": precision(run.app, 0.025)}
        if run.worker.poll() is not None:
            raise RuntimeError(f"the worker died:\n{log_tail(log)}")
        result = {
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "load_after": os.getloadavg(),
            "node": {"name": run.node.name, "start_s": started, "rabbitmq": "local install"},
            "hold": held,
            "precision": precise,
        }
        print(table(result))
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / "delays.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
        return 0
    finally:
        run.cleanup()
        timer.cancel()
        for path in tmp.iterdir():
            path.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    sys.exit(main())
