"""amqpworker: a RabbitMQ-native task queue with Celery's API."""

from . import exceptions, states
from .app import App, AsyncResult, Request, Task
from .app.canvas import Signature, chain, chord, chunks, group, signature
from .app.results import GroupResult
from .exceptions import (
    AmqpWorkerError,
    ImproperlyConfigured,
    PublishError,
    PublishOutcomeUnknown,
    ResultLost,
    TaskError,
    TimeoutError,
    UnroutableError,
)
from .wire import Serializer

__version__ = "0.1.0.dev0"

__all__ = [  # noqa: RUF022 - grouped by what they are, as in httpx
    # The application
    "App",
    "AsyncResult",
    "Request",
    "Serializer",
    "Task",
    # Workflows
    "GroupResult",
    "Signature",
    "chain",
    "chord",
    "chunks",
    "group",
    "signature",
    # Errors
    "AmqpWorkerError",
    "ImproperlyConfigured",
    "PublishError",
    "PublishOutcomeUnknown",
    "ResultLost",
    "TaskError",
    "TimeoutError",
    "UnroutableError",
    # Modules
    "exceptions",
    "states",
    "__version__",
]
