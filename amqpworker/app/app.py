"""The application: settings, the task registry, and the one path that publishes tasks.

Publishing is written once, as a coroutine (:meth:`App.asend_task`). Async callers await
it on their own loop; sync callers hop once into the app's :class:`~amqpworker.portal.
Portal` loop and run the very same coroutine there.
"""

from __future__ import annotations
import __future__

import asyncio
import contextlib
import datetime as dt
import functools
import importlib
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, overload
from zoneinfo import ZoneInfo

from .. import delay
from ..exceptions import DuplicateTaskError, ImproperlyConfigured
from ..loop import loop_factory
from ..portal import Portal
from ..schedules import as_schedule
from ..settings import Route, Settings, load_settings
from ..topology import Topology
from ..wire import TaskMessage, default_serializers
from ..wire.message import CORE_HEADERS
from ..wire.serializers import Serializer
from .builtins import register_builtins
from .client import Client
from .control import Control
from .results import AsyncResult
from .routing import NO_LAYER, Destination, Layer, resolve_destination
from .signals import Signal
from .task import NOT_YET_OPTIONS, Task, check_time_limit, current_request, default_task_name

F = TypeVar("F", bound=Callable[..., Any])
Call = tuple[Any, ...]
"""``(task_or_name, args[, kwargs[, options]])`` for :meth:`App.send_many`."""

#: Options ``apply_async``/``send_task`` accept now; anything else is a TypeError.
CALL_OPTIONS = frozenset(
    {
        "task_id",
        "queue",
        "exchange",
        "routing_key",
        "priority",
        "headers",
        "serializer",
        "ignore_result",
        "expires",
        "time_limit",
        "soft_time_limit",
        "countdown",
        "eta",
    }
)


