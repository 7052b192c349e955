"""A throw-away RabbitMQ cluster of private nodes on this machine, for failover tests.

Each node is a :class:`~tests.integration.rabbit_node.RabbitNode` (its own ports, data
directory and ``HOME``); what makes them a cluster is one Erlang cookie for all (written
into each node's ``HOME/.erlang.cookie``, which both the server and its ``rabbitmqctl``
read) and ``rabbitmqctl stop_app / join_cluster <first> / start_app`` on every other
node. :meth:`RabbitCluster.destroy` destroys every node, as ``RabbitNode.destroy`` does::

    with RabbitCluster(3) as cluster:
        urls = cluster.urls            # one AMQP URL per node
        cluster.kill(cluster.nodes[0])  # SIGKILL the node's Erlang VM
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import threading
import time
from typing import Any

from ..integration.rabbit_node import RabbitNode, RabbitNodeError


class ClusterNode(RabbitNode):
    """A private node that shares its Erlang cookie with the other nodes of a cluster."""

    def __init__(self, cookie: str, **options: Any) -> None:
        super().__init__(**options)
        path = self.dir / ".erlang.cookie"
        path.chmod(0o600)
        path.write_text(cookie)
        path.chmod(0o400)
        if self._user is not None:
            os.chown(path, *self._user)


class RabbitCluster:
    """``size`` private nodes joined into one cluster; the first is the seed."""

    def __init__(self, size: int = 3, prefix: str = "aw-cluster", **options: Any) -> None:
        cookie = secrets.token_hex(16).upper()
        self.nodes: list[ClusterNode] = []
        try:
            for _ in range(size):
                self.nodes.append(ClusterNode(cookie, prefix=prefix, **options))
        except BaseException:
            self.destroy()
            raise
        self.timings: dict[str, float] = {}

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> float:
        """Start every node (at once), join them to the first, check; returns the seconds.

        Raises:
            RabbitNodeError: a node did not start or join; the message says which and why.
        """
        began = time.monotonic()
        errors: dict[str, BaseException] = {}

        def start(node: ClusterNode) -> None:
            try:
                node.start()
            except BaseException as exc:
                errors[node.name] = exc

        threads = [threading.Thread(target=start, args=(node,)) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.nodes[0].start_timeout + 30)
        if errors or any(thread.is_alive() for thread in threads):
            raise RabbitNodeError(f"cluster nodes did not start: {errors}")
        self.timings["start nodes"] = time.monotonic() - began
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app", timeout=60)
            node.ctl("join_cluster", seed.name, timeout=60)
            node.ctl("start_app", timeout=120)
        self.timings["join"] = time.monotonic() - began - self.timings["start nodes"]
        running = self.running_nodes(seed)
        if set(running) != {node.name for node in self.nodes}:
            raise RabbitNodeError(
                f"the cluster did not form: {seed.name} sees {running} running, "
                f"expected {[node.name for node in self.nodes]}"
            )
        took = time.monotonic() - began
        self.timings["total"] = took
        return took

    def running_nodes(self, asking: RabbitNode) -> list[str]:
        """The cluster's running nodes as ``asking`` sees them."""
        text = asking.ctl("cluster_status", "--formatter", "json", timeout=60)
        match = re.search(r'"running_nodes"\s*:\s*\[([^\]]*)\]', text)
        if match is None:
            raise RabbitNodeError(f"cannot read cluster_status: {text[:500]}")
        return re.findall(r'"([^"]+)"', match.group(1))

    def kill(self, node: RabbitNode) -> float:
        """SIGKILL a node's Erlang VM, a crash; returns the moment (time.time())."""
        pid = node.beam_pid()
        if pid is None:
            raise RabbitNodeError(f"{node.name} has no running Erlang VM to kill")
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        if node.process is not None:
            node.process.wait(30)
        node.down_since = time.time()
        return killed

    def destroy(self) -> None:
        problems = []
        for node in self.nodes:
            try:
                node.destroy()
            except RabbitNodeError as exc:
                problems.append(str(exc))
        if problems:
            raise RabbitNodeError("; ".join(problems))

    def __enter__(self) -> RabbitCluster:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
