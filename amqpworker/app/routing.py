"""Where a task message goes: call options, then task options, then ``task_routes``.

The precedence is Celery's: arguments to ``apply_async`` win over the task's own
``queue=``/``exchange=`` options, which win over ``task_routes`` (exact names before
globs), which win over the ``task_default_*`` settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import Route, Settings


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
    call: Route,
    task_options: Route,
) -> Destination:
    """Merge the routing layers into one destination."""
    layers = [call, task_options]
    route = conf.route_for(task_name)
    if route is not None:
        layers.append(route)

    def first(attr: str) -> str | int | None:
        for layer in layers:
            value = getattr(layer, attr)
            if value is not None:
                return value  # type: ignore[no-any-return]
        return None

    queue = first("queue")
    exchange = first("exchange")
    routing_key = first("routing_key")
    priority = first("priority")
    if priority is None:
        priority = conf.task_default_priority
    assert queue is None or isinstance(queue, str)
    assert exchange is None or isinstance(exchange, str)
    assert routing_key is None or isinstance(routing_key, str)
    assert priority is None or isinstance(priority, int)

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
