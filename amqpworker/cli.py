"""The ``amqpworker`` command: serve, call, inspect, control, events, topology, dlq.

Every bad argument (an app path that does not import, a queue list with empty names, a
JSON argument that does not parse) is reported by click as a usage error that names the
option, with exit code 2, before anything connects to a broker.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from .app import App
from .app.control import INSPECT_COMMANDS
from .beat import Beat, describe, load_entries
from .broker import admin
from .exceptions import AmqpWorkerError, ImproperlyConfigured
from .log import configure_logging, hide_password
from .loop import LoopKind, loop_factory, run
from .monitor import watch
from .monitor.watch import MAX_LENGTH
from .settings import Settings, load_settings
from .topology import Topology
from .worker import Worker

APP_HELP = "The app: 'package.module:app', or 'package.module' holding an App named 'app'."


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (or ``module``) and return the App it names."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImproperlyConfigured(f"cannot import {module_name!r}: {exc}") from exc
    if attribute:
        found = getattr(module, attribute, None)
        if not isinstance(found, App):
            raise ImproperlyConfigured(f"{spec!r} is not an amqpworker App")
        return found
    found = getattr(module, "app", None)
    if isinstance(found, App):
        return found
    apps = [value for value in vars(module).values() if isinstance(value, App)]
    if len(apps) == 1:
        return apps[0]
    raise ImproperlyConfigured(
        f"module {module_name!r} has {'no' if not apps else 'several'} App instances; "
        f"name one as '{module_name}:attribute'"
    )


def _app_callback(ctx: click.Context, param: click.Parameter, value: str) -> App:
    try:
        return load_app(value)
    except AmqpWorkerError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _queues_callback(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> list[str] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise click.BadParameter(f"{value!r} has an empty queue name", ctx, param)
    return names


def _json_callback(kind: type) -> Any:
    def parse(ctx: click.Context, param: click.Parameter, value: str) -> Any:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"{value!r} is not JSON: {exc}", ctx, param) from None
        if not isinstance(parsed, kind):
            raise click.BadParameter(f"{value!r} must be a JSON {kind.__name__}", ctx, param)
        return parsed

    return parse


app_option = click.option(
    "-A",
    "--app",
    "app",
    required=True,
    help=APP_HELP,
    envvar="AMQPWORKER_APP",
    callback=_app_callback,
)


loglevel_option = click.option(
    "-l",
    "--loglevel",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
log_format_option = click.option(
    "--log-format", type=click.Choice(["console", "json"]), help="Log line format."
)
loop_option = click.option(
    "--loop",
    "event_loop",
    type=click.Choice(["auto", "uvloop", "asyncio"]),
    help="Event loop (default: the event_loop setting; auto = uvloop where installed).",
)


@click.group()
@click.version_option(package_name="amqpworker")
def main() -> None:
    """amqpworker: a RabbitMQ-native task queue."""


@main.command()
@app_option
@click.option(
    "-Q", "--queues", callback=_queues_callback, help="Comma-separated queues to consume."
)
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Tasks run at once.")
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["threads", "asyncio", "process"]),
    help="How plain tasks run: threads, inline on the loop, or child processes.",
)
@click.option(
    "--max-tasks-per-child",
    type=click.IntRange(min=1),
    help="--pool process: replace a child after this many tasks.",
)
@click.option(
    "--max-memory-per-child",
    type=click.IntRange(min=1),
    help="--pool process: replace a child once a task leaves it above this many KiB.",
)
@click.option(
    "--prefetch-multiplier", type=click.IntRange(min=1), help="Prefetch = concurrency x this."
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    help="Seconds running tasks get to finish after SIGTERM.",
)
@loglevel_option
@log_format_option
@click.option(
    "-n", "--hostname", help="This worker's name (default app@%h; %h host, %n name, %d domain)."
)
@click.option("--routing", type=click.Path(dir_okay=False), help="Routing YAML file.")
@loop_option
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    help="Serve Prometheus /metrics and health checks (/livez, /readyz) on this port.",
)
@click.option(
    "--metrics-host",
    help="Address the metrics port listens on (default: worker_metrics_host, 0.0.0.0).",
)
@click.option(
    "-E",
    "--events",
    is_flag=True,
    default=False,
    help="Send task and worker events (the worker_send_task_events setting).",
)
@click.option(
    "-B",
    "--beat",
    "with_beat",
    is_flag=True,
    default=False,
    help="Also run beat in this process (periodic tasks; for development).",
)
def serve(
    app: App,
    queues: list[str] | None,
    concurrency: int | None,
    pool: str | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    prefetch_multiplier: int | None,
    shutdown_timeout: float | None,
    loglevel: str,
    log_format: str | None,
    hostname: str | None,
    routing: str | None,
    event_loop: LoopKind | None,
    metrics_port: int | None,
    metrics_host: str | None,
    events: bool,
    with_beat: bool,
) -> None:
    """Consume queues and run tasks until SIGTERM."""
    configure_logging(
        loglevel, "json" if (log_format or app.conf.log_format) == "json" else "console"
    )
    try:
        if routing:
            app.conf.routing_file = Path(routing)
        if event_loop:
            app.conf.event_loop = event_loop
        if events:
            app.conf.worker_send_task_events = True
        if max_tasks_per_child:
            app.conf.worker_max_tasks_per_child = max_tasks_per_child
        if max_memory_per_child:
            app.conf.worker_max_memory_per_child = max_memory_per_child
        app.conf.log_level = loglevel.upper()  # the process pool's children log alike
        if log_format:
            app.conf.log_format = log_format  # type: ignore[assignment]
        loop_factory(app.conf.event_loop)  # uvloop asked for but missing: a usage error
        app.import_includes()
        app.finalize()
        beat = Beat(app, load_entries(app)) if with_beat else None
        worker = Worker(
            app,
            queues,
            concurrency=concurrency,
            pool=pool,
            prefetch_multiplier=prefetch_multiplier,
            shutdown_timeout=shutdown_timeout,
            hostname=hostname,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
    except (AmqpWorkerError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(worker.banner(), err=True)
    try:
        if beat is None:
            run(worker.run(install_signals=True), app.conf.event_loop)
        else:
            run(_serve_with_beat(worker, beat), app.conf.event_loop)
    except AmqpWorkerError as exc:
        raise click.ClickException(str(exc)) from exc


async def _serve_with_beat(worker: Worker, beat: Beat) -> None:
    """The worker, with beat beside it on the same loop; beat stops when the worker does."""
    beating = asyncio.get_running_loop().create_task(beat.run())
    try:
        await worker.run(install_signals=True)
    finally:
        beat.request_stop()
        await beating


@main.command("beat")
@app_option
@loglevel_option
@log_format_option
@click.option(
    "--list",
    "list_entries",
    is_flag=True,
    help="Print every entry with its schedule, last run and next due time, and exit.",
)
@loop_option
def beat_command(
    app: App,
    loglevel: str,
    log_format: str | None,
    list_entries: bool,
    event_loop: LoopKind | None,
) -> None:
    """Send periodic tasks when due (beat_schedule); any number may run, one is active."""
    configure_logging(
        loglevel, "json" if (log_format or app.conf.log_format) == "json" else "console"
    )
    try:
        if event_loop:
            app.conf.event_loop = event_loop
        loop_factory(app.conf.event_loop)
        app.import_includes()
        app.finalize()
        entries = load_entries(app)
    except (AmqpWorkerError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    if list_entries:
        rows = _run(describe(app, entries))
        if not rows:
            click.echo("no entries (beat_schedule is empty)")
        for row in rows:
            click.echo(f"{row['name']}: {row['task']} {row['schedule']}")
            click.echo(f"    last run: {row['last']}")
            click.echo(f"    next due: {row['next']}")
        return
    if not entries:
        raise click.UsageError("beat_schedule is empty: nothing to send (see docs/beat.md)")
    beat = Beat(app, entries)
    click.echo(
        f"amqpworker beat {beat.id}: {len(entries)} entries, queues "
        f"{app.conf.beat_queue_prefix}.leader/.state on {hide_password(app.conf.broker_url[0])}",
        err=True,
    )
    try:
        run(beat.run(install_signals=True), app.conf.event_loop)
    except AmqpWorkerError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@app_option
@click.argument("name")
@click.option("--args", "args", callback=_json_callback(list), default="[]", help="JSON list.")
@click.option(
    "--kwargs", "kwargs", callback=_json_callback(dict), default="{}", help="JSON object."
)
@click.option("-Q", "--queue", help="Queue to send to (default: the task's route).")
@click.option("--wait/--no-wait", default=False, help="Wait for the result and print it.")
@click.option("--timeout", type=click.FloatRange(min=0), default=30.0, show_default=True)
def call(
    app: App,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    queue: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Send a task by name; print its id, or its result with --wait."""
    try:
        result = app.send_task(name, args, kwargs, queue=queue)
        click.echo(result.id)
        if wait:
            value = result.get(timeout=timeout, propagate=False)
            click.echo(json.dumps({"state": result.state, "result": _printable(value)}))
            if result.failed():
                sys.exit(1)
    except AmqpWorkerError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()