class App:
    """A task application: ``App("myapp", broker="amqp://...")``."""

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | Sequence[str] | None = None,
        backend: str | None = None,
        include: Iterable[str] = (),
        **settings: Any,
    ) -> None:
        if broker is not None:
            settings["broker_url"] = broker
        if backend is not None:
            settings["result_backend"] = backend
        if include:
            settings["include"] = list(include)
        self.main = main
        self.conf: Settings = load_settings(settings)
        self.tasks: dict[str, Task] = {}
        #: amqpworker's own tasks (map, starmap), kept out of the user's registry.
        self.builtin_tasks: dict[str, Task] = {}
        self.serializers = default_serializers()
        self._portal = Portal(
            f"amqpworker-{main or 'app'}", lambda: loop_factory(self.conf.event_loop)()
        )
        self._clients: dict[asyncio.AbstractEventLoop, asyncio.Task[Client]] = {}
        self._clients_lock = threading.Lock()
        self._topology: tuple[Path | None, Topology] = (None, Topology())
        #: Sent once, when a program that runs the app (beat, serve) has loaded it.
        self.on_after_configure = Signal("on_after_configure")
        self.on_after_finalize = Signal("on_after_finalize")
        self._finalized = False
        register_builtins(self)

    def __repr__(self) -> str:
        return f"<App {self.main or '__main__'}>"

    @functools.cached_property
    def control(self) -> Control:
        """Remote control of running workers: ``app.control.inspect().ping()``."""
        return Control(self)

    @property
    def portal(self) -> Portal:
        """The background loop that serves this app's synchronous calls."""
        return self._portal

    # Configuration.

    def config_from_object(self, obj: str | object, namespace: str | None = None) -> None:
        """Load settings from a module path (``"pkg.settings"``), a module, a class or object.

        Only public lower-case attributes are read (or ``NAMESPACE_UPPER_CASE`` ones when
        ``namespace`` is given, as in a Django settings module); modules, classes and
        functions among them are skipped. Unknown names are errors.
        """
        source = _import_object(obj) if isinstance(obj, str) else obj
        values: dict[str, Any] = {}
        prefix = f"{namespace}_" if namespace else None
        for attr in dir(source):
            if prefix is not None:
                if not attr.startswith(prefix):
                    continue
                name = attr[len(prefix) :].lower()
            elif attr.startswith("_") or not attr.islower():
                continue
            else:
                name = attr
            value = getattr(source, attr)
            if isinstance(value, (ModuleType, type, __future__._Feature)) or callable(value):
                continue
            values[name] = value
        try:
            self.conf.update(values)
        except ImproperlyConfigured as exc:
            raise ImproperlyConfigured(f"in {_describe(source)}: {exc}") from None

    def config_from_envvar(self, variable: str) -> None:
        """Load settings from the module named by an environment variable."""
        module = os.environ.get(variable)
        if not module:
            raise ImproperlyConfigured(
                f"environment variable {variable} is not set; it should name a settings module"
            )
        self.config_from_object(module)

    @property
    def topology(self) -> Topology:
        """The routing file's topology (``routing_file``), loaded once per path."""
        path = self.conf.routing_file
        if path != self._topology[0]:
            self._topology = (path, Topology.load(path) if path else Topology())
        return self._topology[1]

    def route_for(self, task_name: str) -> Route | None:
        """``task_routes`` first, then the routing file's routes."""
        return self.conf.route_for(task_name) or self.topology.route_for(task_name)

    # Tasks.

    @overload
    def task(self, fun: F, /) -> Task: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        bind: bool = False,
        base: type[Task] | None = None,
        **options: Any,
    ) -> Callable[[Callable[..., Any]], Task]: ...

    def task(  # type: ignore[misc]  # mypy cannot match **options against a positional-only fun
        self,
        fun: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        bind: bool = False,
        base: type[Task] | None = None,
        **options: Any,
    ) -> Task | Callable[[Callable[..., Any]], Task]:
        """Register a function as a task: ``@app.task`` or ``@app.task(**options)``."""

        def register(function: Callable[..., Any]) -> Task:
            task_name = name or default_task_name(function, self.main)
            if task_name in self.tasks:
                raise DuplicateTaskError(
                    f"a task named {task_name!r} is already registered "
                    f"({self.tasks[task_name].fun.__module__}); pass name= to tell them apart"
                )
            cls = base or Task
            if not (isinstance(cls, type) and issubclass(cls, Task)):
                raise ImproperlyConfigured(f"task {task_name!r}: base= must be a Task subclass")
            created = cls(self, function, name=task_name, bind=bind, **options)
            self.tasks[task_name] = created
            return created

        return register(fun) if fun is not None else register

    def get_task(self, name: str) -> Task | None:
        """A registered task, or one of amqpworker's own."""
        return self.tasks.get(name) or self.builtin_tasks.get(name)

    def import_includes(self) -> None:
        """Import the modules named in ``include`` so their tasks register."""
        for module in self.conf.include:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ImproperlyConfigured(f"include: cannot import {module!r}: {exc}") from exc

    def finalize(self) -> None:
        """Send ``on_after_configure`` then ``on_after_finalize``, once per app.

        ``amqpworker beat`` and ``serve`` call it after loading the app and its
        ``include`` modules, so handlers can add periodic tasks as in Celery.
        """
        if self._finalized:
            return
        self._finalized = True
        self.on_after_configure.send(sender=self, source=self.conf)
        self.on_after_finalize.send(sender=self)

    # Periodic tasks (run by `amqpworker beat`).

    def add_periodic_task(
        self,
        schedule: Any,
        sig: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> str:
        """Add an entry to ``beat_schedule``: ``add_periodic_task(10.0, add.s(2, 2))``.

        ``sig`` is a signature, a task or a task name; ``options`` are the entry's send
        options (queue, priority, expires, ...) and ``relative``. Returns the entry's
        name (``name``, else the signature as text). A bad schedule fails here.
        """
        relative = bool(options.pop("relative", False))
        as_schedule(schedule, relative)
        if isinstance(sig, Task):
            sig = sig.s(*args, **(kwargs or {}))
        entry: dict[str, Any]
        if isinstance(sig, str):
            entry = {"task": sig, "args": list(args), "kwargs": dict(kwargs or {}), "options": {}}
        elif isinstance(sig, Mapping) and "task" in sig:
            entry = {
                "task": sig["task"],
                "args": list(sig.get("args") or args),
                "kwargs": dict(sig.get("kwargs") or kwargs or {}),
                "options": dict(sig.get("options") or {}),
            }
        else:
            raise TypeError(f"add_periodic_task needs a signature, a task or a name, not {sig!r}")
        entry["options"] = {**entry["options"], **options}
        entry["schedule"] = schedule
        if relative:
            entry["relative"] = True
        key = name or (sig if isinstance(sig, str) else repr(sig))
        self.conf.beat_schedule[key] = entry
        return key

    # Publishing: one async path, a sync facade.

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Publish a task by name; returns once the broker confirmed the message."""
        return self._portal.call(self.asend_task(name, args, kwargs, **options))

    async def asend_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task: Task | None = None,
        **options: Any,
    ) -> AsyncResult:
        client = await self.client()
        message, destination, serializer = self.prepare(name, args, kwargs, task, options)
        if not message.ignore_result:
            message = replace(message, reply_to=await client.reply_to())
        await client.publish_tasks([(message, destination, serializer)])
        return AsyncResult(message.id, self, task_name=name, client=client)

    def send_many(self, calls: Iterable[Call]) -> list[AsyncResult]:
        """Publish many tasks in one hop to the loop, waiting for all confirms together.

        Each call is ``(task_or_name, args)``, ``(task_or_name, args, kwargs)`` or
        ``(task_or_name, args, kwargs, options)``; results come back in the same order.
        """
        return self._portal.call(self.asend_many(calls))

    async def asend_many(self, calls: Iterable[Call]) -> list[AsyncResult]:
        client = await self.client()
        prepared = []
        reply_to: str | None = None
        for call in calls:
            target, args, kwargs, options = _unpack_call(call)
            task = target if isinstance(target, Task) else self.get_task(target)
            name = target.name if isinstance(target, Task) else target
            message, destination, serializer = self.prepare(name, args, kwargs, task, options)
            if not message.ignore_result:
                reply_to = reply_to or await client.reply_to()
                message = replace(message, reply_to=reply_to)
            prepared.append((message, destination, serializer))
        await client.publish_tasks(prepared)
        return [
            AsyncResult(message.id, self, task_name=message.task, client=client)
            for message, _, _ in prepared
        ]

    def prepare(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        task: Task | None,
        options: Mapping[str, Any],
    ) -> tuple[TaskMessage, Destination, Serializer]:
        """Turn a call into a message, a destination and a serializer, without I/O."""
        unknown = set(options) - CALL_OPTIONS
        if "rate_limit" in unknown:
            raise TypeError(
                f"rate_limit= is not a per-call option ({name}); as in Celery, set it on "
                "the task (@app.task(rate_limit=...)) or at run time (app.control.rate_limit)"
            )
        if unknown:
            raise TypeError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")
        for option in NOT_YET_OPTIONS.intersection(options):
            if options[option] is not None:
                raise TypeError(f"{option}= is not enforced yet; leave it unset ({name})")
        for limit in ("time_limit", "soft_time_limit"):
            try:
                check_time_limit(options.get(limit), limit)
            except ValueError as exc:
                raise TypeError(f"{exc} ({name})") from None
        headers = dict(options.get("headers") or {})
        clashing = sorted(CORE_HEADERS.intersection(headers))
        if clashing:
            raise TypeError(f"headers {clashing} are amqpworker's own; choose other names")
        task = task or self.get_task(name)
        conf = self.conf
        call_route = Layer(
            options.get("queue"),
            options.get("exchange"),
            options.get("routing_key"),
            _priority(options.get("priority")),
        )
        task_route = (
            Layer(task.queue, task.exchange, task.routing_key, task.priority)
            if task is not None
            else NO_LAYER
        )
        destination = resolve_destination(
            conf, name, call_route, task_route, route=self.route_for(name)
        )
        serializer = self.serializers.get(
            options.get("serializer") or (task and task.serializer) or conf.task_serializer
        )
        ignore_result = options.get("ignore_result")
        if ignore_result is None:
            ignore_result = task.effective_ignore_result if task else conf.task_ignore_result
        parent = current_request.get()
        message = TaskMessage(
            task=name,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            id=options.get("task_id") or str(uuid.uuid4()),
            root_id=parent.root_id if parent is not None else None,
            parent_id=parent.id if parent is not None else None,
            eta=_within_reach(_eta(options.get("countdown"), options.get("eta"), conf.timezone)),
            expires=_moment(options.get("expires"), conf.timezone, "expires"),
            # The worker's own settings apply where neither the call nor the task says.
            time_limit=options.get("time_limit") or (task and task.time_limit) or None,
            soft_time_limit=options.get("soft_time_limit")
            or (task and task.soft_time_limit)
            or None,
            priority=destination.priority,
            ignore_result=bool(ignore_result),
            headers=headers,
        )
        return message, destination, serializer

    # Clients: one per event loop.

    async def client(self) -> Client:
        """This app's client on the running loop, connected on first use."""
        loop = asyncio.get_running_loop()
        ready = _started(self._clients.get(loop))
        if ready is not None:
            return ready  # the hot path: no lock, no shield
        with self._clients_lock:
            for stale in [known for known in self._clients if known.is_closed()]:
                del self._clients[stale]
            starting = self._clients.get(loop)
            if starting is None:
                starting = loop.create_task(self._start_client())
                self._clients[loop] = starting
        try:
            return await asyncio.shield(starting)
        except BaseException:
            if starting.done():
                with self._clients_lock:
                    if self._clients.get(loop) is starting:
                        del self._clients[loop]
            raise

    async def _start_client(self) -> Client:
        client = Client(
            self.conf,
            self.serializers,
            name=self.main or "amqpworker",
            topology=lambda: self.topology,
        )
        await client.start()
        return client

    def portal_client(self) -> Client:
        """The client that serves sync callers, started if needed."""
        return self._portal.call(self.client())

    def portal_client_if_started(self) -> Client | None:
        loop = self._portal.loop_if_started()
        if loop is None:
            return None
        with self._clients_lock:
            return _started(self._clients.get(loop))

    async def aclose(self) -> None:
        """Close this app's client on the running loop."""
        loop = asyncio.get_running_loop()
        with self._clients_lock:
            starting = self._clients.pop(loop, None)
        if starting is not None:
            with contextlib.suppress(Exception):
                await (await starting).close()

    def close(self) -> None:
        """Close the sync client and stop the portal thread."""
        self._portal.close(self.aclose() if self._portal.loop_if_started() else None)


def _unpack_call(
    call: Call,
) -> tuple[Task | str, Sequence[Any], Mapping[str, Any], Mapping[str, Any]]:
    if not isinstance(call, tuple) or not 2 <= len(call) <= 4:
        raise TypeError(f"a call is (task, args[, kwargs[, options]]), not {call!r}")
    target, args, kwargs, options = (*call, {}, {})[:4]
    if not isinstance(target, (Task, str)):
        raise TypeError(f"a call names a task or a task name, not {target!r}")
    return target, args or (), kwargs or {}, options or {}


def _started(starting: asyncio.Task[Client] | None) -> Client | None:
    """The client a finished, successful start produced; else None."""
    if starting is None or not starting.done() or starting.cancelled():
        return None
    if starting.exception() is not None:
        return None
    return starting.result()


def _priority(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError(f"priority must be an integer from 0 to 255, not {value!r}")
    return value


def _moment(
    value: float | dt.datetime | str | None, timezone: str, name: str
) -> dt.datetime | None:
    """Seconds from now, or a datetime (naive ones are in the app's ``timezone``)."""
    if value is None:
        return None
    if isinstance(value, str):  # an ISO 8601 time, as a signature in a header carries it
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise TypeError(
                f"{name} must be seconds or a datetime (or an ISO 8601 string), not {value!r}"
            ) from None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=ZoneInfo(timezone))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=float(value))
    raise TypeError(f"{name} must be seconds or a datetime, not {type(value).__name__}")


