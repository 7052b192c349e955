"""Shared pieces of the harness: settings, deadlines, child processes, queue cleanup, stats.

Nothing here knows about a particular task queue. Every wait in the harness goes through
a bounded helper (:func:`wait_for_file`, :func:`stop_process`, :class:`Watchdog`), so a
stuck run ends with a message and a traceback, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: Systems measured by default, in this order within each repeat.
DEFAULT_SYSTEMS = "amqpworker,celery,dramatiq,taskiq,raw"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

#: Queue arguments every system's work queue gets, so the broker does the same work for
#: all of them: amqpworker's own (a classic queue with x-max-priority 10 and a DLX).
MAX_PRIORITY = 10


def work_queue_arguments(queue: str) -> dict[str, Any]:
    return {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"{queue}.dlq",
        "x-max-priority": MAX_PRIORITY,
    }


class BenchError(RuntimeError):
    """A measurement could not be made; the message says which and why."""


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SystemExit(f"{name}={value} must be >= {minimum}")
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise SystemExit(f"{name}={value} must be > 0")
    return value


def _env_list(name: str, default: str) -> list[str]:
    raw = os.environ.get(name) or default
    items = [item.strip() for item in raw.split(",")]
    if not all(items):
        raise SystemExit(f"{name}={raw!r} has an empty item")
    return items


@dataclass(frozen=True)
class Config:
    """What to measure and how much; read from ``BENCH_*`` environment variables."""

    n: int
    rt: int
    repeats: int
    systems: list[str]
    url: str
    concurrency: int
    prefetch_multiplier: int
    pools: list[str]
    warmup: int
    step_timeout: float
    rt_timeout: float
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def prefetch(self) -> int:
        return self.concurrency * self.prefetch_multiplier

    @classmethod
    def from_env(cls) -> Config:
        pools = _env_list("BENCH_POOLS", "threads,asyncio")
        for pool in pools:
            if pool not in ("threads", "asyncio"):
                raise SystemExit(f"BENCH_POOLS: unknown pool {pool!r} (threads, asyncio)")
        n = _env_int("BENCH_N", 10_000)
        return cls(
            n=n,
            rt=_env_int("BENCH_RT", 1_000),
            repeats=_env_int("BENCH_REPEATS", 3),
            systems=_env_list("BENCH_SYSTEMS", DEFAULT_SYSTEMS),
            url=os.environ.get("BENCH_URL") or DEFAULT_URL,
            concurrency=_env_int("BENCH_CONCURRENCY", 4),
            prefetch_multiplier=_env_int("BENCH_PREFETCH_MULTIPLIER", 4),
            pools=pools,
            warmup=_env_int("BENCH_WARMUP", 20, minimum=0),
            step_timeout=_env_float("BENCH_STEP_TIMEOUT", 60.0 + n / 100),
            rt_timeout=_env_float("BENCH_RT_TIMEOUT", 10.0),
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["prefetch"] = self.prefetch
        return data


# Queues and child processes this run created: cleaned up at the end, or by the watchdog.

_queues: list[str] = []
_exchanges: list[str] = []
_children: dict[int, subprocess.Popen[bytes]] = {}
_lock = threading.Lock()


def new_queue(config: Config, label: str) -> str:
    """A unique queue name, remembered so that it (and its ``.dlq``) is deleted at the end."""
    name = f"bench-{config.run_id}-{label}-{uuid.uuid4().hex[:8]}"
    with _lock:
        _queues.append(name)
    return name


def remember_queues(*names: str) -> None:
    """Queues a peer library declares besides the ones :func:`new_queue` named (Dramatiq's
    ``.DQ``/``.XQ``): deleted with the rest at the end, also by the watchdog."""
    with _lock:
        _queues.extend(name for name in names if name not in _queues)


def remember_exchange(name: str) -> None:
    """An exchange this run declared (Celery's and Taskiq's per-queue exchange)."""
    with _lock:
        if name not in _exchanges:
            _exchanges.append(name)


def created_queues() -> list[str]:
    with _lock:
        return list(_queues)


def created_exchanges() -> list[str]:
    with _lock:
        return list(_exchanges)


async def _delete_queues(
    url: str, names: Sequence[str], exchanges: Sequence[str] = ()
) -> list[str]:
    import aio_pika

    failed = []
    connection = await asyncio.wait_for(aio_pika.connect(url, timeout=10), 15)
    try:
        for name in names:
            for queue in (name, f"{name}.dlq"):
                try:
                    channel = await connection.channel()
                    await asyncio.wait_for(channel.queue_delete(queue), 10)
                    await channel.close()
                except Exception as exc:
                    failed.append(f"queue {queue}: {exc!r}")
        for exchange in exchanges:
            try:
                channel = await connection.channel()
                await asyncio.wait_for(channel.exchange_delete(exchange), 10)
                await channel.close()
            except Exception as exc:
                failed.append(f"exchange {exchange}: {exc!r}")
    finally:
        await connection.close()
    return failed


def delete_queues(
    url: str, names: Sequence[str] | None = None, exchanges: Sequence[str] | None = None
) -> None:
    """Delete the given queues and their ``.dlq`` queues, and the given exchanges.

    Without arguments: everything this run created and has not deleted yet.
    """
    if names is None and exchanges is None:
        names, exchanges = created_queues(), created_exchanges()
    names, exchanges = list(names or ()), list(exchanges or ())
    if not names and not exchanges:
        return
    try:
        failed = asyncio.run(asyncio.wait_for(_delete_queues(url, names, exchanges), 60))
    except Exception as exc:
        print(f"warning: could not clean up {names} {exchanges}: {exc!r}", file=sys.stderr)
        return
    with _lock:
        for name in names:
            if name in _queues:
                _queues.remove(name)
        for name in exchanges:
            if name in _exchanges:
                _exchanges.remove(name)
    for line in failed:
        print(f"warning: could not delete {line}", file=sys.stderr)


def start_process(args: Sequence[str], log_path: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child with stdout+stderr to ``log_path``; the watchdog kills it if needed."""
    # Children import amqpworker (and bench) from the same tree as this process.
    env = dict(kwargs.pop("env", None) or os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child's lifetime
    proc = subprocess.Popen(
        list(args), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, **kwargs
    )
    log.close()
    with _lock:
        _children[proc.pid] = proc
    return proc


def stop_process(proc: subprocess.Popen[bytes], grace: float = 30.0) -> int:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit code."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                print(
                    f"warning: pid {proc.pid} ignored SIGTERM for {grace}s; killing it",
                    file=sys.stderr,
                )
                proc.kill()
                proc.wait(10)
        return proc.returncode
    finally:
        with _lock:
            _children.pop(proc.pid, None)


