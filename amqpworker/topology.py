"""Topology as code: exchanges, queues, bindings and task routes, from YAML or Python.

One file describes what the broker should have, and producers and workers load the
same file, so they cannot disagree about a queue's arguments or a task's route::

    exchanges:
      - {name: media, type: topic}
    queues:
      - {name: images, max_priority: 10}
      - {name: reports, type: quorum, delivery_limit: 3}
    bindings:
      - {exchange: media, queue: images, routing_key: "img.#"}
    routes:
      - {task: "myapp.tasks.img_*", exchange: media, routing_key: img.resize}
      - {task: "myapp.tasks.report_*", queue: reports, priority: 5}

Validation happens once, at load time, with errors that name the file and the entry
(``routing.yaml: queues[2].max_priority: ...``). This module is pure: declaring and
comparing with a broker is the broker layer's job.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .exceptions import ImproperlyConfigured
from .settings import Route

DLQ_SUFFIX = ".dlq"
#: Deliveries of one message before it is treated as crash-looping and dead-lettered.
DEFAULT_DELIVERY_LIMIT = 5
#: Exchanges every RabbitMQ has; routes and bindings may use them without declaring.
BUILTIN_EXCHANGES = frozenset(
    {"", "amq.direct", "amq.topic", "amq.fanout", "amq.headers", "amq.match"}
)

Name = Annotated[str, Field(min_length=1, max_length=255)]


def dlq_name(queue: str) -> str:
    """The dead-letter queue that belongs to a work queue."""
    return queue + DLQ_SUFFIX


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExchangeSpec(_Entry):
    """An exchange to declare."""

    name: Name
    type: Literal["direct", "topic", "fanout", "headers"] = "direct"
    durable: bool = True
    auto_delete: bool = False
    arguments: dict[str, Any] = Field(default_factory=dict)


class QueueSpec(_Entry):
    """A work queue; its dead-letter queue ``<name>.dlq`` comes with it.

    ``prefetch`` overrides the worker's ``concurrency x prefetch_multiplier`` for this
    queue's consumer: a priority queue only orders what is still *in* the queue, so
    strict priority wants ``prefetch: 1`` (a prefetched message cannot be overtaken).
    """

    name: Name
    type: Literal["classic", "quorum"] = "classic"
    max_priority: Annotated[int, Field(ge=1, le=255)] | None = None
    message_ttl: Annotated[float, Field(gt=0)] | None = None
    max_length: Annotated[int, Field(ge=0)] | None = None
    max_length_bytes: Annotated[int, Field(ge=0)] | None = None
    overflow: Literal["drop-head", "reject-publish", "reject-publish-dlx"] | None = None
    dead_letter: bool = True
    delivery_limit: Annotated[int, Field(ge=1)] | None = None
    prefetch: Annotated[int, Field(ge=1)] | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _quorum_rules(self) -> QueueSpec:
        if self.type == "quorum" and self.max_priority is not None:
            raise ValueError("quorum queues have no priorities; remove max_priority")
        if self.name.endswith(DLQ_SUFFIX):
            raise ValueError(f"queue names ending in {DLQ_SUFFIX!r} are reserved for DLQs")
        return self

    @property
    def effective_delivery_limit(self) -> int:
        return self.delivery_limit or DEFAULT_DELIVERY_LIMIT

    def dlq_arguments(self) -> dict[str, Any]:
        """A quorum queue's DLQ is a quorum queue too: it must outlive any one node."""
        return {"x-queue-type": "quorum"} if self.type == "quorum" else {}

    def arguments_for(self, default_max_priority: int | None) -> dict[str, Any]:
        """The ``x-`` arguments to declare this queue with."""
        arguments: dict[str, Any] = {}
        if self.dead_letter:
            arguments["x-dead-letter-exchange"] = ""
            arguments["x-dead-letter-routing-key"] = dlq_name(self.name)
        if self.type == "quorum":
            arguments["x-queue-type"] = "quorum"
            arguments["x-delivery-limit"] = self.effective_delivery_limit
        else:
            priority = self.max_priority or default_max_priority
            if priority:
                arguments["x-max-priority"] = priority
        if self.message_ttl is not None:
            arguments["x-message-ttl"] = int(self.message_ttl * 1000)
        if self.max_length is not None:
            arguments["x-max-length"] = self.max_length
        if self.max_length_bytes is not None:
            arguments["x-max-length-bytes"] = self.max_length_bytes
        if self.overflow is not None:
            arguments["x-overflow"] = self.overflow
        arguments.update(self.arguments)
        return arguments


