"""Watching a fleet: ``amqpworker events``, a JSON-lines dump or a live terminal view.

It reads the events workers and callers publish (``wire/events.py``); it needs the
broker, never a worker.
"""

from .state import MonitorState
from .watch import watch

__all__ = ["MonitorState", "watch"]
