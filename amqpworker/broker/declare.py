"""Declaring a :class:`~amqpworker.topology.Topology` on the broker, and checking it.

RabbitMQ refuses, with a channel-closing ``PRECONDITION_FAILED``, a declaration whose
arguments differ from what it has, and names only the first difference. :func:`check`
turns each such refusal into a sentence, adopts the broker's value and declares again,
so one run lists every difference of a queue or exchange without changing anything:
a declaration that matches is a no-op, and a missing entity is found with a passive
declaration first, so nothing is created.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue, ExchangeType

from .. import delay
from ..topology import BUILTIN_EXCHANGES, BindingSpec, ExchangeSpec, QueueSpec, Topology, dlq_name

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']*)'"
    r".*?: received (?P<ours>.+?) but current is (?P<theirs>.+)$"
)
_VALUE = re.compile(r"(?:the value )?'(?P<value>[^']*)'(?: of type '(?P<type>[^']+)')?")
_MAX_PROBES = 20
ChannelFactory = Callable[[], Awaitable[AbstractChannel]]
_INTEGER_TYPES = frozenset({"byte", "short", "signedint", "long", "unsignedbyte", "unsignedshort"})


async def declare_queue(
    channel: AbstractChannel, spec: QueueSpec, default_max_priority: int | None
) -> AbstractQueue:
    """Declare a work queue (and its DLQ first, so dead-lettering always has a target)."""
    if spec.dead_letter:
        await channel.declare_queue(
            dlq_name(spec.name), durable=True, arguments=spec.dlq_arguments()
        )
    return await channel.declare_queue(
        spec.name, durable=True, arguments=spec.arguments_for(default_max_priority)
    )


async def declare_exchange(channel: AbstractChannel, spec: ExchangeSpec) -> None:
    await channel.declare_exchange(
        spec.name,
        ExchangeType(spec.type),
        durable=spec.durable,
        auto_delete=spec.auto_delete,
        arguments=spec.arguments,
    )


async def bind(channel: AbstractChannel, binding: BindingSpec) -> None:
    queue = await channel.get_queue(binding.queue, ensure=False)
    await queue.bind(binding.exchange, binding.routing_key, arguments=binding.arguments())


async def apply(
    channel: AbstractChannel, topology: Topology, default_max_priority: int | None
) -> None:
    """Declare every exchange, queue and binding; idempotent."""
    for exchange in topology.exchanges:
        await declare_exchange(channel, exchange)
    for queue in topology.queues:
        await declare_queue(channel, queue, default_max_priority)
    for binding in topology.bindings:
        await bind(channel, binding)
    await declare_delay_topology(channel)
    for queue in topology.queues:
        await declare_landing(channel, "", queue.name)


async def declare_delay_topology(channel: AbstractChannel) -> None:
    """Declare the delay levels, idempotently (see :mod:`amqpworker.delay`)."""
    unroutable = await channel.declare_exchange(delay.UNROUTABLE, ExchangeType.FANOUT, durable=True)
    stranded = await channel.declare_queue(
        delay.UNROUTABLE, durable=True, arguments={"x-message-ttl": delay.UNROUTABLE_TTL_MS}
    )
    await stranded.bind(unroutable)
    deliver = await channel.declare_exchange(
        delay.DELIVER_EXCHANGE,
        ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": delay.UNROUTABLE},
    )
    below = deliver
    for level in range(delay.LEVELS):
        name = delay.level_name(level)
        exchange = await channel.declare_exchange(name, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(
            name,
            durable=True,
            arguments={
                **delay.QUEUE_ARGUMENTS,
                "x-message-ttl": delay.level_ttl_ms(level),
                "x-dead-letter-exchange": below.name,
            },
        )
        bit_set, bit_clear = delay.level_binding_keys(level)
        await queue.bind(exchange, bit_set)
        await below.bind(exchange, bit_clear)
        below = exchange


async def declare_landing(channel: AbstractChannel, exchange: str, routing_key: str) -> None:
    """The TTL-0 queue that hands a delayed message to its destination when its time came."""
    queue = await channel.declare_queue(
        delay.landing_queue(exchange, routing_key),
        durable=True,
        arguments={
            **delay.QUEUE_ARGUMENTS,
            "x-message-ttl": 0,
            "x-dead-letter-exchange": exchange,
            "x-dead-letter-routing-key": routing_key,
        },
    )
    await queue.bind(delay.DELIVER_EXCHANGE, f"#.{delay.landing_id(exchange, routing_key)}")


async def declare_for_queues(
    channel: AbstractChannel,
    topology: Topology,
    queues: list[str],
    default_max_priority: int | None,
) -> dict[str, AbstractQueue]:
    """What a worker needs: its queues, what feeds them, and the delay levels.

    Its retries and early messages go through the levels, so it also declares a landing
    queue for each of its queues.
    """
    declared = {}
    for name in queues:
        declared[name] = await declare_queue(channel, topology.queue(name), default_max_priority)
        for binding in topology.bindings_to(name):
            feeding = topology.exchange(binding.exchange)
            if feeding is not None:
                await declare_exchange(channel, feeding)
            await bind(channel, binding)
    await declare_delay_topology(channel)
    for name in queues:
        await declare_landing(channel, "", name)
    return declared


async def check(
    open_channel: ChannelFactory,
    topology: Topology,
    default_max_priority: int | None,
    queues: list[str] | None = None,
) -> list[str]:
    """Every difference between the topology and the broker, in plain words.

    ``queues`` limits the check to those queues (a worker's), else all of the file's.
    """
    differences: list[str] = []
    if queues is None:
        for exchange in topology.exchanges:
            differences += await _check_exchange(open_channel, exchange)
        specs = topology.queues
    else:
        specs = [topology.queue(name) for name in queues]
        for name in queues:
            for binding in topology.bindings_to(name):
                feeding = topology.exchange(binding.exchange)
                if feeding is not None:
                    differences += await _check_exchange(open_channel, feeding)
    for spec in specs:
        differences += await _check_queue(open_channel, spec, default_max_priority)
    return differences


async def _check_queue(
    open_channel: ChannelFactory, spec: QueueSpec, default_max_priority: int | None
) -> list[str]:
    names = [spec.name] + ([dlq_name(spec.name)] if spec.dead_letter else [])
    missing = [
        f"queue {name!r} is missing" for name in names if not await _exists(open_channel, name)
    ]
    if f"queue {spec.name!r} is missing" in missing:
        return missing
    arguments = spec.arguments_for(default_max_priority)
    settings: dict[str, Any] = {"durable": True}

    async def declare(channel: AbstractChannel) -> None:
        await channel.declare_queue(spec.name, arguments=arguments, **settings)

    return missing + await _probe(open_channel, "queue", spec.name, declare, arguments, settings)


async def _check_exchange(open_channel: ChannelFactory, spec: ExchangeSpec) -> list[str]:
    if spec.name in BUILTIN_EXCHANGES:
        return []
    channel = await open_channel()
    try:
        await channel.get_exchange(spec.name, ensure=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return [f"exchange {spec.name!r} is missing"]
    finally:
        if not channel.is_closed:
            await channel.close()
    arguments = dict(spec.arguments)
    settings: dict[str, Any] = {
        "type": spec.type,
        "durable": spec.durable,
        "auto_delete": spec.auto_delete,
    }

    async def declare(channel: AbstractChannel) -> None:
        await channel.declare_exchange(
            spec.name,
            ExchangeType(settings["type"]),
            durable=settings["durable"],
            auto_delete=settings["auto_delete"],
            arguments=arguments,
        )

    return await _probe(open_channel, "exchange", spec.name, declare, arguments, settings)


async def _exists(open_channel: ChannelFactory, queue: str) -> bool:
    channel = await open_channel()
    try:
        await channel.declare_queue(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    if not channel.is_closed:
        await channel.close()
    return True


async def _probe(
    open_channel: ChannelFactory,
    kind: str,
    name: str,
    declare: Any,
    arguments: dict[str, Any],
    settings: dict[str, Any],
) -> list[str]:
    """Declare until the broker agrees, recording and adopting each value it reports."""
    differences = []
    for _ in range(_MAX_PROBES):
        channel = await open_channel()
        try:
            await declare(channel)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            text = str(exc.args[0] if exc.args else exc)
            found = _INEQUIVALENT.search(text)
            if found is None:
                differences.append(f"{kind} {name!r}: the broker refused it: {text}")
                break
            arg = found["arg"]
            current = settings.get(arg, arguments.get(arg))
            ours, theirs = _value(found["ours"], current), _value(found["theirs"], current)
            differences.append(
                f"{kind} {name!r}: {arg} is {_show(theirs)} on the broker, "
                f"but the file says {_show(ours)}"
            )
            if arg in settings:
                settings[arg] = theirs
            elif theirs is None:
                arguments.pop(arg, None)
            else:
                arguments[arg] = theirs
            continue
        if not channel.is_closed:
            await channel.close()
        break
    return differences


def _value(text: str, like: Any) -> Any:
    """A value from the broker's message, typed by its AMQP type or like our own value."""
    if text.strip() == "none":
        return None
    found = _VALUE.search(text)
    if found is None:
        return text
    value, kind = found["value"], found["type"] or ""
    if isinstance(like, bool) or value in ("true", "false"):
        return value == "true"
    if kind in _INTEGER_TYPES or (not kind and isinstance(like, int)):
        try:
            return int(value)
        except ValueError:
            return value
    if kind in ("float", "double"):
        return float(value)
    return value


def _show(value: Any) -> str:
    return "not set" if value is None else repr(value)
