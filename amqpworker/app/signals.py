"""The app's signals: ``app.on_after_configure`` and ``app.on_after_finalize``.

As in Celery's tutorials, a handler connects with ``.connect`` used as a decorator
(``@app.on_after_configure.connect``, with or without arguments) and is called with the
app as ``sender``. The app sends each signal once, when a program that runs the app
(``amqpworker beat``, ``amqpworker serve``) has loaded it. An exception in a handler is
not swallowed: the program does not start half-configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])


class Signal:
    """Handlers to call, in the order they connected, each at most once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.receivers: list[Callable[..., Any]] = []

    @overload
    def connect(self, receiver: F, /, **options: Any) -> F: ...

    @overload
    def connect(self, receiver: None = None, /, **options: Any) -> Callable[[F], F]: ...

    def connect(self, receiver: F | None = None, /, **options: Any) -> F | Callable[[F], F]:
        """Connect ``receiver``; ``@signal.connect`` and ``@signal.connect(weak=False)``.

        Celery's ``weak`` and ``dispatch_uid`` are accepted: receivers are held
        strongly, and one connected twice (or with a ``dispatch_uid`` seen before) is
        called once.
        """
        unknown = set(options) - {"weak", "dispatch_uid", "sender"}
        if unknown:
            raise TypeError(f"{self.name}.connect: unknown option(s) {sorted(unknown)}")

        def add(function: F) -> F:
            if not callable(function):
                raise TypeError(f"{self.name}.connect needs a callable, not {function!r}")
            if function not in self.receivers:
                self.receivers.append(function)
            return function

        return add(receiver) if receiver is not None else add

    def disconnect(self, receiver: Callable[..., Any]) -> None:
        if receiver in self.receivers:
            self.receivers.remove(receiver)

    def send(self, sender: Any, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Call every receiver with ``sender`` and ``named``; returns their results."""
        return [
            (receiver, receiver(sender=sender, signal=self, **named)) for receiver in self.receivers
        ]

    def __repr__(self) -> str:
        return f"<Signal {self.name}: {len(self.receivers)} receiver(s)>"
