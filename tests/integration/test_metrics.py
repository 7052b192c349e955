"""`amqpworker serve --metrics-port`: Prometheus metrics and health checks of a worker.

Each test scrapes a real `amqpworker serve` process over HTTP, as Prometheus and a
Kubernetes probe would. A broker that goes away is a proxy in front of the shared
broker that the test cuts (the shared broker is never stopped).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from amqpworker import App
from amqpworker.exceptions import MaxRetriesExceededError, NotRegistered, TaskRevokedError

from .conftest import ServeProcess, wait_for
from .proxy import CuttableProxy

P = "tests.integration.sample_app."
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _health(port: int, path: str = "/health") -> tuple[int, dict[str, Any]]:
    status, body = _get(port, path)
    return status, json.loads(body)


def scrape(port: int) -> Samples:
    status, text = _get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample with exactly these labels besides `worker`, or None."""
    for (sample, found), number in samples.items():
        rest = {key: val for key, val in found if key != "worker"}
        if sample == name and rest == labels:
            return number
    return None


def _start(serve: Callable[..., ServeProcess], *extra: str, **options: Any) -> int:
    port = _free_port()
    worker = serve("--metrics-port", str(port), *extra, **options).wait_consuming()
    assert f":{port}" in worker.output  # the log line says where it serves
    return port


def _eventually(port: int, check: Callable[[Samples], bool], what: str) -> Samples:
    found: list[Samples] = []

    def scraped() -> bool:
        found[:] = [scrape(port)]
        return check(found[0])

    wait_for(scraped, 10, what)
    return found[0]


def test_after_100_tasks_the_counters_say_100(app: App, serve) -> None:
    port = _start(serve, "--concurrency", "4")
    results = [app.send_task(P + "add", (i, 1)) for i in range(100)]
    assert [result.get(timeout=30) for result in results] == [i + 1 for i in range(100)]

    add = P + "add"
    samples = _eventually(
        port,
        lambda s: value(s, "amqpworker_prefetch_in_use", queue=app.conf.task_default_queue) == 0,
        "the last acks",
    )
    assert value(samples, "amqpworker_tasks_total", task=add, state="succeeded") == 100
    assert value(samples, "amqpworker_tasks_total", task=add, state="failed") is None
    assert value(samples, "amqpworker_tasks_running") == 0
    assert value(samples, "amqpworker_deliveries_received_total") == 100
    assert value(samples, "amqpworker_task_runtime_seconds_count", task=add) == 100
    assert value(samples, "amqpworker_task_queue_wait_seconds_count", task=add) == 100
    # Every run and wait is in some bucket: the +Inf bucket holds them all.
    assert value(samples, "amqpworker_task_runtime_seconds_bucket", task=add, le="+Inf") == 100
    assert value(samples, "amqpworker_prefetch_limit", queue=app.conf.task_default_queue) == 16
    assert value(samples, "amqpworker_broker_connected", connection="consumer") == 1
    assert value(samples, "amqpworker_consuming", queue=app.conf.task_default_queue) == 1
    assert value(samples, "process_resident_memory_bytes") is not None


def test_a_running_task_is_in_the_gauges_and_a_failure_is_counted(
    app: App, serve, tmp_path: Path
) -> None:
    port = _start(serve, "--concurrency", "2")
    queue = app.conf.task_default_queue
    blocked = app.send_task(P + "record_and_wait", (str(tmp_path), "job"))
    wait_for(lambda: (tmp_path / "job.run1").exists(), 10, "the task to start")
    try:
        samples = scrape(port)
        assert value(samples, "amqpworker_tasks_running") == 1
        assert value(samples, "amqpworker_prefetch_in_use", queue=queue) == 1
    finally:
        (tmp_path / "job.release").write_text("go")
    assert blocked.get(timeout=10) == 1

    with pytest.raises(ZeroDivisionError):
        app.send_task(P + "div", (1, 0)).get(timeout=10)
    samples = _eventually(
        port, lambda s: value(s, "amqpworker_tasks_running") == 0, "the running gauge back to 0"
    )
    assert value(samples, "amqpworker_tasks_total", task=P + "div", state="failed") == 1
    assert value(samples, "amqpworker_tasks_total", task=P + "div", state="succeeded") is None
    assert value(samples, "amqpworker_task_runtime_seconds_count", task=P + "div") == 1


