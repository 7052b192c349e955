"""The worker's HTTP port: Prometheus metrics and health checks (``serve --metrics-port``).

Served from a thread of its own (the standard library's WSGI server, with
prometheus_client's WSGI app for ``/metrics``), not on the worker's event loop: a probe
must be answered when the loop is stuck (that is what the liveness check reports), and
a scrape must not take turns from the deliveries.

Paths: ``/metrics``; ``/livez`` (liveness: fails only when the loop stops turning);
``/readyz`` and its alias ``/health`` (readiness: connected, consuming, not stopping).
Health checks answer 200 or 503 with a small JSON body saying why.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from ..exceptions import ImproperlyConfigured
from ..log import get_logger
from .health import Health, Verdict
from .metrics import WorkerMetrics

if TYPE_CHECKING:
    from .worker import Worker

log = get_logger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class MonitoringServer:
    """Binds at :meth:`start` (so a taken port fails the start-up), serves until closed."""

    def __init__(self, metrics: WorkerMetrics, health: Health, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._health = health
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen on ``host:port`` and serve from a daemon thread.

        Raises:
            ImproperlyConfigured: the port is taken, not ours to use, or the host unknown.
        """
        self._server = _bind(self.host, self.port, self._app)
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="amqpworker-metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        check: Callable[[], Verdict] | None = {
            "/livez": self._health.liveness,
            "/readyz": self._health.readiness,
            "/health": self._health.readiness,
        }.get(path)
        if check is None:
            return _reply(
                start_response, "404 Not Found", {"error": f"no such path: {path}", "paths": PATHS}
            )
        verdict = check()
        status = "200 OK" if verdict.ok else "503 Service Unavailable"
        return _reply(start_response, status, verdict.body)


PATHS = ["/metrics", "/livez", "/readyz", "/health"]


def _reply(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [data]


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow scrape never holds a probe back."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No access log: probes come every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _bind(host: str, port: int, app: Callable[..., Iterable[bytes]]) -> WSGIServer:
    where = f"{host}:{port}"
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
            0
        ][0]
    except socket.gaierror as exc:
        raise ImproperlyConfigured(
            f"cannot serve metrics on {where}: unknown host {host!r} ({exc.strerror})"
            " (worker_metrics_host / --metrics-host)"
        ) from None

    class Server(_Server):
        address_family = family

    try:
        return make_server(host, port, app, Server, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = "the port is already in use by another process"
        elif exc.errno == errno.EACCES:
            why = "permission denied (ports below 1024 need privileges)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = "that address is not one of this host's"
        else:
            why = exc.strerror or str(exc)
        raise ImproperlyConfigured(
            f"cannot serve metrics on {where}: {why} (worker_metrics_port / --metrics-port)"
        ) from None


class Monitoring:
    """Health, metrics and the port serving them, for one worker."""

    def __init__(self, worker: Worker, host: str, port: int, loop_timeout: float) -> None:
        self.health = Health(worker.hostname, worker.look, loop_timeout)
        self.metrics = WorkerMetrics(worker, self.health)
        self.server = MonitoringServer(self.metrics, self.health, host, port)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the port (raising :class:`ImproperlyConfigured`), then start looking."""
        self.server.start()
        self.health.start(loop)
        log.info("serving metrics and health checks", url=self.server.url, paths=PATHS)

    def close(self) -> None:
        self.health.stop()
        self.server.close()