class BindingSpec(_Entry):
    """Messages published to ``exchange`` reach ``queue`` by routing key or headers."""

    exchange: Name
    queue: Name
    routing_key: str = ""
    headers: dict[str, Any] | None = None
    match: Literal["all", "any"] = "all"

    def arguments(self) -> dict[str, Any] | None:
        if self.headers is None:
            return None
        return {"x-match": self.match, **self.headers}


class RouteSpec(_Entry):
    """Tasks whose name equals or glob-matches ``task`` go to this destination."""

    task: Name
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    priority: Annotated[int, Field(ge=0, le=255)] | None = None

    @model_validator(mode="after")
    def _has_destination(self) -> RouteSpec:
        if self.queue is None and self.exchange is None:
            raise ValueError("a route needs a queue or an exchange")
        return self

    def as_route(self) -> Route:
        return Route(
            queue=self.queue,
            exchange=self.exchange,
            routing_key=self.routing_key,
            priority=self.priority,
        )


class Topology(_Entry):
    """Everything one routing file declares."""

    exchanges: list[ExchangeSpec] = Field(default_factory=list)
    queues: list[QueueSpec] = Field(default_factory=list)
    bindings: list[BindingSpec] = Field(default_factory=list)
    routes: list[RouteSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references_resolve(self) -> Topology:
        exchanges = _unique("exchanges", (e.name for e in self.exchanges))
        queues = _unique("queues", (q.name for q in self.queues))
        for i, binding in enumerate(self.bindings):
            if binding.exchange not in exchanges | BUILTIN_EXCHANGES:
                raise ValueError(f"bindings[{i}]: exchange {binding.exchange!r} is not declared")
            if binding.queue not in queues:
                raise ValueError(f"bindings[{i}]: queue {binding.queue!r} is not declared")
        for i, route in enumerate(self.routes):
            if route.queue is not None and route.queue not in queues:
                raise ValueError(f"routes[{i}]: queue {route.queue!r} is not declared")
            if route.exchange is not None and route.exchange not in exchanges | BUILTIN_EXCHANGES:
                raise ValueError(f"routes[{i}]: exchange {route.exchange!r} is not declared")
        return self

    def queue(self, name: str) -> QueueSpec:
        """The declared queue of that name, or a default classic queue."""
        for spec in self.queues:
            if spec.name == name:
                return spec
        return QueueSpec(name=name)

    def route_for(self, task_name: str) -> Route | None:
        """The first route naming the task exactly, else the first whose glob matches."""
        for route in self.routes:
            if route.task == task_name:
                return route.as_route()
        for route in self.routes:
            if fnmatch.fnmatchcase(task_name, route.task):
                return route.as_route()
        return None

    def bindings_to(self, queue: str) -> list[BindingSpec]:
        return [binding for binding in self.bindings if binding.queue == queue]

    def exchange(self, name: str) -> ExchangeSpec | None:
        return next((spec for spec in self.exchanges if spec.name == name), None)

    @classmethod
    def load(cls, path: str | Path) -> Topology:
        """Read and validate a routing YAML file; errors name the file and the entry."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ImproperlyConfigured(f"{path}: cannot read the routing file: {exc}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ImproperlyConfigured(f"{path}: not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ImproperlyConfigured(f"{path}: the top level must be a mapping")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ImproperlyConfigured(f"{path}: {_describe(exc)}") from None


def _unique(kind: str, names: Iterable[str]) -> frozenset[str]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{kind}: {name!r} is declared twice")
        seen.add(name)
    return frozenset(seen)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        location = ""
        for part in error["loc"]:
            location += f"[{part}]" if isinstance(part, int) else f".{part}" if location else part
        message = error["msg"].removeprefix("Value error, ")
        got = error.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        problems.append(f"{location}: {message}{shown}" if location else message)
    return "; ".join(problems)
