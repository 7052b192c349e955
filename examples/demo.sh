#!/usr/bin/env bash
# Install amqpworker into .venv, start a worker on examples/tasks.py, call it, stop it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/ensure-broker
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e .

.venv/bin/amqpworker serve -A examples.tasks --concurrency 2 &
worker=$!
trap 'kill -TERM $worker 2>/dev/null || true; wait $worker 2>/dev/null || true' EXIT

.venv/bin/python -m examples.call
