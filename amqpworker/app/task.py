"""Tasks: a function plus the options that say how it is called, routed and run.

A task is an instance of :class:`Task` (or of a user's subclass passed as ``base=``);
no classes are made at run time. The request being executed is carried by a context
variable that only the worker sets, so ``self.request`` works in threads and coroutines
alike, and reads as an empty eager request outside a worker.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import operator
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import rates
from ..exceptions import ImproperlyConfigured, MaxRetriesExceededError, Retry
from ..wire import TaskMessage
from ..wire.results import PROGRESS, ResultMessage, now_iso

if TYPE_CHECKING:
    from .app import App
    from .canvas import Signature, chunks
    from .results import AsyncResult

#: Options a task accepts in ``@app.task(...)``; ``None`` means "use the app's setting".
TASK_OPTIONS = (
    "max_retries",
    "default_retry_delay",
    "queue",
    "exchange",
    "routing_key",
    "priority",
    "acks_late",
    "reject_on_worker_lost",
    "time_limit",
    "soft_time_limit",
    "rate_limit",
    "ignore_result",
    "serializer",
    "track_started",
    "autoretry_for",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
)


#: Options of Celery's that amqpworker does not act on yet: giving one is an error.
NOT_YET_OPTIONS: frozenset[str] = frozenset()


@dataclass
class Request:
    """What a running task knows about the message that started it."""

    id: str | None = None
    task: str | None = None
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 0
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    eta: str | None = None
    expires: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    delivery_info: Mapping[str, Any] = field(default_factory=dict)
    hostname: str | None = None
    is_eager: bool = True
    #: Set by ``retry()`` when it found no retries left; the worker dead-letters then.
    retries_exhausted: bool = False
    publish_state: Callable[[ResultMessage], None] | None = field(default=None, repr=False)

    @classmethod
    def from_message(cls, message: TaskMessage, **worker: Any) -> Request:
        """The request a worker runs ``message`` under; ``worker`` adds what it knows.

        Every message field with a Request field of the same name is copied, so a new
        header a task should see needs only that field here.
        """
        # Filled in directly: ``__init__`` with twenty keywords costs more than the
        # task a worker most often runs. Every field is set, none shares a default.
        request = cls.__new__(cls)
        values = request.__dict__
        values.update(_PLAIN_DEFAULTS)
        values["delivery_info"] = {}
        values.update(zip(_SHARED_FIELDS, _shared_values(message), strict=True))
        values["group"] = message.group_id
        values["correlation_id"] = message.id
        values["eta"] = message.eta.isoformat() if message.eta else None
        values["expires"] = message.expires.isoformat() if message.expires else None
        values["is_eager"] = False
        values.update(worker)
        return request


#: Fields copied by name from a TaskMessage (eta and expires are ISO strings here).
_SHARED_FIELDS = tuple(
    sorted(
        {f.name for f in dataclasses.fields(Request)}
        & {f.name for f in dataclasses.fields(TaskMessage)} - {"eta", "expires"}
    )
)

_shared_values = operator.attrgetter(*_SHARED_FIELDS)

#: Request's fields with a plain (immutable) default, for :meth:`Request.from_message`.
_PLAIN_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(Request) if f.default is not dataclasses.MISSING
}

current_request: ContextVar[Request | None] = ContextVar("amqpworker_request", default=None)


def check_time_limit(value: Any, name: str) -> None:
    """A time limit is None or positive seconds; ValueError naming it otherwise."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise ValueError(f"{name!r} must be positive seconds, not {value!r}")


