"""Structured logging: structlog over the standard library, console or JSON.

Inside a task the worker binds ``task_id`` and ``task_name`` as context variables, so
every line logged through :func:`get_task_logger` (or any structlog logger) carries
them. Broker passwords are scrubbed from every rendered line, wherever they come from.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, Literal

import structlog

#: The password runs to the last "@" of the URL (a password may hold "@" or "/"); a URL
#: ends at white space, ";" or "," (how several broker URLs are written).
_PASSWORD_IN_URL = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s;,]*:)[^\s;,]*@", re.IGNORECASE)


def hide_password(text: str) -> str:
    """Replace the password of every URL in ``text`` (amqp://, redis://...) with ``****``."""
    return _PASSWORD_IN_URL.sub(r"\1****@", text)


def _scrubbed(renderer: Any) -> Any:
    """Scrub the finished line, so nested values and exception texts are covered too."""

    def render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        return hide_password(renderer(logger, method, event_dict))

    return render


def configure_logging(
    level: str | int = "INFO", fmt: Literal["console", "json"] = "console"
) -> None:
    """Route structlog and stdlib logging (aio-pika's too) through one renderer on stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _scrubbed(renderer),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # aio-pika and aiormq are chatty at INFO about reconnect internals.
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))


def get_logger(name: str) -> Any:
    """A structlog logger; ``Any`` because structlog's proxy is untyped until configured."""
    return structlog.get_logger(name)


def get_task_logger(name: str) -> Any:
    """The logger to use inside tasks: lines carry the running task's id and name."""
    return structlog.get_logger(name)


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Bind context variables for the duration of a block (a task run, a delivery)."""
    tokens = bind(**values)
    try:
        yield
    finally:
        unbind(tokens)


#: :func:`bound` without a context manager, for the worker's hot path: ``tokens =
#: bind(...)``, then ``unbind(tokens)`` in a ``finally``.
bind = structlog.contextvars.bind_contextvars


def unbind(tokens: Mapping[str, Any]) -> None:
    structlog.contextvars.reset_contextvars(**tokens)
