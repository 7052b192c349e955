"""Where a task message goes: call options, then task options, then ``task_routes``.

The precedence is Celery's: arguments to ``apply_async`` win over the task's own
``queue=``/``exchange=`` options, which win over the configured route (``task_routes``,
then the routing file; exact names before globs), which win over ``task_default_*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ..settings import Settings


class Layer(NamedTuple):
    """One routing layer (a call's options, a task's options, a configured route)."""

    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    priority: int | None = None


NO_LAYER = Layer()


class _LookUp:
    """The default of resolve_destination's ``route``: ask ``task_routes``."""


LOOK_UP = _LookUp()


class RouteLike(Protocol):
    @property
    def queue(self) -> str | None: ...
    @property
    def exchange(self) -> str | None: ...
    @property
    def routing_key(self) -> str | None: ...
    @property
    def priority(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Destination:
    """An exchange and routing key, plus the queue it reaches when we know it."""

    exchange: str
    routing_key: str
    queue: str | None
    priority: int | None


def resolve_destination(
    conf: Settings,
    task_name: str,
    call: RouteLike,
    task_options: RouteLike,
    route: RouteLike | _LookUp | None = LOOK_UP,
) -> Destination:
    """Merge the routing layers (call, task, the configured route) into one destination.

    ``route`` is the configured route for the task (``None``: it has none); left out,
    ``task_routes`` is asked.
    """
    layers: list[RouteLike] = [call, task_options]
    if isinstance(route, _LookUp):
        route = conf.route_for(task_name)
    if route is not None:
        layers.append(route)

    # The highest layer that names a queue or an exchange decides the destination as a
    # whole (`apply_async(queue="urgent")` means that queue, whatever exchange a route
    # set); a routing key counts from that layer or one above it.
    deciding = next(
        (i for i, layer in enumerate(layers) if layer.queue or layer.exchange is not None),
        len(layers) - 1,
    )
    queue, exchange = layers[deciding].queue, layers[deciding].exchange
    routing_key = next(
        (layer.routing_key for layer in layers[: deciding + 1] if layer.routing_key is not None),
        None,
    )
    priority = next((layer.priority for layer in layers if layer.priority is not None), None)
    if priority is None:
        priority = conf.task_default_priority

    if exchange is None:
        if queue is not None:
            # A bare queue goes straight to it through the default exchange.
            return Destination("", queue, queue, priority)
        exchange = conf.task_default_exchange
        queue = conf.task_default_queue
        routing_key = routing_key or conf.task_default_routing_key or queue
        return Destination(exchange, routing_key, routing_key if exchange == "" else None, priority)
    if routing_key is None:
        routing_key = queue or conf.task_default_routing_key or task_name
    # Through the default exchange the routing key is the queue's name.
    return Destination(exchange, routing_key, routing_key if exchange == "" else None, priority)