def test_dead_letters_are_counted_by_reason(app: App, serve, admin) -> None:
    port = _start(serve)
    with pytest.raises(NotRegistered):
        app.send_task("no.such.task").get(timeout=10)
    retried = app.send_task(P + "always_retry")
    with pytest.raises(MaxRetriesExceededError):
        retried.get(timeout=20)
    queue = app.conf.task_default_queue
    wait_for(lambda: admin.message_count(f"{queue}.dlq") == 2, 10, "both in the DLQ")

    samples = scrape(port)
    assert value(samples, "amqpworker_dead_lettered_total", reason="unknown-task") == 1
    assert value(samples, "amqpworker_dead_lettered_total", reason="failed-after-retries") == 1
    always = P + "always_retry"
    assert value(samples, "amqpworker_tasks_total", task=always, state="retried") == 2
    assert value(samples, "amqpworker_tasks_total", task=always, state="failed") == 1
    # A message that never ran is not a task run: only its dead-letter is counted.
    assert all(("task", "no.such.task") not in labels for (_, labels) in samples), (
        "an unknown task name must not become a label"
    )


def test_expired_tasks_are_counted_as_revoked(app: App, serve) -> None:
    port = _start(serve)
    with pytest.raises(TaskRevokedError):
        app.send_task(P + "add", (1, 2), expires=-1).get(timeout=10)
    samples = scrape(port)
    assert value(samples, "amqpworker_tasks_total", task=P + "add", state="revoked") == 1


def test_health_fails_while_the_broker_is_gone_and_recovers(
    app: App, serve, proxy: CuttableProxy
) -> None:
    port = _start(serve, env={"AMQPWORKER_BROKER_URL": proxy.url})
    status, body = _health(port)
    assert status == 200, body
    assert body["status"] == "ok"
    assert body["consuming"] == {app.conf.task_default_queue: True}
    assert _health(port, "/readyz")[0] == 200
    assert _health(port, "/livez")[0] == 200

    proxy.refusing = True
    proxy.cut()
    down: list[dict[str, Any]] = []

    def unhealthy() -> bool:
        status, body = _health(port)
        down[:] = [body]
        return status == 503

    wait_for(unhealthy, 10, "/health to fail while the broker is gone")
    assert down[0]["status"] == "unavailable"
    assert "no connection to the broker" in down[0]["reason"]
    # The loop still turns: a restart would not bring the broker back.
    assert _health(port, "/livez")[0] == 200
    samples = scrape(port)
    assert value(samples, "amqpworker_broker_connected", connection="consumer") == 0

    proxy.refusing = False
    wait_for(lambda: _health(port)[0] == 200, 30, "/health to recover with the broker")
    assert app.send_task(P + "add", (2, 3)).get(timeout=10) == 5
    samples = scrape(port)
    assert value(samples, "amqpworker_reconnects_total", connection="consumer") >= 1
    assert value(samples, "amqpworker_reconnects_total", connection="publisher") >= 1


def test_liveness_fails_while_a_task_blocks_the_event_loop(app: App, serve, tmp_path: Path) -> None:
    # With --pool asyncio a plain function runs on the loop itself and holds it.
    port = _start(serve, "--pool", "asyncio", env={"AMQPWORKER_WORKER_HEALTH_LOOP_TIMEOUT": "1"})
    result = app.send_task(P + "sleep_then_return", (str(tmp_path), "block", 4))
    wait_for(lambda: (tmp_path / "block.run1").exists(), 10, "the blocking task to start")
    stalled: list[dict[str, Any]] = []

    def stuck() -> bool:
        status, body = _health(port, "/livez")
        stalled[:] = [body]
        return status == 503

    wait_for(stuck, 10, "/livez to fail while the loop is blocked")
    assert "event loop has not turned" in stalled[0]["reason"]
    assert _health(port, "/readyz")[0] == 503
    assert result.get(timeout=10) == "block"
    wait_for(lambda: _health(port, "/livez")[0] == 200, 10, "/livez back once the loop turns")


def test_a_port_in_use_fails_the_start_clearly(serve) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = serve("--metrics-port", str(port))
        assert worker.wait(30) != 0
    assert f"cannot serve metrics on 0.0.0.0:{port}" in worker.output
    assert "already in use" in worker.output
    assert "Traceback" not in worker.output


def test_a_bad_port_or_host_is_refused_at_start(serve) -> None:
    worker = serve("--metrics-port", "70000")
    assert worker.wait(30) == 2
    assert "--metrics-port" in worker.output
    assert "70000 is not in the range" in worker.output

    worker = serve("--metrics-port", "0", "--metrics-host", "no-such-host.invalid")
    assert worker.wait(30) != 0
    assert "unknown host 'no-such-host.invalid'" in worker.output
    assert "Traceback" not in worker.output

    worker = serve(env={"AMQPWORKER_WORKER_METRICS_PORT": "nine"})
    assert worker.wait(30) != 0
    assert "worker_metrics_port" in worker.output
    assert "Traceback" not in worker.output
