"""The reliability suite: workers killed, frozen and stopped, brokers restarted, cut and
alarmed, poison messages and long soaks, each with a pass figure from the issue table.

Quick tests run in ``.ci/run``; the slow ones are marked ``slow`` and run with
``.venv/bin/python -m pytest tests/reliability -m slow`` (all of them before a release).
Every test is bounded in time and count and deletes only what it created. The fixtures
are the integration suite's (a real broker, ``amqpworker serve`` subprocesses, private
RabbitMQ nodes, a cuttable TCP proxy).
"""

from __future__ import annotations

from tests.integration.conftest import (  # noqa: F401  (fixtures, re-exported)
    BrokerAdmin,
    RunningWorker,
    ServeProcess,
    admin,
    app,
    broker_url,
    proxy,
    queue,
    run_cli,
    serve,
    start_worker,
    wait_for,
)