def kill_children() -> None:
    with _lock:
        children = list(_children.values())
        _children.clear()
    for proc in children:
        if proc.poll() is None:
            proc.kill()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_for_file(
    path: Path, timeout: float, proc: subprocess.Popen[bytes] | None, log: Path | None, what: str
) -> str:
    """Poll until ``path`` exists and return its text; fail if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            return path.read_text()
        if proc is not None and proc.poll() is not None:
            tail = log_tail(log) if log else ""
            raise BenchError(f"{what}: process exited with {proc.returncode}\n{tail}")
        if time.monotonic() > deadline:
            tail = log_tail(log) if log else ""
            raise BenchError(f"{what}: not done within {timeout:.0f}s\n{tail}")
        time.sleep(0.002)


def rss_kib(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc/<pid>/status."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found["VmRSS"], found["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime: fields 14 and 15


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (Dramatiq's and Taskiq's supervisor + workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def tree_rss_kib(pids: Sequence[int]) -> int:
    """Summed VmRSS of these processes and all their descendants, in KiB."""
    total = 0
    for root in pids:
        for pid in process_tree(root):
            try:
                total += rss_kib(pid)[0]
            except (OSError, KeyError):
                continue  # exited meanwhile, or a zombie without memory
    return total


def tree_cpu_seconds(pids: Sequence[int]) -> float:
    """Summed user + system CPU of these processes and their live descendants."""
    total = 0.0
    for root in pids:
        for pid in process_tree(root):
            try:
                total += cpu_seconds(pid)
            except (OSError, IndexError, ValueError):
                continue
    return total


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                        inodes.add(fields[9])
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return inodes


def broker_pids(url: str) -> list[int]:
    """The local ``beam.smp`` that listens on the URL's port, or [] if there is none."""
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        return []
    sockets = {f"socket:[{inode}]" for inode in _listening_inodes(parsed.port or 5672)}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as comm:
                if comm.read().strip() != "beam.smp":
                    continue
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in sockets:
                    return [int(entry)]
    return []


_broker: list[int] | None = None


def broker_cpu_seconds() -> float | None:
    """CPU time used so far by the local broker, or None if it is not on this machine.

    Other programs using the same broker meanwhile count too: it is an upper bound. The
    broker is looked up once (its listening socket), so a call costs microseconds.
    """
    global _broker
    if _broker is None:
        _broker = broker_pids(os.environ.get("BENCH_URL") or DEFAULT_URL)
    try:
        return sum(cpu_seconds(pid) for pid in _broker) if _broker else None
    except OSError:  # the broker restarted
        _broker = None
        return None