def _printable(value: Any) -> Any:
    return f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else value


# Operator commands: they need a broker, not necessarily an app.

T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return run(coroutine)
    except AmqpWorkerError as exc:
        raise click.ClickException(str(exc)) from exc


def _optional_app(ctx: click.Context, param: click.Parameter, value: str | None) -> App | None:
    return None if value is None else _app_callback(ctx, param, value)


def _settings(app: App | None, broker: str | None) -> Settings:
    conf = app.conf if app is not None else load_settings({})
    if broker:
        conf = conf.model_copy(
            update={"broker_url": load_settings({"broker_url": broker}).broker_url}
        )
    return conf


def _topology(app: App | None, routing: str | None) -> Topology:
    try:
        if routing:
            return Topology.load(routing)
        if app is not None and app.conf.routing_file:
            return app.topology
    except ImproperlyConfigured as exc:
        raise click.UsageError(str(exc)) from exc
    raise click.UsageError("no routing file: pass --routing FILE (or -A an app that sets one)")


optional_app_option = click.option(
    "-A", "--app", "app", help=APP_HELP, envvar="AMQPWORKER_APP", callback=_optional_app
)
broker_option = click.option(
    "--broker", help="Broker URL(s), ';'-separated (default: the app's, or AMQPWORKER_BROKER_URL)."
)
routing_option = click.option(
    "--routing", type=click.Path(dir_okay=False), help="Routing YAML file."
)


