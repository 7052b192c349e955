"""A private, throw-away RabbitMQ node: its own ports, data directory and Erlang cookie.

Tests that stop or restart the broker, and benchmarks that leave 100,000 messages
behind, must not do it to a broker others share. :class:`RabbitNode` starts
``rabbitmq-server`` from the local installation on free ports with everything in one
temporary directory, and :meth:`RabbitNode.destroy` removes it all again::

    with RabbitNode() as node:        # start() ... destroy()
        connect(node.url)
        node.restart()                # same data: durable queues, persistent messages stay

In a test, make a fixture with :func:`node_fixture` (it fails, never skips, when no node
can be started)::

    rabbit = node_fixture()

    def test_something(rabbit: RabbitNode) -> None: ...

As root the node runs as the ``rabbitmq`` user (the data directory is chowned to it);
as anyone else it runs as that user. It never reads the system's ``/etc/rabbitmq``
files: the config, the env file and the enabled-plugins file (none: no management
plugin, a faster start) are its own. Its cookie is its own too, so a ``rabbitmqctl`` of
this helper cannot reach another node by mistake.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: Where the real scripts are. Debian's /usr/sbin/rabbitmq-* are a wrapper that re-runs
#: the script through ``su`` and, for the server, sends its output to the system node's
#: /var/log/rabbitmq/startup_log: not for a private node.
SBIN_CANDIDATES = ("/usr/lib/rabbitmq/bin", "/usr/local/sbin", "/opt/rabbitmq/sbin")
DEBIAN_WRAPPER = "rabbitmq-script-wrapper"
SERVICE_USER = "rabbitmq"

HOW_TO_GET_RABBITMQ = """cannot start a private RabbitMQ node: {reason}
These tests start their own rabbitmq-server (they restart it, so they cannot use a shared
broker). Install one (`sudo apt-get install -y rabbitmq-server`, or a generic-unix build),
or point AMQPWORKER_RABBITMQ_SBIN at the directory holding rabbitmq-server and rabbitmqctl.
"""


class RabbitNodeError(RuntimeError):
    """The node could not be started or stopped; the message says why."""


def free_port() -> int:
    """A TCP port nobody listens on right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_sbin() -> Path:
    """The directory with the real ``rabbitmq-server`` and ``rabbitmqctl`` scripts.

    Raises:
        RabbitNodeError: none is installed.
    """
    explicit = os.environ.get("AMQPWORKER_RABBITMQ_SBIN")
    candidates = [explicit] if explicit else list(SBIN_CANDIDATES)
    on_path = shutil.which("rabbitmq-server")
    if on_path and not explicit:
        candidates.append(str(Path(on_path).parent))
    for folder in candidates:
        server = Path(folder) / "rabbitmq-server"
        ctl = Path(folder) / "rabbitmqctl"
        if not (server.exists() and ctl.exists()):
            continue
        if Path(os.path.realpath(server)).name == DEBIAN_WRAPPER:
            continue  # /usr/sbin on Debian: the real one is in /usr/lib/rabbitmq/bin
        return Path(folder)
    raise RabbitNodeError(
        HOW_TO_GET_RABBITMQ.format(
            reason=f"no rabbitmq-server/rabbitmqctl pair in {', '.join(map(str, candidates))}"
        )
    )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


