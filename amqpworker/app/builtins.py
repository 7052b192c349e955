"""Tasks every app has: the workers of ``task.map``, ``task.starmap`` and ``chunks``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import App

MAP = "amqpworker.map"
STARMAP = "amqpworker.starmap"


def register_builtins(app: App) -> None:
    from .canvas import from_dict
    from .task import Task

    def run_map(task: Mapping[str, Any], it: Iterable[Any]) -> list[Any]:
        signature = from_dict(task, app)
        return [signature(item) for item in it]

    def run_starmap(task: Mapping[str, Any], it: Iterable[Iterable[Any]]) -> list[Any]:
        signature = from_dict(task, app)
        return [signature(*item) for item in it]

    for name, function in ((MAP, run_map), (STARMAP, run_starmap)):
        app.builtin_tasks[name] = Task(app, function, name=name)