@main.group()
def topology() -> None:
    """Declare, show and check the routing file's exchanges, queues and bindings."""


@topology.command("apply")
@routing_option
@optional_app_option
@broker_option
def topology_apply(routing: str | None, app: App | None, broker: str | None) -> None:
    """Declare everything in the routing file (idempotent)."""
    described = _topology(app, routing)
    conf = _settings(app, broker)
    _run(admin.apply_topology(conf.broker_url, described, conf.task_queue_max_priority))
    click.echo(
        f"applied: {len(described.exchanges)} exchanges, {len(described.queues)} queues "
        f"(each with its .dlq), {len(described.bindings)} bindings"
    )


@topology.command("check")
@routing_option
@optional_app_option
@broker_option
def topology_check(routing: str | None, app: App | None, broker: str | None) -> None:
    """Compare the routing file with the broker; exit 1 on any difference."""
    described = _topology(app, routing)
    conf = _settings(app, broker)
    differences = _run(
        admin.check_topology(conf.broker_url, described, conf.task_queue_max_priority)
    )
    if differences:
        click.echo(f"{len(differences)} difference(s) between the file and the broker:")
        for difference in differences:
            click.echo(f"  - {difference}")
        sys.exit(1)
    click.echo(
        f"ok: the broker has the {len(described.exchanges)} exchanges and "
        f"{len(described.queues)} queues of the file, with the same arguments "
        "(bindings cannot be read back over AMQP and are not compared)"
    )


@topology.command("show")
@routing_option
@optional_app_option
def topology_show(routing: str | None, app: App | None) -> None:
    """Print what the routing file declares, and where each of the app's tasks goes."""
    described = _topology(app, routing)
    default_priority = (app.conf if app else load_settings({})).task_queue_max_priority
    click.echo("exchanges:")
    for exchange in described.exchanges:
        click.echo(
            f"  {exchange.name} ({exchange.type}, {'durable' if exchange.durable else 'transient'})"
        )
    click.echo("queues:")
    for queue in described.queues:
        click.echo(f"  {queue.name} ({queue.type}) {queue.arguments_for(default_priority)}")
    click.echo("bindings:")
    for binding in described.bindings:
        how = (
            f"headers {binding.arguments()}" if binding.headers else f"key {binding.routing_key!r}"
        )
        click.echo(f"  {binding.exchange} -> {binding.queue} by {how}")
    click.echo("routes:")
    for route in described.routes:
        click.echo(f"  {route.task} -> {_describe_route(route.as_route())}")
    if app is not None:
        if routing:
            app.conf.routing_file = Path(routing)
        click.echo("tasks:")
        for name in sorted(app.tasks):
            _, destination, _ = app.prepare(name, (), {}, app.tasks[name], {})
            where = (
                f"exchange {destination.exchange or '(default)'!r} key {destination.routing_key!r}"
            )
            click.echo(
                f"  {name} -> {where}"
                + (f" priority {destination.priority}" if destination.priority is not None else "")
            )