def _eta(countdown: float | None, eta: dt.datetime | None, timezone: str) -> dt.datetime | None:
    if countdown is not None and eta is not None:
        raise TypeError("give countdown or eta, not both")
    if eta is not None and not isinstance(eta, (dt.datetime, str)):
        raise TypeError(f"eta must be a datetime, not {type(eta).__name__}")
    if countdown is not None and (
        isinstance(countdown, bool) or not isinstance(countdown, (int, float))
    ):
        raise TypeError(f"countdown must be seconds, not {countdown!r}")
    return _moment(countdown if countdown is not None else eta, timezone, "countdown")


def _within_reach(eta: dt.datetime | None) -> dt.datetime | None:
    """Refuse an eta the delay levels cannot wait for (about 8.5 years)."""
    if eta is not None:
        wait = (eta - dt.datetime.now(dt.timezone.utc)).total_seconds()
        if wait > delay.MAX_DELAY:
            raise ValueError(
                f"countdown/eta {wait:.0f}s from now is past the longest delay, "
                f"{delay.MAX_DELAY}s (about 8.5 years)"
            )
    return eta


def _import_object(path: str) -> object:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImproperlyConfigured(f"cannot import settings module {module_name!r}: {exc}") from exc
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImproperlyConfigured(f"module {module_name!r} has no attribute {attr!r}") from None


def _describe(source: object) -> str:
    if isinstance(source, ModuleType):
        return f"module {source.__name__}"
    if isinstance(source, type):
        return f"class {source.__qualname__}"
    return type(source).__qualname__
