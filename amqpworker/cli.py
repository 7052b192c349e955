"""The ``amqpworker`` command: serve, call.

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
from typing import Any

import click

from .app import App
from .exceptions import AmqpWorkerError, ImproperlyConfigured
from .log import configure_logging
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
@click.option("-P", "--pool", type=click.Choice(["threads", "asyncio"]), help="How tasks run.")
@click.option(
    "--prefetch-multiplier", type=click.IntRange(min=1), help="Prefetch = concurrency x this."
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    help="Seconds running tasks get to finish after SIGTERM.",
)
@click.option(
    "-l",
    "--loglevel",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option("--log-format", type=click.Choice(["console", "json"]), help="Log line format.")
@click.option("-n", "--hostname", help="This worker's name (default app@host).")
def serve(
    app: App,
    queues: list[str] | None,
    concurrency: int | None,
    pool: str | None,
    prefetch_multiplier: int | None,
    shutdown_timeout: float | None,
    loglevel: str,
    log_format: str | None,
    hostname: str | None,
) -> None:
    """Consume queues and run tasks until SIGTERM."""
    configure_logging(
        loglevel, "json" if (log_format or app.conf.log_format) == "json" else "console"
    )
    try:
        app.import_includes()
        worker = Worker(
            app,
            queues,
            concurrency=concurrency,
            pool=pool,
            prefetch_multiplier=prefetch_multiplier,
            shutdown_timeout=shutdown_timeout,
            hostname=hostname,
        )
    except (AmqpWorkerError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(worker.banner(), err=True)
    try:
        asyncio.run(worker.run(install_signals=True))
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
