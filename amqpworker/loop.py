"""The event loop amqpworker runs its own loops on: the worker's, the CLI's, the sync API's.

uvloop (libuv) runs the same asyncio code with less overhead per I/O event and per
callback, which a worker of short tasks pays for every message; it is used wherever it
is installed unless the setting ``event_loop`` says ``asyncio``. A loop the user runs
(amqpworker imported into an asyncio service) is never replaced.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from .exceptions import ImproperlyConfigured

T = TypeVar("T")
LoopKind = Literal["auto", "uvloop", "asyncio"]


def loop_factory(kind: LoopKind = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new loop of ``kind``; "auto" is uvloop where it is installed."""
    if kind == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise ImproperlyConfigured(
                "event_loop is 'uvloop', but uvloop is not installed (pip install uvloop)"
            ) from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def resolved(kind: LoopKind) -> str:
    """The loop ``kind`` means on this machine: "uvloop" or "asyncio"."""
    return "asyncio" if loop_factory(kind) is asyncio.new_event_loop else "uvloop"


def run(coroutine: Coroutine[Any, Any, T], kind: LoopKind = "auto") -> T:
    """``asyncio.run`` on a loop of ``kind``."""
    factory = loop_factory(kind)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coroutine)
    if factory is not asyncio.new_event_loop:  # pragma: no cover - Python 3.10
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(coroutine)  # pragma: no cover - Python 3.10
