"""Remote control: inspect and control running `amqpworker serve` workers.

Every worker here has a name of its own and every question names its workers
(``destination``): other workers on a shared broker hear the broadcasts too.
"""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import aio_pika

from amqpworker import App
from amqpworker.wire.control import CONTROL_EXCHANGE

from .conftest import BrokerAdmin, run_cli, wait_for

P = "tests.integration.sample_app."


def _name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"


def test_two_workers_answer_ping_and_registered(app: App, serve) -> None:
    names = [_name("w1"), _name("w2")]
    for name in names:
        serve("-n", name).wait_consuming()

    inspect = app.control.inspect(destination=names, timeout=5)
    assert inspect.ping() == {name: {"ok": "pong"} for name in names}
    registered = inspect.registered()
    assert registered is not None
    assert set(registered) == set(names)
    assert P + "add" in registered[names[0]]


def test_active_lists_a_running_task_and_a_busy_worker_still_answers(
    app: App, serve, tmp_path: Path
) -> None:
    name = _name("busy")
    serve("-n", name, "--concurrency", "2").wait_consuming()
    results = [app.send_task(P + "record_and_wait", (str(tmp_path), f"job{i}")) for i in (1, 2)]
    wait_for(lambda: (tmp_path / "job1.run1").exists(), 10, "the first task to start")
    wait_for(lambda: (tmp_path / "job2.run1").exists(), 10, "the second task to start")
    try:
        inspect = app.control.inspect(destination=[name], timeout=5)
        # Every pool slot runs a blocking task; control is answered on the loop.
        assert inspect.ping() == {name: {"ok": "pong"}}
        active = inspect.active()
        assert active is not None
        running = {job["id"]: job for job in active[name]}
        assert set(running) == {result.id for result in results}
        job = running[results[0].id]
        assert job["name"] == P + "record_and_wait"
        assert job["args"] == [str(tmp_path), "job1"]
        assert job["worker_pid"] > 0
        assert job["time_start"] > 0
        assert job["delivery_info"]["routing_key"]
    finally:
        for i in (1, 2):
            (tmp_path / f"job{i}.release").write_text("go")
    assert [result.get(timeout=10) for result in results] == [1, 1]


def test_bad_commands_get_an_error_and_the_worker_keeps_serving(
    app: App, serve, broker_url: str
) -> None:
    name = _name("strict")
    worker = serve("-n", name).wait_consuming()
    control = app.control
    [unknown] = control.broadcast("no_such_command", destination=[name], reply=True, timeout=5)
    assert "unknown control command 'no_such_command'" in unknown[name]["error"]
    [bad] = control.broadcast("add_consumer", {"nope": 1}, destination=[name], reply=True)
    assert "bad arguments for add_consumer" in bad[name]["error"]
    [too_few] = control.broadcast(
        "pool_shrink", {"n": "zero"}, destination=[name], reply=True, timeout=5
    )
    assert "n must be a whole number" in too_few[name]["error"]

    async def publish_garbage(channel: aio_pika.abc.AbstractChannel) -> None:
        exchange = await channel.get_exchange(CONTROL_EXCHANGE)
        await exchange.publish(aio_pika.Message(b"{not json"), routing_key="")

    BrokerAdmin(broker_url).run(BrokerAdmin(broker_url)._with_channel(publish_garbage))
    assert control.inspect(destination=[name], timeout=5).ping() == {name: {"ok": "pong"}}
    assert app.send_task(P + "add", (2, 2)).get(timeout=10) == 4
    assert "ignored a malformed control message" in worker.output


def test_add_and_cancel_consumer(app: App, serve, admin: BrokerAdmin) -> None:
    name = _name("grow")
    serve("-n", name).wait_consuming()
    extra = admin.new_queue("extra")
    control = app.control

    [added] = control.add_consumer(extra, destination=[name], reply=True, timeout=5) or [{}]
    assert added[name] == {"ok": f"now consuming from {extra!r}"}
    assert app.send_task(P + "add", (1, 2), queue=extra).get(timeout=10) == 3
    queues = control.inspect(destination=[name], timeout=5).active_queues()
    assert queues is not None
    assert extra in {queue["name"] for queue in queues[name]}

    [cancelled] = control.cancel_consumer(extra, destination=[name], reply=True, timeout=5) or [{}]
    assert cancelled[name] == {"ok": f"no longer consuming from {extra!r}"}
    app.send_task(P + "add", (1, 2), queue=extra)
    wait_for(lambda: admin.message_count(extra) == 1, 10, "the task to wait, unconsumed")


def test_cli_inspect_and_control_shutdown(serve, broker_url: str) -> None:
    name = _name("cli")
    worker = serve("-n", name).wait_consuming()

    pinged = run_cli("inspect", "ping", "--broker", broker_url, "-d", name, "--timeout", "5")
    assert pinged.returncode == 0, pinged.stderr
    assert f"-> {name}: OK" in pinged.stdout
    assert "pong" in pinged.stdout
    as_json = run_cli("inspect", "stats", "--broker", broker_url, "-d", name, "--json")
    assert json.loads(as_json.stdout)[name]["pool"]["implementation"] == "threads"
    grown = run_cli("control", "pool_grow", "2", "--broker", broker_url, "-d", name)
    assert grown.returncode == 0, grown.stdout
    assert "pool will grow to" in grown.stdout
    below_one = run_cli("control", "pool_shrink", "1000", "--broker", broker_url, "-d", name)
    assert below_one.returncode == 1
    assert "cannot shrink below 1" in below_one.stdout
    nobody = run_cli("inspect", "ping", "--broker", broker_url, "-d", _name("nobody"))
    assert nobody.returncode == 1
    assert "no worker replied" in nobody.stderr

    stopped = run_cli("control", "shutdown", "--broker", broker_url, "-d", name, "--timeout", "5")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert worker.wait(30) == 0  # a graceful stop, as by SIGTERM


def test_pool_grow_and_shrink_change_how_many_tasks_run_at_once(
    app: App, serve, tmp_path: Path
) -> None:
    name = _name("resize")
    serve("-n", name, "--concurrency", "1").wait_consuming()
    control, inspect = app.control, app.control.inspect([name], timeout=5)

    [grown] = control.pool_grow(1, destination=[name], reply=True, timeout=5) or [{}]
    assert grown[name] == {"ok": "pool will grow to 2"}
    held = [app.send_task(P + "record_and_wait", (str(tmp_path), f"g{i}")) for i in range(2)]
    wait_for(lambda: len(list(tmp_path.glob("g*.run*"))) == 2, 20, "two tasks at once")
    for i in range(2):
        (tmp_path / f"g{i}.release").write_text("go")
    assert [result.get(timeout=10) for result in held] == [1, 1]

    [shrunk] = control.pool_shrink(1, destination=[name], reply=True, timeout=5) or [{}]
    assert shrunk[name] == {"ok": "pool will shrink to 1"}
    assert (inspect.stats() or {})[name]["pool"]["max-concurrency"] == 1
    held = [app.send_task(P + "record_and_wait", (str(tmp_path), f"s{i}")) for i in range(2)]
    wait_for(lambda: len(list(tmp_path.glob("s*.run*"))) == 1, 20, "one task")
    active = inspect.active() or {}
    assert len(active[name]) == 1, "the second waits for the one slot left"
    (tmp_path / "s0.release").write_text("go")
    (tmp_path / "s1.release").write_text("go")
    assert [result.get(timeout=10) for result in held] == [1, 1]