def _describe_route(route: Any) -> str:
    parts = [
        f"{field} {getattr(route, field)!r}"
        for field in ("queue", "exchange", "routing_key", "priority")
        if getattr(route, field) is not None
    ]
    return ", ".join(parts)


@main.group()
def dlq() -> None:
    """Look into, replay and purge dead-letter queues (QUEUE or QUEUE.dlq)."""


@dlq.command("list")
@click.argument("queue")
@optional_app_option
@broker_option
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
def dlq_list(queue: str, app: App | None, broker: str | None, limit: int) -> None:
    """Show dead letters (id, task, reason, age) without removing them."""
    conf = _settings(app, broker)
    letters = _run(admin.dlq_list(conf.broker_url, queue, limit))
    click.echo(f"{len(letters)} message(s) in {admin.dlq_of(queue)}")
    for letter in letters:
        age = letter.age()
        shown_age = f"{int(age.total_seconds())}s" if age is not None else "?"
        click.echo(
            f"  {letter.message_id or '-'}  {letter.task or '-'}  {letter.reason}  "
            f"age {shown_age}  {letter.detail}"
        )


@dlq.command("replay")
@click.argument("queue")
@optional_app_option
@broker_option
@click.option("--id", "ids", multiple=True, help="Replay only this message id (repeatable).")
@click.option("--all", "replay_all", is_flag=True, help="Replay every message.")
def dlq_replay(
    queue: str, app: App | None, broker: str | None, ids: tuple[str, ...], replay_all: bool
) -> None:
    """Send dead letters back where they came from, with a fresh delivery history."""
    if bool(ids) == replay_all:
        raise click.UsageError("give either --id ID (one or more) or --all")
    conf = _settings(app, broker)
    report = _run(admin.dlq_replay(conf.broker_url, queue, ids))
    click.echo(f"replayed {report.replayed} message(s) from {admin.dlq_of(queue)}")
    for failure in report.failed:
        click.echo(f"  not replayed: {failure}", err=True)
    if report.failed or (ids and report.replayed < len(ids)):
        sys.exit(1)


@dlq.command("purge")
@click.argument("queue")
@optional_app_option
@broker_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(queue: str, app: App | None, broker: str | None, yes: bool) -> None:
    """Delete every message in the dead-letter queue."""
    if not yes:
        click.confirm(f"Delete every message in {admin.dlq_of(queue)}?", abort=True)
    conf = _settings(app, broker)
    purged = _run(admin.dlq_purge(conf.broker_url, queue))
    click.echo(f"purged {purged} message(s) from {admin.dlq_of(queue)}")


# Remote control: questions and commands to running workers.

CONTROL_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "shutdown": (),
    "add_consumer": ("queue",),
    "cancel_consumer": ("queue",),
    "revoke": ("task_id",),
    "rate_limit": ("task_name", "rate_limit"),
    "time_limit": ("task_name", "soft", "hard"),
    "pool_grow": ("n",),
    "pool_shrink": ("n",),
}
destination_option = click.option(
    "-d",
    "--destination",
    callback=_queues_callback,
    help="Comma-separated worker names (default: every worker).",
)
timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds to wait for replies.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the replies as JSON.")


def _control_app(app: App | None, broker: str | None) -> App:
    if app is not None and not broker:
        return app
    return App("amqpworker-cli", broker=_settings(app, broker).broker_url)