class Task:
    """A registered task. Subclass it and pass ``base=`` to add hooks or defaults."""

    name: str
    max_retries: int | None = None
    default_retry_delay: float | None = None
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    priority: int | None = None
    acks_late: bool | None = None
    #: None: the ``task_reject_on_worker_lost`` setting (``--pool process``).
    reject_on_worker_lost: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    #: Celery's rate: ``"10/s"``, ``"200/m"``, ``"1000/h"``, a number per second; per worker.
    rate_limit: str | float | None = None
    ignore_result: bool | None = None
    serializer: str | None = None
    track_started: bool | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True

    def __init__(
        self,
        app: App,
        fun: Callable[..., Any],
        *,
        name: str,
        bind: bool = False,
        **options: Any,
    ) -> None:
        unknown = set(options) - set(TASK_OPTIONS)
        if unknown:
            raise ImproperlyConfigured(
                f"task {name!r}: unknown option(s) {', '.join(sorted(unknown))}"
            )
        for option in NOT_YET_OPTIONS.intersection(options):
            if options[option] is not None:
                raise ImproperlyConfigured(
                    f"task {name!r}: option {option!r} is not enforced yet; leave it unset"
                )
        self.app = app
        self.fun = fun
        self.name = name
        self.bind = bind
        self.is_coroutine = inspect.iscoroutinefunction(fun)
        for option, value in options.items():
            setattr(self, option, value)
        try:
            rates.check(self.rate_limit)  # the option, or a base class's attribute
        except ValueError as exc:
            raise ImproperlyConfigured(f"task {name!r}: option 'rate_limit': {exc}") from None
        try:
            for limit in ("time_limit", "soft_time_limit"):
                check_time_limit(getattr(self, limit), limit)
        except ValueError as exc:
            raise ImproperlyConfigured(f"task {name!r}: option {exc}") from None
        self.__doc__ = fun.__doc__
        self.__wrapped__ = fun
        self.__module__ = fun.__module__

    def __repr__(self) -> str:
        return f"<@task {self.name} of {self.app.main}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here and now, in this process (no broker involved)."""
        return self.run(*args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if self.bind:
            return self.fun(self, *args, **kwargs)
        return self.fun(*args, **kwargs)

    @property
    def request(self) -> Request:
        return current_request.get() or Request()

    # Effective options: the task's own value, else the app's setting.

    @property
    def effective_ignore_result(self) -> bool:
        return bool(self._or_setting(self.ignore_result, "task_ignore_result"))

    @property
    def effective_acks_late(self) -> bool:
        return bool(self._or_setting(self.acks_late, "task_acks_late"))

    @property
    def effective_track_started(self) -> bool:
        return bool(self._or_setting(self.track_started, "task_track_started"))

    @property
    def effective_rate_limit(self) -> str | float | None:
        """The task's own rate limit, else ``task_default_rate_limit``."""
        return self._or_setting(self.rate_limit, "task_default_rate_limit")  # type: ignore[no-any-return]

    def _or_setting(self, value: Any, setting: str) -> Any:
        return getattr(self.app.conf, setting) if value is None else value

    # Calling through the broker.

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Shortcut for ``apply_async(args, kwargs)``."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Publish a call of this task; returns at once, once the broker confirmed it."""
        if "link" in options or "link_error" in options:
            return self._linked(args, kwargs, options).apply_async()  # type: ignore[no-any-return]
        return self.app.send_task(self.name, args, kwargs, task=self, **options)

    def _linked(
        self,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> Signature:
        """A call with callbacks goes through a signature, which carries them."""
        signature = self.signature(args, kwargs, **options)
        for key in ("link", "link_error"):
            value = signature.options.get(key)
            if value is not None and not isinstance(value, list):
                signature.options[key] = [value]
        return signature

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        if "link" in options or "link_error" in options:
            return await self._linked(args, kwargs, options).aapply_async()  # type: ignore[no-any-return]
        return await self.app.asend_task(self.name, args, kwargs, task=self, **options)

    # Signatures (see amqpworker.app.canvas).

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A partial call: ``add.s(2)`` (more arguments can be given when it is called)."""
        from .canvas import Signature

        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable call: a parent's result is not added to its arguments."""
        from .canvas import Signature

        return Signature(self, args, kwargs, immutable=True)

    def signature(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        immutable: bool = False,
        **options: Any,
    ) -> Signature:
        from .canvas import Signature

        return Signature(self, args, kwargs, options, immutable=immutable)

    subtask = signature

    def map(self, it: Iterable[Any]) -> Signature:
        """One task that calls this one for each item, in a single worker."""
        from .builtins import MAP
        from .canvas import Signature

        return Signature(MAP, [self.s(), list(it)], app=self.app)

    def starmap(self, it: Iterable[Iterable[Any]]) -> Signature:
        """Like :meth:`map`, with each item unpacked as arguments."""
        from .builtins import STARMAP
        from .canvas import Signature

        return Signature(STARMAP, [self.s(), [list(item) for item in it]], app=self.app)

    def chunks(self, it: Iterable[Iterable[Any]], n: int) -> chunks:
        """Split ``it`` into parts of ``n`` items, each part a starmap task in a group."""
        from .canvas import chunks

        return chunks(self, it, n)

    # Inside a running task.

    def update_state(
        self, task_id: str | None = None, state: str = PROGRESS, meta: Any = None
    ) -> None:
        """Tell the caller about progress; ``meta`` becomes ``result.info``."""
        request = self.request
        if request.publish_state is None or (task_id and task_id != request.id):
            return
        request.publish_state(
            ResultMessage(
                task_id=request.id or "",
                status=state,
                result=meta,
                date_done=now_iso(),
                task_name=self.name,
            )
        )

    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: dt.datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
    ) -> Retry:
        """Ask the worker to run this task again later: ``raise self.retry(exc=exc)``.

        Without ``countdown`` or ``eta`` the delay is ``default_retry_delay``, or, with
        ``retry_backoff``, exponential (``retry_backoff * 2**retries`` seconds, at most
        ``retry_backoff_max``, randomised down by ``retry_jitter``).

        Raises:
            Retry: always, unless ``throw=False`` (then it is returned).
            MaxRetriesExceededError: no retries left and no ``exc`` given; with ``exc``,
                that exception is raised instead.
        """
        request = self.request
        limit = self._or_setting(
            max_retries if max_retries is not None else self.max_retries, "task_max_retries"
        )
        if limit is not None and request.retries >= limit:
            request.retries_exhausted = True
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"{self.name}[{request.id}] asked for retry {request.retries + 1} "
                f"but max_retries is {limit}"
            )
        when: float | dt.datetime
        if eta is not None:
            when = eta
        elif countdown is not None:
            when = countdown
        elif self.retry_backoff:
            when = self.backoff(request.retries)
        else:
            when = self._or_setting(self.default_retry_delay, "task_default_retry_delay")
        retry = Retry(exc=exc, when=when, args=args, kwargs=kwargs)
        if throw:
            raise retry
        return retry

    def backoff(self, retries: int) -> float:
        """Seconds before retry number ``retries + 1`` under ``retry_backoff``."""
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        countdown = min(self.retry_backoff_max, factor * (2**retries))
        if self.retry_jitter:
            countdown = random.uniform(0, countdown)
        return float(countdown)

    # Hooks a base class may override; they run in the worker.

    def on_success(
        self, retval: Any, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> None:
        """Called after the task returned."""

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        einfo: str,
    ) -> None:
        """Called after the task raised; ``einfo`` is the formatted traceback."""

    def on_retry(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        einfo: str,
    ) -> None:
        """Called when the task is to be retried."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        einfo: str | None,
    ) -> None:
        """Called after every run, whatever its outcome."""


def default_task_name(fun: Callable[..., Any], main: str | None) -> str:
    """``module.function``, or ``main.function`` for code run as ``__main__``."""
    module = fun.__module__
    if module == "__main__" and main:
        module = main
    return f"{module}.{fun.__name__}"
