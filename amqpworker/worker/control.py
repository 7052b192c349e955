"""Answering remote control: inspect and control commands, on the worker's event loop.

Commands are consumed from the worker's own control queue and answered on the loop,
never behind the pool, so a worker whose every slot runs a blocking task still answers
``ping``. A malformed command, an unknown one or bad arguments get an ``{"error": ...}``
reply (and one log line); the worker keeps serving.
"""

from __future__ import annotations

import inspect
import os
import resource
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from .. import rates
from ..broker import Delivery
from ..broker import control as broker_control
from ..exceptions import MessageError
from ..log import get_logger, hide_password
from ..wire.control import ControlRequest, encode_reply
from ..wire.revocations import Revocation
from .limits import seconds
from .pipeline import Job

if TYPE_CHECKING:
    from .worker import Worker

log = get_logger(__name__)

#: Commands of Celery's that need what is not built yet; they answer with an error.
NOT_BUILT: dict[str, str] = {}


class RemoteControl:
    """One worker's answers to control commands."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.started = time.time()
        self._commands: dict[str, Callable[..., Awaitable[Any]]] = {
            "ping": self.ping,
            "registered": self.registered,
            "active": self.active,
            "reserved": self.reserved,
            "scheduled": self.scheduled,
            "stats": self.stats,
            "active_queues": self.active_queues,
            "conf": self.conf,
            "report": self.report,
            "revoked": self.revoked,
            "revoke": self.revoke,
            "shutdown": self.shutdown,
            "add_consumer": self.add_consumer,
            "cancel_consumer": self.cancel_consumer,
            "rate_limit": self.rate_limit,
            "pool_grow": self.pool_grow,
            "pool_shrink": self.pool_shrink,
            "time_limit": self.time_limit,
        }

    async def start(self) -> None:
        broker = self.worker.consumer_broker
        await broker_control.consume_commands(broker, self.worker.hostname, self.on_delivery)

    def on_delivery(self, delivery: Delivery) -> None:
        self.worker.spawn(self.handle(delivery))

    async def handle(self, delivery: Delivery) -> None:
        try:
            request = ControlRequest.decode(delivery.envelope)
        except MessageError as exc:
            log.warning("ignored a malformed control message", error=str(exc))
            await delivery.ack()
            return
        if request.destination is not None and self.worker.hostname not in request.destination:
            await delivery.ack()
            return
        value = await self.run(request.command, request.arguments)
        if request.reply_to:
            reply = encode_reply(request.id, self.worker.hostname, value)
            try:
                await self.worker.publisher_broker.publish(
                    reply, "", request.reply_to, mandatory=False
                )
            except Exception as exc:
                log.warning("could not reply to a control command", error=str(exc))
        await delivery.ack()

    async def run(self, command: str, arguments: Mapping[str, Any]) -> Any:
        """Carry out one command; a failure is an ``{"error": ...}`` value, never raised."""
        if command in NOT_BUILT:
            return {"error": NOT_BUILT[command]}
        handler = self._commands.get(command)
        if handler is None:
            known = ", ".join(sorted([*self._commands, *NOT_BUILT]))
            log.warning("unknown control command", command=command)
            return {"error": f"unknown control command {command!r} (known: {known})"}
        try:
            inspect.signature(handler).bind(**arguments)
        except TypeError as exc:
            log.warning("bad control arguments", command=command, error=str(exc))
            return {"error": f"bad arguments for {command}: {exc}"}
        try:
            return await handler(**arguments)
        except Exception as exc:
            log.warning("control command failed", command=command, error=str(exc))
            return {"error": f"{command} failed: {type(exc).__name__}: {exc}"}

    # Inspect.

    async def ping(self) -> dict[str, str]:
        return {"ok": "pong"}

    async def registered(self) -> list[str]:
        return sorted(self.worker.app.tasks)

    async def active(self) -> list[dict[str, Any]]:
        return [self._describe(job, started) for job, started in self.worker.active_jobs()]

    async def reserved(self) -> list[dict[str, Any]]:
        return [self._describe(job, None) for job in self.worker.reserved_jobs()]

    async def scheduled(self) -> list[dict[str, Any]]:
        """Tasks this worker holds for their eta: only the last second's wait.

        Longer delays wait in the broker's delay levels, never in a worker; they are
        messages in the ``amqpworker.delay.*`` queues.
        """
        return [
            {
                "eta": job.message.eta.isoformat() if job.message.eta else None,
                "priority": job.message.priority,
                "request": self._describe(job, None),
            }
            for job in self.worker.scheduled_jobs()
        ]

    async def stats(self) -> dict[str, Any]:
        worker, usage = self.worker, resource.getrusage(resource.RUSAGE_SELF)
        counts = worker.stats
        return {
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 3),
            "total": dict(counts.by_task),
            "counts": counts.counters(),
            "pool": {
                "implementation": worker.pool,
                "max-concurrency": worker.concurrency,
                "processes": worker.pool_pids(),
            },
            "prefetch_count": worker.prefetch,
            "broker": {"url": worker.consumer_broker.safe_url, "transport": "amqp"},
            "rusage": {
                "utime": usage.ru_utime,
                "stime": usage.ru_stime,
                "maxrss": usage.ru_maxrss,
            },
        }

    async def active_queues(self) -> list[dict[str, Any]]:
        default_priority = self.worker.app.conf.task_queue_max_priority
        return [
            {
                "name": name,
                "exchange": {"name": "", "type": "direct"},
                "routing_key": name,
                "durable": True,
                "queue_type": spec.type,
                "queue_arguments": spec.arguments_for(default_priority),
            }
            for name, spec in self.worker.consumed_queues().items()
        ]

    async def conf(self) -> dict[str, Any]:
        values = self.worker.app.conf.model_dump(mode="json")
        values["broker_url"] = [hide_password(url) for url in values["broker_url"]]
        return values

    async def report(self) -> dict[str, str]:
        return {"ok": self.worker.banner()}

    async def revoked(self) -> list[str]:
        return self.worker.revocations.ids()

    # Control.

    async def shutdown(self) -> dict[str, str]:
        log.warning("shutdown requested by remote control")
        self.worker.request_stop()
        return {"ok": "shutting down"}

    async def revoke(
        self, task_id: str | list[str], terminate: bool = False, signal: str | None = None
    ) -> dict[str, str]:
        """What the revocations stream also brings; here at once, and with a reply."""
        revocation = Revocation.of(
            task_id,
            terminate=terminate,
            signal=signal,
            holds_for=self.worker.app.conf.worker_revoke_expires,
        )
        terminated = self.worker.revocations.add(revocation)
        ids = ", ".join(revocation.ids)
        if terminated:
            return {"ok": f"tasks {ids} flagged as revoked; terminated {', '.join(terminated)}"}
        return {"ok": f"tasks {ids} flagged as revoked"}

    async def pool_grow(self, n: int | str = 1) -> dict[str, str]:
        return self._resize(_count(n))

    async def pool_shrink(self, n: int | str = 1) -> dict[str, str]:
        return self._resize(-_count(n))

    def _resize(self, delta: int) -> dict[str, str]:
        concurrency = self.worker.resize_pool(delta)
        log.info("pool resized by remote control", concurrency=concurrency)
        return {"ok": f"pool will {'grow' if delta > 0 else 'shrink'} to {concurrency}"}

    async def add_consumer(self, queue: str) -> dict[str, str]:
        added = await self.worker.add_consumer(queue)
        return {"ok": f"{'now' if added else 'already'} consuming from {queue!r}"}

    async def cancel_consumer(self, queue: str) -> dict[str, str]:
        cancelled = await self.worker.cancel_consumer(queue)
        if not cancelled:
            return {"error": f"not consuming from {queue!r}"}
        return {"ok": f"no longer consuming from {queue!r}"}

    async def rate_limit(self, task_name: str, rate_limit: rates.Rate) -> dict[str, str]:
        """Change a task's rate limit on this worker, as Celery's command does."""
        worker = self.worker
        if task_name not in worker.app.tasks:
            log.warning("rate_limit for an unknown task", task_name=task_name)
            return {"error": f"unknown task {task_name!r}"}
        if worker.rate_limits is None:
            log.warning("rate_limit refused: rate limits are disabled", task_name=task_name)
            return {"error": "rate limits are disabled on this worker (worker_disable_rate_limits)"}
        try:
            per_second = worker.rate_limits.set_rate(task_name, rate_limit)
        except ValueError as exc:
            log.warning("rate_limit refused", task_name=task_name, error=str(exc))
            return {"error": str(exc)}
        log.info("rate limit changed", task_name=task_name, rate_limit=rate_limit)
        if per_second is None:
            return {"ok": f"rate limit of {task_name!r} disabled successfully"}
        return {"ok": f"new rate limit of {task_name!r} set successfully: {rate_limit}"}

    async def time_limit(
        self, task_name: str, soft: float | str | None = None, hard: float | str | None = None
    ) -> dict[str, str]:
        """Change a task's time limits on this worker, as Celery's command does.

        They apply to runs that start from now on, where the message carries no limit
        of its own; 0 or None is no limit.
        """
        task = self.worker.app.tasks.get(task_name)
        if task is None:
            log.warning("time_limit for an unknown task", task_name=task_name)
            return {"error": f"unknown task {task_name!r}"}
        try:
            soft_seconds, hard_seconds = seconds(soft, "soft"), seconds(hard, "hard")
        except ValueError as exc:
            log.warning("time_limit refused", task_name=task_name, error=str(exc))
            return {"error": str(exc)}
        task.soft_time_limit, task.time_limit = soft_seconds, hard_seconds
        log.info("time limits changed", task_name=task_name, soft=soft_seconds, hard=hard_seconds)
        return {"ok": f"time limits of {task_name!r} set successfully"}

    def _describe(self, job: Job, started: float | None) -> dict[str, Any]:
        message, delivery = job.message, job.delivery
        return {
            "id": message.id,
            "name": message.task,
            "args": list(message.args),
            "kwargs": dict(message.kwargs),
            "type": message.task,
            "hostname": self.worker.hostname,
            "time_start": started,
            "acknowledged": delivery.settled,
            "delivery_info": {
                "exchange": delivery.exchange,
                "routing_key": delivery.routing_key,
                "queue": delivery.queue,
                "priority": message.priority,
                "redelivered": delivery.redelivered,
            },
            "worker_pid": os.getpid() if started is not None else None,
        }


def _count(n: int | str) -> int:
    """A positive whole number of slots (the CLI sends text)."""
    try:
        count = int(n)
    except (TypeError, ValueError):
        raise ValueError(f"n must be a whole number, not {n!r}") from None
    if count < 1:
        raise ValueError(f"n must be at least 1, not {count}")
    return count
