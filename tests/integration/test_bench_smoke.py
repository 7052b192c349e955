"""The benchmark harness runs end to end on a tiny N (amqpworker and raw aio-pika only).

The peers (Celery, Dramatiq, Taskiq) are left out: their venv is installed from PyPI on
first use, which needs the network and time. Nothing here looks at the numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_runs_and_prints_the_table(broker_url: str, tmp_path: Path) -> None:
    output = tmp_path / "result.json"
    env = {
        **os.environ,
        "BENCH_URL": broker_url,
        "BENCH_N": "50",
        "BENCH_RT": "20",
        "BENCH_WARMUP": "2",
        "BENCH_REPEATS": "1",
        "BENCH_SYSTEMS": "amqpworker,raw",
        "BENCH_STEP_TIMEOUT": "30",
        "BENCH_OUTPUT": str(output),  # not the committed bench/results/latest.json
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "| metric | unit | amqpworker | raw | amqpworker/raw |" in out
    for row in ("drain (delivery to ack) [threads]", "round trip p50 [asyncio]", "[threads x2]"):
        assert row in out
    assert "Targets of the issue" in out
    report = json.loads(output.read_text())
    assert set(report["systems"]) == {"amqpworker", "raw"}
    assert report["config"]["n"] == 50
