"""Shared fixtures for the unit tests: no broker, no network, no global state left behind."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import structlog

from amqpworker import App
from amqpworker.app.results import ResultHub
from amqpworker.wire import SerializerRegistry, default_serializers
from amqpworker.worker.pipeline import Step
from amqpworker.worker.revocations import Revocations
from amqpworker.worker.stats import WorkerStats
from amqpworker.worker.steps import default_steps

REPO_ROOT = Path(__file__).resolve().parents[2]


def stub_steps(app: App, **options: Any) -> list[Step]:
    """The worker's steps for ``app``, with nothing behind them that a test would reach."""
    return default_steps(
        app=app,
        publisher=cast(Any, None),
        settle=cast(Any, None),
        stats=WorkerStats(),
        specs={},
        threads=None,
        concurrency=1,
        hostname="w@h",
        timezone=dt.timezone.utc,
        accepted=frozenset(),
        revocations=Revocations(),
        **options,
    )


@pytest.fixture(autouse=True)
def _no_amqpworker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read AMQPWORKER_* variables; a developer's shell must not change results."""
    for name in list(os.environ):
        if name.upper().startswith("AMQPWORKER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def app() -> Iterator[App]:
    """A fresh app; nothing in the unit tests starts its client or portal."""
    application = App("testapp")
    yield application
    application.close()


@pytest.fixture
def serializers() -> SerializerRegistry:
    return default_serializers()


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


class FakeClient:
    """Stands in for a connected Client: AsyncResult only needs its ``hub``."""

    def __init__(self, hub: ResultHub) -> None:
        self.hub = hub


@pytest.fixture
def fake_client() -> Callable[[ResultHub], FakeClient]:
    return FakeClient


@pytest.fixture
def logging_config() -> Iterator[Callable[..., contextlib.AbstractContextManager[None]]]:
    """Run ``configure_logging`` for one block and put logging back as it was afterwards.

    The restore happens inside the test's own phase, so pytest's per-phase capture
    handlers on the root logger are the ones put back.
    """
    from amqpworker.log import configure_logging

    @contextlib.contextmanager
    def configured(level: str = "INFO", fmt: str = "json") -> Iterator[None]:
        root = logging.getLogger()
        saved_handlers = root.handlers[:]
        saved_level = root.level
        chatty = {name: logging.getLogger(name).level for name in ("aio_pika", "aiormq")}
        configure_logging(level, fmt)  # type: ignore[arg-type]
        try:
            yield
        finally:
            for handler in root.handlers:
                if handler not in saved_handlers:
                    handler.close()
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
            for name, level_value in chatty.items():
                logging.getLogger(name).setLevel(level_value)
            structlog.reset_defaults()
            structlog.contextvars.clear_contextvars()

    yield configured
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
