"""Signatures and workflows (chain, group, chord), carried in message headers.

A signature is plain data: a ``dict`` in Celery's layout (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``), so it serializes as JSON and travels in a
header. Calling a workflow happens in two steps, both shared by the caller and the
worker that continues a workflow:

- :func:`freeze` gives every task in it an id and the caller's ``reply_to``, and
  returns the result handles (so ``r.parent.parent`` exists before anything ran);
- :func:`plan` turns a signature into the messages to publish now, and the chords to
  declare first. What comes later (a chain's next steps, callbacks, a chord's body)
  rides in the headers of those messages, and the worker that finishes a step plans
  and publishes the next one itself.

Partial arguments are *prepended*, as in Celery: ``add.s(4)`` after a step that
returned 2 runs ``add(2, 4)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ..exceptions import ImproperlyConfigured, NotRegistered
from ..wire import TaskMessage
from ..wire.serializers import Serializer
from .results import AsyncResult, GroupResult
from .routing import Destination

if TYPE_CHECKING:
    from .app import App
    from .client import Client
    from .publisher import Publisher
    from .task import Task

#: Options that steer the workflow; they become message fields, not publish options.
WORKFLOW_OPTIONS = ("link", "link_error", "reply_to", "group_id", "group_index", "chord")


class Signature(dict[str, Any]):
    """A task call as data: ``add.s(2, 2)``, ``signature("tasks.add", args=(2, 2))``."""

    kind: ClassVar[str | None] = None

    def __init__(
        self,
        task: Task | str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        app: App | None = None,
    ) -> None:
        from .task import Task

        name = task.name if isinstance(task, Task) else task
        super().__init__(
            task=name,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}),
            subtask_type=self.kind,
            immutable=immutable,
        )
        self._app = app or (task.app if isinstance(task, Task) else None)

    # Dict fields as attributes.

    @property
    def name(self) -> str:
        return str(self["task"])

    task = name

    @property
    def args(self) -> list[Any]:
        return self["args"]  # type: ignore[no-any-return]

    @property
    def kwargs(self) -> dict[str, Any]:
        return self["kwargs"]  # type: ignore[no-any-return]

    @property
    def options(self) -> dict[str, Any]:
        return self["options"]  # type: ignore[no-any-return]

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    @property
    def id(self) -> str | None:
        return self.options.get("task_id")

    @property
    def app(self) -> App:
        if self._app is None:
            raise ImproperlyConfigured(
                f"signature {self.name!r} has no app: make it with task.s() or pass app="
            )
        return self._app

    def bind(self, app: App) -> Signature:
        self._app = app
        return self

    # Building.

    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A copy with more (prepended) arguments, kwargs and options; ids are not copied."""
        data = _deep_copy(dict(self))
        data["options"].pop("task_id", None)
        copy = from_dict(data, self._app)
        if args and not copy.immutable:
            copy["args"] = [*args, *copy.args]
        copy.kwargs.update(kwargs or {})
        copy.options.update(options)
        return copy

    def set(self, **options: Any) -> Signature:
        """Set call options (``countdown``, ``queue``...); returns the signature itself."""
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: Signature) -> Signature:
        """Run ``callback`` with this task's result when it succeeds."""
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Signature) -> Signature:
        """Call ``errback(request, exc, traceback)`` when this task fails."""
        self.options.setdefault("link_error", []).append(errback)
        return errback

    def on_error(self, errback: Signature) -> Signature:
        """Add an errback; returns the signature itself, to chain further."""
        self.link_error(errback)
        return self

    def __or__(self, other: Signature) -> Signature:  # type: ignore[override]  # dict's | merges
        if not isinstance(other, Signature):
            return NotImplemented
        return chain(self, other, app=self._app or other._app)

    # Calling.

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here and now, with partial arguments merged."""
        call_args = self.args if self.immutable else [*args, *self.args]
        task = self.app.get_task(self.name)
        if task is None:
            raise NotRegistered(f"task {self.name!r} is not registered")
        return task(*call_args, **{**self.kwargs, **kwargs})

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Publish it; call options override those given with ``set()``."""
        return self.app.portal.call(self.aapply_async(args, kwargs, **options))

    async def adelay(self, *args: Any, **kwargs: Any) -> Any:
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """The async twin of :meth:`apply_async`; the signature itself is not changed."""
        app = self.app
        signature = from_dict(_deep_copy(dict(self)), app)
        for target in _entry_tasks(signature):
            target.kwargs.update(kwargs or {})
            target.options.update(options)
        client = await app.client()
        result = freeze(signature, app, client, await client.reply_to())
        work = plan(app, signature, list(args or ()))
        # Every later step is checked now, as the first one is: a step that cannot be
        # sent must fail here, not after the steps before it ran.
        for exchange in sorted(destinations(app, signature)):
            await client.broker.check_exchange(exchange)
        await publish(app, client, work)
        return result

    def __repr__(self) -> str:
        args = ", ".join(
            [*(repr(a) for a in self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())]
        )
        return f"{self.name}({args}){'!' if self.immutable else ''}"


