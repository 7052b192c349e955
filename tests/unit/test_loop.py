"""Which event loop amqpworker runs its own loops on."""

from __future__ import annotations

import asyncio
import sys

import pytest

from amqpworker import App, ImproperlyConfigured
from amqpworker.loop import loop_factory, resolved, run


def test_asyncio_is_the_standard_loop() -> None:
    assert loop_factory("asyncio") is asyncio.new_event_loop
    assert resolved("asyncio") == "asyncio"


def test_auto_is_uvloop_where_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory("auto") is uvloop.new_event_loop
    assert run(_loop_module(), "auto").startswith("uvloop")
    assert run(_loop_module(), "asyncio").startswith("asyncio")


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert loop_factory("auto") is asyncio.new_event_loop
    with pytest.raises(ImproperlyConfigured, match=r"event_loop is 'uvloop'.*not installed"):
        loop_factory("uvloop")


def test_the_setting_names_the_choices() -> None:
    with pytest.raises(ImproperlyConfigured, match="event_loop"):
        App("t", broker_url="amqp://localhost//", event_loop="trio")


def test_the_sync_api_runs_on_the_configured_loop() -> None:
    app = App("t", broker_url="amqp://localhost//", event_loop="asyncio")
    try:
        assert app.portal.call(_loop_module()).startswith("asyncio")
    finally:
        app.close()


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__
