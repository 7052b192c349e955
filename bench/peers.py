"""The peers' own virtual environment: Celery, Dramatiq and Taskiq, installed from PyPI.

They never enter amqpworker's venv. On first use the harness runs ``<this python> -m venv
bench/.venv-peers`` (or ``$BENCH_PEERS_VENV``) and ``pip install -r
bench/peers-requirements.txt`` into it; a stamp file holds the hash of that file and the
Python version, so a changed pin list reinstalls and an unchanged one costs nothing. The
venv gets a ``.gitignore`` of ``*`` (what ``python -m venv`` itself writes from Python
3.13 on), so git ignores it without an entry in the repository's .gitignore.

The peers' apps (bench/apps/*_app.py) and callers (bench/drivers/*_driver.py) run in that
venv as child processes; the harness talks to them through files and exit codes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from .common import ROOT, BenchError

REQUIREMENTS = Path(__file__).resolve().parent / "peers-requirements.txt"
DEFAULT_VENV = Path(__file__).resolve().parent / ".venv-peers"
PACKAGES = ("celery", "kombu", "amqp", "dramatiq", "pika", "taskiq", "taskiq-aio-pika", "aio-pika")
CREATE_TIMEOUT = 120.0
INSTALL_TIMEOUT = float(os.environ.get("BENCH_PEERS_INSTALL_TIMEOUT", "900"))

_lock = threading.Lock()
_ready: Path | None = None


def venv_dir() -> Path:
    return Path(os.environ.get("BENCH_PEERS_VENV") or DEFAULT_VENV)


def _stamp() -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    return f"{digest} python-{platform.python_version()}"


def _run(args: list[str], timeout: float, what: str) -> None:
    print(f"  peers venv: {what}", flush=True)
    began = time.monotonic()
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"peers venv: {what} did not finish within {timeout:.0f}s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise BenchError(f"peers venv: {what} failed with {done.returncode}\n{tail}")
    print(f"  peers venv: {what}: done in {time.monotonic() - began:.0f}s", flush=True)


def peer_python() -> Path:
    """The peers' interpreter, creating or updating their venv first if needed."""
    global _ready
    with _lock:
        if _ready is not None:
            return _ready
        venv = venv_dir()
        python = venv / "bin" / "python"
        stamp_file = venv / ".bench-requirements"
        venv.mkdir(parents=True, exist_ok=True)
        (venv / ".gitignore").write_text("# created by bench/peers.py\n*\n")
        # A file lock, so two runs at once do not install into the same venv together.
        with open(venv / ".bench-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            wanted = _stamp()
            current = stamp_file.read_text().strip() if stamp_file.exists() else ""
            if not python.exists() or current != wanted:
                if not python.exists():
                    _run(
                        [sys.executable, "-m", "venv", str(venv)],
                        CREATE_TIMEOUT,
                        f"python -m venv {venv}",
                    )
                _run(
                    [
                        str(python), "-m", "pip", "install", "--disable-pip-version-check",
                        "--quiet", "-r", str(REQUIREMENTS),
                    ],
                    INSTALL_TIMEOUT,
                    f"pip install -r {REQUIREMENTS.relative_to(ROOT)}",
                )  # fmt: skip
                stamp_file.write_text(wanted + "\n")
        _ready = python
        return python


def peer_versions() -> dict[str, str]:
    """Versions of the peer packages in their venv (empty if it does not exist)."""
    python = venv_dir() / "bin" / "python"
    if not python.exists():
        return {}
    code = (
        "import json, platform, importlib.metadata as m\n"
        f"names = {list(PACKAGES)!r}\n"
        "found = {'python': platform.python_version()}\n"
        "for name in names:\n"
        "    try:\n"
        "        found[name] = m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "print(json.dumps(found))\n"
    )
    try:
        done = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, timeout=30, check=True
        )
        versions: dict[str, str] = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return versions