class chain(Signature):
    """Steps run one after another, each getting the previous result: ``a | b | c``."""

    kind = "chain"

    def __init__(self, *tasks: Signature | Iterable[Signature], app: App | None = None) -> None:
        steps = list(tasks[0]) if len(tasks) == 1 and not isinstance(tasks[0], dict) else tasks
        flat: list[Signature] = []
        for step in steps:
            assert isinstance(step, Signature)
            flat.extend(step.tasks if isinstance(step, chain) else [step])
        # A group followed by more steps is a chord: its results go to the next step.
        merged: list[Signature] = []
        for step in flat:
            if merged and isinstance(merged[-1], group):
                merged[-1] = chord(merged[-1], step, app=app)
            elif merged and isinstance(merged[-1], chord):
                merged[-1] = merged[-1].then_body(step)
            else:
                merged.append(step)
        super().__init__("amqpworker.chain", kwargs={"tasks": merged}, app=app or _app_of(merged))

    @property
    def tasks(self) -> list[Signature]:
        return self.kwargs["tasks"]  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        return " | ".join(step.name for step in self.tasks)

    def link(self, callback: Signature) -> Signature:
        return self.tasks[-1].link(callback)

    def link_error(self, errback: Signature) -> Signature:
        for step in self.tasks:
            step.link_error(errback)
        return errback

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)


class group(Signature):
    """Tasks run in parallel; ``get()`` returns their results in order."""

    kind = "group"

    def __init__(self, *tasks: Signature | Iterable[Signature], app: App | None = None) -> None:
        members = list(tasks[0]) if len(tasks) == 1 and not isinstance(tasks[0], dict) else tasks
        signatures = [m for m in members if isinstance(m, Signature)]
        if len(signatures) != len(members):
            raise TypeError("a group holds signatures, e.g. group(add.s(i, i) for i in ...)")
        super().__init__(
            "amqpworker.group", kwargs={"tasks": signatures}, app=app or _app_of(signatures)
        )

    @property
    def tasks(self) -> list[Signature]:
        return self.kwargs["tasks"]  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        return f"group({len(self.tasks)})"

    def link_error(self, errback: Signature) -> Signature:
        for member in self.tasks:
            member.link_error(errback)
        return errback

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)


class chord(Signature):
    """A group whose results, in order, go to one body task once all are done."""

    kind = "chord"

    def __init__(
        self,
        header: Signature | Iterable[Signature],
        body: Signature | None = None,
        app: App | None = None,
    ) -> None:
        if isinstance(header, chunks):
            header = header.group()
        members = header if isinstance(header, group) else group(header, app=app)
        super().__init__(
            "amqpworker.chord",
            kwargs={"header": members, "body": body},
            app=app or members._app or (body._app if body is not None else None),
        )

    @property
    def header(self) -> group:
        return self.kwargs["header"]  # type: ignore[no-any-return]

    @property
    def body(self) -> Signature | None:
        return self.kwargs["body"]  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        body = self.body.name if self.body is not None else "?"
        return f"chord({len(self.header.tasks)}) -> {body}"

    def then_body(self, step: Signature) -> chord:
        self.kwargs["body"] = step if self.body is None else chain(self.body, step)
        return self

    def link_error(self, errback: Signature) -> Signature:
        if self.body is None:
            raise TypeError("give the chord a body before linking an errback")
        return self.body.link_error(errback)

    def __call__(self, body: Signature | None = None, **options: Any) -> Any:
        """``chord(header)(body)`` publishes the chord and returns the body's result."""
        if body is not None:
            self.kwargs["body"] = body
            self._app = self._app or body._app
        return self.apply_async(**options)


