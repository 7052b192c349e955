"""A broker that cannot be reached is explained in words: which URL, and why."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from amqpworker.broker import Broker
from amqpworker.exceptions import BrokerUnavailable


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def _with(url: str, *, port: int | None = None, path: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc if port is None else parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc, path=parts.path if path is None else path))


async def _connect_error(url: str) -> str:
    broker = Broker([url], connect_timeout=1)
    with pytest.raises(BrokerUnavailable) as caught:
        await broker.connect()
    return str(caught.value)


async def test_a_port_that_never_answers_says_so(broker_url: str, silent_port: int) -> None:
    error = await _connect_error(_with(broker_url, port=silent_port))
    assert f":{silent_port}/" in error
    assert "no AMQP handshake within 1s" in error


async def test_an_unknown_vhost_is_named(broker_url: str) -> None:
    error = await _connect_error(_with(broker_url, path="/no-such-vhost-here"))
    assert "refused to open virtual host 'no-such-vhost-here'" in error
    assert "object at 0x" not in error


async def test_a_closed_port_says_connection_refused(broker_url: str) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = await _connect_error(_with(broker_url, port=port))
    assert "connection refused" in error