async def _queue_state(url: str, queue: str) -> tuple[int, int]:
    import aio_pika

    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        result = declared.declaration_result
        return result.message_count or 0, result.consumer_count or 0
    finally:
        await connection.close()


def queue_state(url: str, queue: str, timeout: float = 20.0) -> tuple[int, int]:
    """``(ready messages, consumers)`` of an existing queue, by a passive declare."""
    return asyncio.run(asyncio.wait_for(_queue_state(url, queue), timeout))


async def _wait_consumers(
    url: str, queue: str, consumers: int, procs: Sequence[subprocess.Popen[bytes]]
) -> tuple[float, int]:
    import aio_pika

    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        while True:
            declared = await channel.declare_queue(queue, passive=True)
            result = declared.declaration_result
            if (result.consumer_count or 0) >= consumers:
                return time.time(), result.message_count or 0
            for proc in procs:
                if proc.poll() is not None:
                    raise BenchError(f"worker pid {proc.pid} exited with {proc.returncode}")
            await asyncio.sleep(0.002)
    finally:
        await connection.close()


def wait_consumers(
    url: str,
    queue: str,
    consumers: int,
    timeout: float,
    procs: Sequence[subprocess.Popen[bytes]] = (),
) -> tuple[float, int]:
    """Poll until ``queue`` has ``consumers`` consumers; return ``(time.time(), ready)``.

    The multi-process drains start timing here: once every worker process consumes, with
    the number of messages still waiting in the queue at that moment.
    """
    try:
        return asyncio.run(asyncio.wait_for(_wait_consumers(url, queue, consumers, procs), timeout))
    except asyncio.TimeoutError:
        raise BenchError(
            f"{queue}: fewer than {consumers} consumers after {timeout:.0f}s"
        ) from None


def check_filled(url: str, queue: str, expected: int, what: str) -> None:
    """The queue holds exactly ``expected`` messages (polled: enqueueing is asynchronous)."""
    count = -1
    for _ in range(250):
        count, _consumers = queue_state(url, queue)
        if count == expected:
            return
        time.sleep(0.02)
    raise BenchError(f"{what}: queue {queue} holds {count} messages, not {expected}")


def drained_rate(
    config: Config, t0: float, ready: int, start: float, end: float, what: str
) -> tuple[float, float]:
    """Rate and time base of a multi-process drain: the messages still ready when every
    process consumed (less the end marker), over the time from then to the end marker.

    When the first process drained (nearly) everything before the last one was up (a
    tiny N), that is meaningless; then the markers time it, start-up included, with a
    warning.
    """
    if end > t0 and ready - 1 > 2 * config.prefetch:
        return (ready - 1) / (end - t0), t0
    print(
        f"warning: {what}: only {ready} messages left when all workers consumed; "
        "timing by the markers instead (includes the later worker's start-up)",
        file=sys.stderr,
    )
    return config.n / (end - start), start


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


class Watchdog:
    """Ends the whole run loudly if one step overruns: tracebacks, kill children, clean up.

    Used as ``with watchdog.step("what", seconds): ...``. A step's own waits have their
    own, shorter timeouts; this is the backstop for a wait that has none (a C call that
    blocks, a lost wake-up).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._timer: threading.Timer | None = None

    @contextmanager
    def step(self, what: str, seconds: float) -> Iterator[None]:
        timer = threading.Timer(seconds, self._expired, args=(what, seconds))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _expired(self, what: str, seconds: float) -> None:
        print(
            f"\nBENCH TIMEOUT: {what} did not finish within {seconds:.0f}s; thread stacks follow",
            file=sys.stderr,
            flush=True,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        kill_children()
        cleanup = threading.Thread(target=delete_queues, args=(self.config.url,), daemon=True)
        cleanup.start()
        cleanup.join(30)
        os._exit(3)


def drain_metrics(
    variant: str,
    rate: float,
    seconds: float,
    cpu: tuple[float, float],
    broker_cpu: tuple[float | None, float | None],
    pids: list[int],
) -> dict[str, float]:
    """The drain rate, the worker's and broker's CPU over ``seconds``, and worker RSS."""
    metrics = {
        f"drain_rate[{variant}]": rate,
        f"cpu_us_per_msg[{variant}]": 1e6 * (cpu[1] - cpu[0]) / (rate * seconds),
        f"cpu_pct[{variant}]": 100 * (cpu[1] - cpu[0]) / seconds,
        f"rss_mb[{variant}]": tree_rss_kib(pids) / 1024,
    }
    broker_start, broker_end = broker_cpu
    if broker_start is not None and broker_end is not None:
        metrics[f"broker_cpu_us_per_msg[{variant}]"] = (
            1e6 * (broker_end - broker_start) / (rate * seconds)
        )
    return metrics
