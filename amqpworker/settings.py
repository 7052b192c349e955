"""The settings model: Celery's lower-case names, validated once, in one place.

Precedence, highest first: values given in code (``App(...)`` keywords, ``conf.update``,
attribute assignment, ``config_from_object``), then ``AMQPWORKER_<NAME>`` environment
variables, then the defaults below. Environment variables are read when an :class:`App`
is created, never at import time.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from . import rates
from .exceptions import ImproperlyConfigured
from .log import hide_password

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
SAFE_CONTENT = ("json", "msgpack", "yaml")
#: Celery's settings that amqpworker does not act on yet: set, they are an error saying
#: so, rather than accepted and ignored.
NOT_YET = {
    "task_always_eager": "eager mode is not built yet",
}


class Route(BaseModel):
    """Where a task's messages go: a queue (through the default exchange) or an exchange."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    priority: Annotated[int, Field(ge=0, le=255)] | None = None


class Settings(BaseSettings):
    """Every setting amqpworker reads. Unknown names and wrong types fail at once."""

    model_config = SettingsConfigDict(
        env_prefix="AMQPWORKER_",
        extra="forbid",
        validate_assignment=True,
        validate_default=True,
    )

    # Broker and results
    broker_url: Annotated[list[str], NoDecode] = Field(default=[DEFAULT_BROKER_URL])
    broker_connection_timeout: Annotated[float, Field(gt=0)] = 10.0
    #: Seconds; RabbitMQ's guidance is 5 to 20. A frozen or cut-off worker's unacked
    #: messages come back after about three of these (0 turns heartbeats off).
    broker_heartbeat: Annotated[int, Field(ge=0)] = 10
    result_backend: str = "rpc://"
    result_serializer: str = "json"
    result_expires: Annotated[float, Field(gt=0)] = 86400.0

    # Messages
    task_serializer: str = "json"
    accept_content: list[str] = Field(default=list(SAFE_CONTENT))
    task_publish_timeout: Annotated[float, Field(gt=0)] = 10.0
    task_create_missing_queues: bool = True

    # Routing
    routing_file: Path | None = None
    task_routes: dict[str, Route] = Field(default_factory=dict)
    task_default_queue: Annotated[str, Field(min_length=1)] = "amqpworker"
    task_default_exchange: str = ""
    task_default_routing_key: str | None = None
    task_default_priority: Annotated[int, Field(ge=0, le=255)] | None = None
    task_queue_max_priority: Annotated[int, Field(ge=1, le=255)] | None = 10

    # Task behaviour
    task_track_started: bool = False
    task_time_limit: Annotated[float, Field(gt=0)] | None = None
    task_soft_time_limit: Annotated[float, Field(gt=0)] | None = None
    task_acks_late: bool = True
    #: With acks_late, a task whose child process died goes back to its queue (once)
    #: rather than to ``<queue>.dlq`` with a FAILURE (``--pool process``).
    task_reject_on_worker_lost: bool = False
    task_ignore_result: bool = False
    task_default_retry_delay: Annotated[float, Field(ge=0)] = 180.0
    task_max_retries: Annotated[int, Field(ge=0)] | None = 3
    #: The rate limit of every task without its own (``"10/s"``, ``"200/m"``, ``"1000/h"``).
    task_default_rate_limit: str | float | None = None
    task_always_eager: bool = False

    # Time
    timezone: str = "UTC"
    enable_utc: bool = True

    # Worker
    include: list[str] = Field(default_factory=list)
    worker_concurrency: Annotated[int, Field(ge=1)] = Field(
        default_factory=lambda: os.cpu_count() or 1
    )
    worker_pool: Literal["threads", "asyncio", "process"] = "threads"
    #: The loop amqpworker runs its own loops on (worker, CLI, the sync API's thread).
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    worker_prefetch_multiplier: Annotated[int, Field(ge=1)] = 4
    #: ``--pool process``: a child is replaced after this many tasks.
    worker_max_tasks_per_child: Annotated[int, Field(ge=1)] | None = None
    #: ``--pool process``: a child is replaced after a task leaves it above this many
    #: KiB resident (its peak, as in Celery).
    worker_max_memory_per_child: Annotated[int, Field(ge=1)] | None = None
    worker_shutdown_timeout: Annotated[float, Field(ge=0)] = 30.0
    #: Ignore every rate limit (tasks', the default, and those set by remote control).
    worker_disable_rate_limits: bool = False
    #: Answer ``app.control`` commands (a control queue per worker).
    worker_enable_remote_control: bool = True
    #: Seconds a revoke holds (also the revocations stream's maximum age).
    worker_revoke_expires: Annotated[float, Field(gt=0)] = 86_400.0
    #: Serve Prometheus metrics and health checks on this port (``serve --metrics-port``);
    #: None: not served, and nothing is measured. 0 picks a free port (logged).
    worker_metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    #: The address the metrics port listens on; all interfaces, for probes from outside.
    worker_metrics_host: Annotated[str, Field(min_length=1)] = "0.0.0.0"
    #: Seconds the worker's event loop may go without turning before its liveness check
    #: fails. A sync task under ``--pool asyncio`` holds the loop while it runs.
    worker_health_loop_timeout: Annotated[float, Field(gt=0)] = 10.0

    # Events (see docs/operations.md): off by default, and then free.
    #: Workers publish task events and worker-online/heartbeat/offline (``serve -E``).
    worker_send_task_events: bool = False
    #: Callers publish task-sent for every task they send.
    task_send_sent_event: bool = False
    #: Seconds an event waits in a monitor's queue before the broker drops it.
    event_queue_ttl: Annotated[float, Field(gt=0)] = 5.0
    #: Seconds a monitor's queue outlives its consumer (it is exclusive: its connection).
    event_queue_expires: Annotated[float, Field(gt=0)] = 60.0

    # Beat (see docs/beat.md)
    #: Periodic tasks: name -> {task, schedule, args, kwargs, options, relative}.
    beat_schedule: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: The names of beat's queues on the broker: PREFIX.leader (who fires) and
    #: PREFIX.state (when each entry last fired). Beats sharing it share one schedule.
    beat_queue_prefix: Annotated[str, Field(min_length=1, max_length=200)] = "amqpworker.beat"

    # Logging
    log_level: str = "INFO"
    log_format: Literal["console", "json"] = "console"

    @field_validator(*NOT_YET, mode="after")
    @classmethod
    def _refuse_what_is_not_built(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in (None, False, {}):
            raise ValueError(f"{NOT_YET[info.field_name or '']}; leave it unset for now")
        return value

    @field_validator("broker_url", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(";") if part.strip()]
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_urls(cls, urls: list[str]) -> list[str]:
        if not urls:
            raise ValueError("at least one broker URL is needed")
        for url in urls:
            if not url.startswith(("amqp://", "amqps://")):
                raise ValueError(f"{hide_password(url)!r} is not an amqp:// or amqps:// URL")
        return urls

    @field_validator("result_backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        if value not in ("rpc://", "rpc"):
            raise ValueError(f"{value!r} is not supported; the result backend is 'rpc://'")
        return "rpc://"

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("task_routes", mode="before")
    @classmethod
    def _check_route_patterns(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for pattern in value:
                if not isinstance(pattern, str) or not pattern:
                    raise ValueError(f"route pattern {pattern!r} must be a non-empty string")
        return value

    @field_validator("task_default_rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str | float | None) -> str | float | None:
        rates.check(value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
            return
        if name not in type(self).model_fields:
            raise ImproperlyConfigured(_unknown_setting_message(name))
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise ImproperlyConfigured(describe_validation_error(exc)) from None

    def update(self, mapping: Mapping[str, Any] | None = None, /, **values: Any) -> None:
        """Set several settings at once; nothing changes if any of them is wrong."""
        merged = {**(mapping or {}), **values}
        for name in merged:
            if name not in type(self).model_fields:
                raise ImproperlyConfigured(_unknown_setting_message(name))
        candidate = {**self.model_dump(), **merged}
        try:
            checked = type(self).model_validate(candidate)
        except ValidationError as exc:
            raise ImproperlyConfigured(describe_validation_error(exc)) from None
        for name in merged:
            object.__setattr__(self, name, getattr(checked, name))
        self.model_fields_set.update(merged)

    def route_for(self, task_name: str) -> Route | None:
        """The first route in ``task_routes`` whose name or glob matches ``task_name``."""
        routes = self.task_routes
        exact = routes.get(task_name)
        if exact is not None:
            return exact
        for pattern, route in routes.items():
            if fnmatch.fnmatchcase(task_name, pattern):
                return route
        return None


def load_settings(values: Mapping[str, Any]) -> Settings:
    """Build settings from code-given values over the environment, naming any bad setting."""
    unknown = [name for name in values if name not in Settings.model_fields]
    if unknown:
        raise ImproperlyConfigured(_unknown_setting_message(unknown[0]))
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ImproperlyConfigured(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError, where: str = "setting") -> str:
    """One line per problem, each naming the setting and what is wrong with it."""
    lines = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "?"
        got = error.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(hide_password(f"{where} {location!r}: {error['msg']}{shown}"))
    return "; ".join(lines)


def _unknown_setting_message(name: str) -> str:
    close = [known for known in Settings.model_fields if _similar(name, known)]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown setting {name!r}{hint}"


def _similar(a: str, b: str) -> bool:
    return difflib.SequenceMatcher(None, a, b).ratio() > 0.8