async def _closing(app: App, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``, then close the app's connection on this loop."""
    try:
        return await work
    finally:
        await app.aclose()


def _show_replies(replies: dict[str, Any] | None, timeout: float, as_json: bool) -> None:
    """Print each worker's reply; exit 1 when none came or one is an error."""
    if not replies:
        raise click.ClickException(f"no worker replied within {timeout}s")
    if not _print_replies(replies, as_json):
        sys.exit(1)


def _print_replies(replies: dict[str, Any], as_json: bool) -> bool:
    """Print each worker's reply; True when every one of them was not an error."""
    if as_json:
        click.echo(json.dumps(replies, indent=2, sort_keys=True, default=str))
    failed = False
    for name in sorted(replies):
        value = replies[name]
        error = isinstance(value, dict) and "error" in value
        failed = failed or error
        if as_json:
            continue
        click.echo(f"-> {name}: {'ERROR' if error else 'OK'}")
        if isinstance(value, dict) and set(value) <= {"ok", "error"}:
            shown: Any = value.get("error") or value.get("ok")
        else:
            shown = value
        text = shown if isinstance(shown, str) else json.dumps(shown, indent=2, default=str)
        for line in (text or "(empty)").splitlines() or ["(empty)"]:
            click.echo(f"    {line}")
    return not failed


@main.command("inspect")
@click.argument("command", type=click.Choice(INSPECT_COMMANDS))
@optional_app_option
@broker_option
@destination_option
@timeout_option
@json_option
def inspect_workers(
    command: str,
    app: App | None,
    broker: str | None,
    destination: list[str] | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Ask running workers: ping, active, registered, reserved, scheduled, stats, ..."""
    control_app = _control_app(app, broker)
    replies = _run(
        _closing(control_app, control_app.control.inspect(destination, timeout).aask(command))
    )
    _show_replies(replies, timeout, as_json)


@main.command("control")
@click.argument("command", type=click.Choice(sorted(CONTROL_ARGUMENTS)))
@click.argument("args", nargs=-1)
@optional_app_option
@broker_option
@destination_option
@timeout_option
@json_option
@click.option("--terminate", is_flag=True, help="revoke: also stop the task if it runs now.")
@click.option("--signal", "signal_name", help="revoke --terminate: the signal (process pool).")
def control_workers(
    command: str,
    args: tuple[str, ...],
    app: App | None,
    broker: str | None,
    destination: list[str] | None,
    timeout: float,
    as_json: bool,
    terminate: bool,
    signal_name: str | None,
) -> None:
    """Tell running workers: revoke ID..., rate_limit TASK RATE, shutdown, add_consumer Q, ..."""
    names = CONTROL_ARGUMENTS[command]
    if command != "revoke" and (terminate or signal_name):
        raise click.UsageError("--terminate and --signal go with revoke only")
    control_app = _control_app(app, broker)
    work: Coroutine[Any, Any, list[dict[str, Any]] | None]
    if command == "revoke":
        if not args:
            raise click.UsageError("revoke takes one or more TASK_ID")
        try:
            work = control_app.control.arevoke(
                list(args), destination, terminate, signal_name, True, timeout
            )
            replies = _run(_closing(control_app, work))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    else:
        if len(args) != len(names):
            wanted = " ".join(name.upper() for name in names) or "no arguments"
            raise click.UsageError(f"{command} takes {wanted}, got {len(args)} argument(s)")
        arguments = dict(zip(names, args, strict=True))
        work = control_app.control.abroadcast(command, arguments, destination, True, timeout)
        replies = _run(_closing(control_app, work))
    _show_replies(
        {name: value for reply in replies or [] for name, value in reply.items()}, timeout, as_json
    )


# Events: watching what workers and callers do.


@main.command("events")
@optional_app_option
@broker_option
@click.option("--dump", is_flag=True, help="Print every event as one JSON line, for scripts.")
@click.option(
    "--max-length",
    type=click.IntRange(min=1),
    default=MAX_LENGTH,
    show_default=True,
    help="Events the monitor's queue holds; past it the oldest are dropped.",
)
@click.option(
    "--only",
    type=click.Choice(["task", "worker"]),
    help="Only task events or only worker events (default: both).",
)
def events(
    app: App | None, broker: str | None, dump: bool, max_length: int, only: str | None
) -> None:
    """Watch task and worker events: a live view, or JSON lines with --dump.

    Workers send events with `serve -E` (worker_send_task_events); callers send
    task-sent with the task_send_sent_event setting. Ctrl-C ends it.
    """
    conf = _settings(app, broker)
    keys = (f"{only}.#",) if only else ("#",)
    _run(watch(conf, dump=dump, max_length=max_length, keys=keys))