class RabbitNode:
    """One private RabbitMQ node; see the module docstring."""

    def __init__(
        self,
        prefix: str = "aw-test",
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        config: str = "",
        advanced: str = "",
    ) -> None:
        """Prepare (but do not start) a node.

        Args:
            prefix: the node is ``<prefix>-<hex>@localhost``.
            start_timeout: bound on :meth:`start`.
            stop_timeout: bound on the graceful part of :meth:`stop`.
            config: extra lines for its ``rabbitmq.conf``.
            advanced: its ``advanced.config`` (Erlang terms), for settings
                ``rabbitmq.conf`` cannot set, such as ``channel_tick_interval``.
        """
        self.sbin = find_sbin()
        self.name = f"{prefix}-{uuid.uuid4().hex[:10]}@localhost"
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="aw-rabbit-"))
        self.amqp_port = free_port()
        self.dist_port = free_port()
        while self.dist_port == self.amqp_port:
            self.dist_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "server.out"
        self.timings: dict[str, list[float]] = {"start": [], "stop": [], "restart": []}
        #: Wall-clock moments (time.time()) of the last change: the AMQP port first
        #: accepting a connection, and the server process having exited.
        self.serving_since: float | None = None
        self.down_since: float | None = None
        self._user: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                self._remove_dir()
                raise RabbitNodeError(
                    HOW_TO_GET_RABBITMQ.format(reason=f"no {SERVICE_USER!r} user to run it as")
                ) from None
            self._user = (entry.pw_uid, entry.pw_gid)
        self._write_files(config, advanced)

    # Files and environment.

    def _write_files(self, extra_config: str, advanced: str) -> None:
        (self.dir / "mnesia").mkdir()
        (self.dir / "log").mkdir()
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.amqp_port}\n"
            "log.console = false\n"
            "log.file.level = info\n"
            "disk_free_limit.absolute = 50MB\n" + extra_config + "\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        if advanced:
            (self.dir / "advanced.config").write_text(advanced + "\n")
        (self.dir / "rabbitmq-env.conf").write_text("# private node: no system settings\n")
        cookie = self.dir / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        if self._user is not None:
            uid, gid = self._user
            for path in [self.dir, *self.dir.rglob("*")]:
                os.chown(path, uid, gid)

    def env(self) -> dict[str, str]:
        """The environment of the server and of rabbitmqctl for this node."""
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.dir),  # its own .erlang.cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "node.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _run_as(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        uid, gid = self._user
        return {"user": uid, "group": gid, "extra_groups": []}

    # Control.

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ctl(self, *args: str, timeout: float = 30.0, check: bool = True) -> str:
        """Run ``rabbitmqctl -n <this node> <args>`` and return its output.

        Raises:
            RabbitNodeError: it failed (with ``check``) or overran ``timeout``.
        """
        command = [str(self.sbin / "rabbitmqctl"), "-n", self.name, *args]
        try:
            done = subprocess.run(
                command,
                env=self.env(),
                cwd=self.dir,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                **self._run_as(),
            )
        except subprocess.TimeoutExpired as exc:
            raise RabbitNodeError(f"rabbitmqctl {' '.join(args)}: no answer in {timeout}s") from exc
        if check and done.returncode != 0:
            raise RabbitNodeError(
                f"rabbitmqctl {' '.join(args)} exited with {done.returncode}:\n"
                f"{done.stdout}{done.stderr}"
            )
        return done.stdout

    def start(self) -> float:
        """Start the node and wait until it serves AMQP; returns the seconds it took.

        Raises:
            RabbitNodeError: it exited, or was not up within ``start_timeout``.
        """
        if self.running:
            raise RabbitNodeError(f"{self.name} is already running")
        began = time.monotonic()
        deadline = began + self.start_timeout
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.sbin / "rabbitmq-server")],
                env=self.env(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() can kill all of it
                **self._run_as(),
            )
        try:
            self._wait_for_port(deadline)
            left = max(deadline - time.monotonic(), 1.0)
            self.ctl("await_startup", "--timeout", str(int(left)), timeout=left + 10)
        except BaseException:
            self._kill()
            raise
        took = time.monotonic() - began
        self.timings["start"].append(took)
        return took

    def _wait_for_port(self, deadline: float) -> None:
        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                raise RabbitNodeError(
                    f"{self.name} exited with {self.process.returncode} while starting:\n"
                    f"{_tail(self.log_path)}\n{self._node_log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.amqp_port), timeout=1),
            ):
                self.serving_since = time.time()
                return
            if time.monotonic() > deadline:
                self._kill()
                raise RabbitNodeError(
                    f"{self.name} did not accept AMQP connections on port {self.amqp_port} "
                    f"within {self.start_timeout}s:\n{_tail(self.log_path)}\n"
                    f"{self._node_log_tail()}"
                )
            time.sleep(0.05)

    def _node_log_tail(self) -> str:
        logs = sorted((self.dir / "log").glob("*.log"))
        return "\n".join(f"--- {path.name}\n{_tail(path, 20)}" for path in logs)

    def stop(self) -> float:
        """Stop gracefully (``rabbitmqctl stop``), killing it if that fails or overruns.

        Returns the seconds it took. The data directory stays: :meth:`start` again
        recovers durable queues and persistent messages.
        """
        began = time.monotonic()
        if self.running:
            assert self.process is not None
            try:
                self.ctl("stop", timeout=self.stop_timeout)
                self.process.wait(self.stop_timeout)
            except (RabbitNodeError, subprocess.TimeoutExpired):
                self._kill()
        self._kill()  # reaps the process and whatever is left of its group
        self.down_since = time.time()
        took = time.monotonic() - began
        self.timings["stop"].append(took)
        return took

    def restart(self) -> float:
        """Stop, then start on the same data directory; returns the seconds in total."""
        began = time.monotonic()
        self.stop()
        self.start()
        took = time.monotonic() - began
        self.timings["restart"].append(took)
        return took

    def _kill(self) -> None:
        """SIGKILL the server's process group and anything else of this node."""
        process = self.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def leftover_pids(self) -> list[int]:
        """Processes whose environment names this node (only this node's own processes)."""
        marker = f"RABBITMQ_NODENAME={self.name}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                found.append(int(entry.name))
        return found

    def beam_pid(self) -> int | None:
        """The Erlang VM's pid (the server script runs it as a child), if it runs."""
        for pid in self.leftover_pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip().startswith("beam"):
                    return pid
            except OSError:
                continue
        return None

    def destroy(self) -> None:
        """Stop the node (kill it if need be), check nothing is left, remove its data.

        Raises:
            RabbitNodeError: a process of the node survived SIGKILL.
        """
        try:
            if self.running:
                self.stop()
            self._kill()
            deadline = time.monotonic() + 10
            while self.leftover_pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            left = self.leftover_pids()
            if left:
                raise RabbitNodeError(f"processes of {self.name} survived SIGKILL: {left}")
        finally:
            self._remove_dir()

    def _remove_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RabbitNode:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def node_fixture(
    scope: str = "function", make: Callable[..., Any] = RabbitNode, **options: Any
) -> Callable[..., Any]:
    """A pytest fixture that yields a started :class:`RabbitNode` and destroys it after.

    Assign it in a test module (``rabbit = node_fixture()``); the attribute name is the
    fixture's name. The test FAILS with instructions when no node can be started.
    ``make`` builds something else with ``start()`` and ``destroy()`` (a cluster).
    """
    import pytest

    @pytest.fixture(scope=scope)  # type: ignore[misc]
    def private_rabbit() -> Iterator[Any]:
        problem = None
        try:
            node = make(**options)
        except RabbitNodeError as exc:
            problem = str(exc)
        if problem is not None:
            pytest.fail(problem, pytrace=False)
        try:
            try:
                node.start()
            except RabbitNodeError as exc:
                problem = str(exc)
            if problem is not None:
                pytest.fail(problem, pytrace=False)
            yield node
        finally:
            node.destroy()

    return private_rabbit


if __name__ == "__main__":
    # python -m tests.integration.rabbit_node: start, restart and destroy one, with timings.
    node = RabbitNode()
    try:
        print(f"{node.name} in {node.dir}, AMQP port {node.amqp_port}")
        print(f"start   {node.start():6.2f} s")
        print(f"restart {node.restart():6.2f} s (stop {node.timings['stop'][-1]:.2f} s)")
        print(f"stop    {node.stop():6.2f} s")
    finally:
        node.destroy()
    print("destroyed; leftover processes:", node.leftover_pids(), "dir exists:", node.dir.exists())