class chunks(Signature):
    """``task.chunks(items, n)``: the items in parts of ``n``, each part one starmap task."""

    kind = "chunks"

    def __init__(self, task: Signature | Task, it: Iterable[Iterable[Any]], n: int) -> None:
        from .task import Task

        if n < 1:
            raise ValueError("chunks need a size of at least 1")
        base = task.s() if isinstance(task, Task) else task
        items = [list(item) for item in it]
        super().__init__(
            "amqpworker.chunks", kwargs={"task": base, "it": items, "n": n}, app=base._app
        )

    def group(self) -> group:
        task, items, n = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
        base = task if isinstance(task, Signature) else from_dict(task, self._app)

        owner = self.app.get_task(base.name)
        if owner is None:
            raise NotRegistered(f"task {base.name!r} is not registered")
        return group(
            [owner.starmap(items[i : i + n]) for i in range(0, len(items), n)], app=self._app
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.group().apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        return self.group().apply_async(args, kwargs, **options)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        return await self.group().aapply_async(args, kwargs, **options)


def signature(
    name: str | Mapping[str, Any],
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    immutable: bool = False,
    app: App | None = None,
    **options: Any,
) -> Signature:
    """A signature by task name (``app=`` binds it), or from its dict form."""
    if isinstance(name, Mapping):
        return from_dict(name, app)
    return Signature(name, args, kwargs, options, immutable=immutable, app=app)


def from_dict(data: Mapping[str, Any], app: App | None = None) -> Signature:
    """Rebuild a signature (of the right kind, nested ones too) from its dict form."""
    kind = data.get("subtask_type")
    kwargs = data.get("kwargs") or {}
    options = dict(data.get("options") or {})
    for key in ("link", "link_error"):
        if key in options:
            options[key] = [from_dict(item, app) for item in options[key]]
    built: Signature
    if kind == "chain":
        built = chain(*(from_dict(step, app) for step in kwargs["tasks"]), app=app)
    elif kind == "group":
        built = group([from_dict(member, app) for member in kwargs["tasks"]], app=app)
    elif kind == "chord":
        body = kwargs.get("body")
        built = chord(
            from_dict(kwargs["header"], app),
            from_dict(body, app) if body is not None else None,
            app=app,
        )
    elif kind == "chunks":
        task = from_dict(kwargs["task"], app)
        built = chunks(task, kwargs["it"], kwargs["n"])
    elif kind is None:
        return Signature(
            data["task"],
            data.get("args"),
            kwargs,
            options,
            immutable=bool(data.get("immutable")),
            app=app,
        )
    else:
        raise ValueError(f"unknown signature type {kind!r}")
    built.options.update(options)
    return built


# Freezing: ids and result handles before anything is published.


def freeze(
    sig: Signature,
    app: App,
    client: Client | None,
    reply_to: str | None,
    parent: AsyncResult | None = None,
) -> Any:
    """Give every task in ``sig`` an id and ``reply_to``; return its result handle."""
    if isinstance(sig, chain):
        result: Any = parent
        for step in sig.tasks:
            result = freeze(step, app, client, reply_to, parent=result)
        return result
    if isinstance(sig, group):
        group_id = sig.options.setdefault("group_id", str(uuid.uuid4()))
        results = []
        for index, member in enumerate(sig.tasks):
            member.options.update(group_id=group_id, group_index=index)
            results.append(freeze(member, app, client, reply_to, parent=parent))
        return GroupResult(group_id, results, app=app, parent=parent)
    if isinstance(sig, chord):
        header = freeze(sig.header, app, client, reply_to, parent=parent)
        if sig.body is None:
            raise TypeError("a chord needs a body: chord(header)(body) or chord(header, body)")
        return freeze(sig.body, app, client, reply_to, parent=header)
    task_id = sig.options.setdefault("task_id", str(uuid.uuid4()))
    if reply_to is not None:
        sig.options.setdefault("reply_to", reply_to)
    return AsyncResult(task_id, app, task_name=sig.name, client=client, parent=parent)


# Planning: what to publish now.


@dataclass
class Plan:
    """Messages to publish, and the chords to declare before them."""

    messages: list[tuple[TaskMessage, Destination, Serializer]] = field(default_factory=list)
    chords: list[str] = field(default_factory=list)

    def extend(self, other: Plan) -> None:
        self.messages.extend(other.messages)
        self.chords.extend(other.chords)


def plan(
    app: App,
    sig: Signature,
    prepend: Sequence[Any] = (),
    then: Sequence[Mapping[str, Any]] = (),
) -> Plan:
    """The messages that start ``sig`` (already frozen); ``then`` are steps to follow it."""
    result = Plan()
    if isinstance(sig, chain):
        first, *rest = sig.tasks
        result.extend(plan(app, first, prepend, [*rest, *then]))
    elif isinstance(sig, group):
        if then:
            raise TypeError("a group cannot be followed by more steps; use a chord")
        for member in sig.tasks:
            result.extend(plan(app, member, prepend))
    elif isinstance(sig, chord):
        header, body = sig.header, sig.body
        assert body is not None
        chord_id = header.options["group_id"]
        size = len(header.tasks)
        if size == 0:
            return plan(app, body, [[]], then)
        result.chords.append(chord_id)
        info = {"id": chord_id, "size": size, "body": body, "then": list(then)}
        for index, member in enumerate(header.tasks):
            member.options["chord"] = {**info, "index": index}
            result.extend(plan(app, member, prepend))
    else:
        result.messages.append(_task_message(app, sig, prepend, then))
    return result


def _task_message(
    app: App, sig: Signature, prepend: Sequence[Any], then: Sequence[Mapping[str, Any]]
) -> tuple[TaskMessage, Destination, Serializer]:
    options = dict(sig.options)
    workflow = {key: options.pop(key, None) for key in WORKFLOW_OPTIONS}
    args = sig.args if sig.immutable else [*prepend, *sig.args]
    message, destination, serializer = app.prepare(
        sig.name, args, sig.kwargs, app.get_task(sig.name), options
    )
    message = replace(
        message,
        reply_to=None if message.ignore_result else workflow["reply_to"],
        group_id=workflow["group_id"],
        group_index=workflow["group_index"],
        callbacks=_as_dicts(workflow["link"]),
        errbacks=_as_dicts(workflow["link_error"]),
        chain=_as_dicts(then),
        chord=_deep_copy(workflow["chord"]) if workflow["chord"] else None,
    )
    return message, destination, serializer


def destinations(app: App, sig: Mapping[str, Any]) -> set[str]:
    """Prepare every task of a workflow, callbacks too, as it will be sent; their exchanges.

    Raises what sending it would (an unknown option, an eta out of reach), without I/O.
    """
    if isinstance(sig, (chain, group)):
        return {ex for step in sig.tasks for ex in destinations(app, step)}
    if isinstance(sig, chord):
        body = [sig.body] if sig.body is not None else []
        return {ex for part in [sig.header, *body] for ex in destinations(app, part)}
    if isinstance(sig, chunks):
        return destinations(app, sig.kwargs["task"])
    if not isinstance(sig, Signature):
        return destinations(app, from_dict(sig, app))
    exchanges = set()
    for key in ("link", "link_error"):
        for callback in _as_list(sig.options.get(key)):
            exchanges |= destinations(app, callback)
    _, destination, _ = _task_message(app, sig, (), ())
    if destination.exchange:
        exchanges.add(destination.exchange)
    return exchanges


def _as_list(value: Any) -> list[Any]:
    if not value:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


async def publish(app: App, publisher: Publisher, work: Plan) -> None:
    """Declare the plan's chords, then publish its messages in one confirmed batch."""
    for chord_id in work.chords:
        await publisher.declare_chord(chord_id)
    if work.messages:
        await publisher.publish_tasks(work.messages)


def result_ids(data: Mapping[str, Any]) -> list[str]:
    """Ids of every result a (frozen) signature will report: for failing what is left."""
    kind = data.get("subtask_type")
    kwargs = data.get("kwargs") or {}
    if kind in ("chain", "group"):
        return [i for step in kwargs.get("tasks", []) for i in result_ids(step)]
    if kind == "chord":
        body = kwargs.get("body")
        return result_ids(kwargs["header"]) + (result_ids(body) if body else [])
    task_id = (data.get("options") or {}).get("task_id")
    return [task_id] if task_id else []


def _as_dicts(
    items: Iterable[Mapping[str, Any]] | Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    if not items:
        return []
    if isinstance(items, Mapping):
        items = [items]
    return [_deep_copy(dict(item)) for item in items]


def _deep_copy(value: Any) -> Any:
    """Plain JSON-shaped copy: signatures become dicts, tuples become lists."""
    if isinstance(value, Mapping):
        return {str(k): _deep_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_copy(v) for v in value]
    return value


def _entry_tasks(sig: Signature) -> list[Signature]:
    """The tasks a call's kwargs and options apply to: the first step, each member."""
    if isinstance(sig, chain):
        return _entry_tasks(sig.tasks[0])
    if isinstance(sig, group):
        return [task for member in sig.tasks for task in _entry_tasks(member)]
    if isinstance(sig, chord):
        return _entry_tasks(sig.header)
    return [sig]


def _app_of(signatures: Iterable[Signature]) -> App | None:
    return next((s._app for s in signatures if s._app is not None), None)
