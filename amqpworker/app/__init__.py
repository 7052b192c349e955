"""App, tasks, routing and results: what a user's code talks to."""

from .app import App
from .results import AsyncResult
from .task import Request, Task, current_request

__all__ = ["App", "AsyncResult", "Request", "Task", "current_request"]
