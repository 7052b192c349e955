"""The worker: consume, decode, run, report, acknowledge, and stop cleanly.

Order of a delivery's life, and why:

1. Decode and look the task up. A message that breaks the wire format, or names a task
   this worker does not know, is copied into ``<queue>.dlq`` with the reason in its
   headers (confirmed) and only then acknowledged; if that copy fails, the DLQ is
   declared again and the copy retried, and failing that the message goes back to its
   queue. Either way it is never lost and never crashes the worker.
2. Run it (a thread for plain functions, the loop for coroutines, or inline on the loop
   with ``--pool asyncio``), at most ``concurrency`` at a time.
3. Publish the result to the caller's ``reply_to`` and wait for the confirm, then ack
   (``acks_late``). A worker killed before the ack leaves the message in the broker,
   which gives it to another worker.

Each delivery is handled in a task of our own, not in aio-pika's consumer task, so a
reconnect (which closes the old channel and cancels its consumer tasks) never cancels
a running job; its ack then fails and the broker redelivers the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import socket
import threading
import traceback
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo

from .. import delay
from ..app import App
from ..app.client import Client
from ..app.routing import Destination
from ..app.task import Request, Task, current_request
from ..broker import Broker, Delivery
from ..exceptions import MessageError, NotRegistered, TaskRevokedError, WorkflowError
from ..log import bound, get_logger, hide_password
from ..loop import resolved
from ..wire import ResultMessage, TaskMessage
from ..wire.results import FAILURE, RETRY, REVOKED, STARTED, exception_to_data, now_iso
from .execution import Outcome, run_async, run_sync
from .pool import TaskThreads
from .settle import Settler
from .workflow import JOIN_TASK, Workflow

log = get_logger(__name__)


#: Recently finished tasks this worker remembers, to ack redeliveries of them unrun.
FINISHED_MEMORY = 10_000


@dataclass
class WorkerStats:
    """Counters a person (or a test) can read while the worker runs."""

    received: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    running: int = 0
    by_task: dict[str, int] = field(default_factory=dict)


class Worker:
    """Consumes the given queues and runs the app's tasks."""

    def __init__(
        self,
        app: App,
        queues: Sequence[str] | None = None,
        *,
        concurrency: int | None = None,
        pool: str | None = None,
        prefetch_multiplier: int | None = None,
        shutdown_timeout: float | None = None,
        hostname: str | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.queues = list(queues or [conf.task_default_queue])
        self.concurrency = concurrency or conf.worker_concurrency
        self.pool = pool or conf.worker_pool
        if self.pool not in ("threads", "asyncio"):
            raise ValueError(f"pool must be 'threads' or 'asyncio', not {self.pool!r}")
        self.prefetch = self.concurrency * (prefetch_multiplier or conf.worker_prefetch_multiplier)
        self.shutdown_timeout = (
            conf.worker_shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        )
        self.hostname = hostname or f"{app.main or 'amqpworker'}@{socket.gethostname()}"
        self.stats = WorkerStats()
        self.topology = app.topology
        self._specs = {name: self.topology.queue(name) for name in self.queues}
        self.accepted = app.serializers.content_types(conf.accept_content)
        self._stop = asyncio.Event()
        self._stopping = False
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(self.concurrency)
        self._handlers: set[asyncio.Task[None]] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._waiting: set[Delivery] = set()
        self._settling: set[asyncio.Future[bool]] = set()
        #: Tasks that ran here, with the final state their caller was sent (to send again).
        self._finished: OrderedDict[tuple[str, int], ResultMessage | None] = OrderedDict()
        #: Tasks running here; a copy that arrives meanwhile waits for the future.
        self._in_flight: dict[tuple[str, int], asyncio.Future[None]] = {}
        self._timezone = ZoneInfo(conf.timezone)
        self._threads: TaskThreads | None = None
        self._client: Client | None = None
        self._workflow: Workflow | None = None
        self._settle: Settler
        self._consumer: Broker | None = None

    # Lifecycle.

    def banner(self) -> str:
        tasks = "\n".join(f"  . {name}" for name in sorted(self.app.tasks)) or "  (none)"
        queues = ", ".join(
            f"{name} ({spec.type}, prefetch {spec.prefetch or self.prefetch})"
            for name, spec in self._specs.items()
        )
        broker = self._consumer.safe_url if self._consumer else self.app.conf.broker_url[0]
        return (
            f"amqpworker {self.hostname}\n"
            f"  app:         {self.app.main or '__main__'}\n"
            f"  broker:      {hide_password(broker)}\n"
            f"  queues:      {queues}\n"
            f"  pool:        {self.pool} (concurrency {self.concurrency})\n"
            f"  loop:        {resolved(self.app.conf.event_loop)}\n"
            f"[tasks]\n{tasks}"
        )

    @property
    def ready(self) -> threading.Event:
        """Set once the worker consumes; lets a test or a supervisor wait for start-up."""
        return self._ready

    def request_stop(self) -> None:
        """Begin a graceful stop; safe to call from any thread or a signal handler."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: graceful stop; the second one exits at once."""
        assert self._loop is not None
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        if self._stop.is_set():
            log.warning("second signal: exiting now; unacknowledged tasks go back to the queue")
            os._exit(128 + signum)
        log.info(
            "stopping: waiting for running tasks",
            signal=signal.Signals(signum).name,
            grace_seconds=self.shutdown_timeout,
        )
        self._stop.set()

    async def run(self, install_signals: bool = False) -> None:
        """Consume until :meth:`request_stop` (or a signal), then stop gracefully."""
        self._loop = asyncio.get_running_loop()
        if install_signals:
            self.install_signal_handlers()
        if self.pool == "threads":
            self._threads = TaskThreads(self._loop, self.concurrency)
        conf = self.app.conf
        self._client = await self.app.client()
        self._workflow = Workflow(self.app, self._client)
        self._settle = Settler(self._client.broker, self.stats, self.topology)
        self._consumer = Broker(
            conf.broker_url,
            name=f"{self.hostname} consumer",
            heartbeat=conf.broker_heartbeat,
            connect_timeout=conf.broker_connection_timeout,
        )
        await self._consumer.connect()
        try:
            setup = await self._consumer.channel()
            await self._consumer.declare_for_worker(
                setup, self.topology, self.queues, conf.task_queue_max_priority
            )
            await setup.close()
            consumers = [
                await self._consumer.consume(
                    name, self._specs[name].prefetch or self.prefetch, self._on_delivery
                )
                for name in self.queues
            ]
            log.info("consuming", queues=self.queues, hostname=self.hostname)
            self._ready.set()
            await self._stop.wait()
            self._stopping = True
            for consumer in consumers:
                with contextlib.suppress(Exception):
                    await consumer.cancel()
            await self._drain()
        finally:
            await self._consumer.close()
            await self.app.aclose()
            if self._threads is not None:
                self._threads.shutdown()
            log.info("stopped", **{k: v for k, v in vars(self.stats).items() if k != "by_task"})

    async def _drain(self) -> None:
        for delivery in list(self._waiting):
            self._waiting.discard(delivery)
            await self._settle.requeue(delivery)
        if self._running:
            _, late = await asyncio.wait(self._running, timeout=self.shutdown_timeout)
            if late:
                log.warning(
                    "grace period over; unfinished tasks go back to the queue",
                    unfinished=len(late),
                )
                for handler in late:
                    handler.cancel()

    # Deliveries.

    def _on_delivery(self, delivery: Delivery) -> None:
        assert self._loop is not None
        handler = self._loop.create_task(self._handle_safely(delivery))
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)

    async def _handle_safely(self, delivery: Delivery) -> None:
        """No delivery stays unsettled without a task running for it, whatever goes wrong."""
        try:
            await self._handle(delivery)
        except Exception as exc:
            log.exception("could not handle a delivery", message_id=delivery.envelope.message_id)
            if delivery.settled:
                return
            try:
                await self._settle.dead_letter(
                    delivery,
                    "worker-error",
                    f"{type(exc).__name__}: {exc}",
                    exception=traceback.format_exc(),
                )
            except Exception:
                log.exception("could not dead-letter it either; it goes back to its queue")
                await self._settle.requeue(delivery, "worker-error")

    async def _handle(self, delivery: Delivery) -> None:
        self.stats.received += 1
        if self._stopping:
            await self._settle.requeue(delivery)
            return
        if delivery.redelivered:
            settling = asyncio.ensure_future(
                self._settle.count_redelivery(delivery, self._specs.get(delivery.queue))
            )
            self._settling.add(settling)
            try:
                if await settling:
                    return
            finally:
                self._settling.discard(settling)
        try:
            message = TaskMessage.decode(
                delivery.envelope, self.app.serializers, self.accepted, self._timezone
            )
        except MessageError as exc:
            await self._tell_caller_it_failed(delivery, exc)
            await self._settle.dead_letter(delivery, exc.reason, str(exc))
            return
        if await self._settled_as_copy(delivery, message):
            return
        if message.eta is not None and await self._not_yet(delivery, message):
            return
        if message.task == JOIN_TASK:
            await self._join(delivery, message)
            return
        task = self.app.get_task(message.task)
        if task is None:
            error = NotRegistered(f"task {message.task!r} is not registered on this worker")
            await self._report_quietly(message, _failed(message, error))
            await self._settle.dead_letter(delivery, "unknown-task", str(error))
            return
        self._waiting.add(delivery)
        async with self._slots:
            if delivery not in self._waiting:  # requeued by a stop while waiting
                return
            self._waiting.discard(delivery)
            while self._settling:
                # A counted copy may be this very message: it must not run (and maybe
                # kill us) before the original's ack has reached the broker.
                await asyncio.wait(set(self._settling))
            if delivery.stale:
                # Its channel closed while it waited: the broker has it again already.
                log.info("skipping a delivery from a closed channel", task_id=message.id)
                return
            key = (message.id, message.retries)
            if key in self._finished or key in self._in_flight:
                # A copy came in while this one waited: settle it as a copy, once the
                # other is done (no await from the check above to _in_flight below).
                await self._settled_as_copy(delivery, message)
                return
            current = asyncio.current_task()
            assert current is not None
            self._running.add(current)
            done = self._in_flight[key] = asyncio.get_running_loop().create_future()
            self.stats.running += 1
            try:
                await self._execute(delivery, message, task)
            except asyncio.CancelledError:
                log.warning("task interrupted by shutdown; it will run again", task_id=message.id)
            finally:
                self.stats.running -= 1
                self._running.discard(current)
                del self._in_flight[key]
                done.set_result(None)

    async def _execute(self, delivery: Delivery, message: TaskMessage, task: Task) -> None:
        request = self._request(delivery, message)
        with bound(task_id=message.id, task_name=task.name):
            if message.expires is not None and message.expires <= dt.datetime.now(dt.timezone.utc):
                revoked = TaskRevokedError(f"task {message.id} expired at {message.expires}")
                await self._report_quietly(
                    message, replace(_failed(message, revoked), status=REVOKED)
                )
                await self._settle.ack(delivery)
                return
            if task.effective_track_started and message.reply_to:
                await self._report_quietly(
                    message, ResultMessage(message.id, STARTED, None, None, now_iso(), task.name)
                )
            acks_late = task.effective_acks_late
            if not acks_late:
                await self._settle.ack(delivery)
            outcome = await self._run(task, request)
            self._count(task.name, outcome)
            exhausted = request.retries_exhausted and outcome.exception is not None
            await self._flush_states(request)
            if outcome.retry is not None:
                await self._retry(delivery, message, outcome)
                return
            # It ran: whatever happens to its report or ack, a copy must not run again,
            # and a copy's caller gets this result again.
            result = outcome.as_result(request)
            self._remember_finished(message, result)
            if not task.effective_ignore_result and not exhausted:
                # A result that cannot be sent (the broker is going away) is logged, not
                # retried by running the task again: a second run is worse than a lost
                # result message; a redelivered copy sends it again.
                await self._report_quietly(message, result)
            if self._workflow is not None and self._workflow.involved(message):
                # After this task's own state (a caller sees the failing step fail first),
                # before the ack (a crash continues the workflow again, never not at all).
                token = current_request.set(request)  # next steps name this one as parent
                try:
                    await self._workflow.after(message, request, outcome, delivery.queue)
                except Exception as exc:
                    await self._workflow_failed(delivery, message, exc)
                    return
                finally:
                    current_request.reset(token)
            if exhausted:
                await self._give_up(delivery, message, outcome, request)
                return
            if acks_late:
                await self._settle.ack(delivery)

    async def _settled_as_copy(self, delivery: Delivery, message: TaskMessage) -> bool:
        """Settle a copy of a task this worker ran (among its last ones) or is running.

        Copies come from an ack or a result lost when the connection dropped (the task
        comes back), from the broker's at-least-once dead-lettering in the delay levels
        around a restart (a fresh message with ``x-death``), and from a channel closed
        under a running task (RabbitMQ's consumer timeout; the copy comes back counted,
        without ``x-death``). A task id never runs twice at once here: a copy of a running
        task waits for it (outside the slots), and then, as a copy of a finished task, is
        acked with the task's result sent again (the first one may have been lost with
        the connection). A retry is not a copy: it carries the next retry number.
        """
        key = (message.id, message.retries)
        running = self._in_flight.get(key)
        if running is not None:
            log.info("a copy of a running task waits for it", task_id=message.id)
            await asyncio.shield(running)
        if key not in self._finished:
            return False
        result = self._finished[key]
        if result is not None and message.reply_to and not message.ignore_result:
            await self._report_quietly(message, result)
        log.info("acking a second copy of a task that ran here", task_id=message.id)
        await self._settle.ack(delivery)
        return True

    def _remember_finished(self, message: TaskMessage, result: ResultMessage | None) -> None:
        self._finished[(message.id, message.retries)] = result
        if len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)

    async def _workflow_failed(
        self, delivery: Delivery, message: TaskMessage, error: Exception
    ) -> None:
        """The task ran, but its workflow cannot go on: never run the task again.

        The caller gets FAILURE for every later result, and the message goes to the
        DLQ once (``workflow-failed``), where a person can see why.
        """
        assert self._workflow is not None
        failure = WorkflowError(f"the workflow could not continue after {message.task}: {error}")
        log.error("could not continue the workflow", task_id=message.id, error=str(error))
        try:
            await self._workflow.fail_remaining(message, failure, None)
        except Exception as exc:
            log.warning("could not tell the caller that its workflow failed", error=str(exc))
        await self._settle.dead_letter(
            delivery, "workflow-failed", str(failure), exception=traceback.format_exc()
        )

    async def _join(self, delivery: Delivery, message: TaskMessage) -> None:
        assert self._workflow is not None
        try:
            await self._workflow.join(message, delivery.queue)
        except Exception as exc:
            log.error("chord join failed; it will be tried again", error=str(exc))
            await self._settle.requeue(delivery, "chord-join-failed")
            return
        await self._settle.ack(delivery)

    async def _not_yet(self, delivery: Delivery, message: TaskMessage) -> bool:
        """Honour a message's eta; True when it went back to wait in the broker.

        The delay topology delivers up to a second early (it waits whole seconds); that
        remainder is slept here. A message that is earlier than that (a Celery client's
        eta, clock skew between hosts) goes back through the delay topology: a worker
        never holds a delayed message.
        """
        assert message.eta is not None
        wait = (message.eta - dt.datetime.now(dt.timezone.utc)).total_seconds()
        if wait <= 0:
            return False
        if wait < 1.0:
            await asyncio.sleep(wait)
            return False
        if wait > delay.MAX_DELAY:
            error = ValueError(
                f"eta {message.eta.isoformat()} is {wait:.0f}s away, past the delay "
                f"levels' reach of {delay.MAX_DELAY}s"
            )
            await self._report_quietly(message, _failed(message, error))
            await self._settle.dead_letter(delivery, "eta-out-of-range", str(error))
            return True
        try:
            await self._publish_again(delivery, message)
        except Exception as exc:
            log.error("could not delay the message again; requeueing it", error=str(exc))
            await self._settle.requeue(delivery, "delay-not-published")
            return True
        await self._settle.ack(delivery)
        return True

    async def _publish_again(self, delivery: Delivery, message: TaskMessage) -> None:
        """Publish a message to the queue it came from (delayed if its eta says so)."""
        assert self._client is not None
        serializer = self.app.serializers.get(delivery.envelope.content_type or "json")
        destination = Destination("", delivery.queue, delivery.queue, message.priority)
        await self._client.publish_tasks([(message, destination, serializer)])

    async def _retry(self, delivery: Delivery, message: TaskMessage, outcome: Outcome) -> None:
        """Publish the task again with ``retries + 1`` through the delay topology, then ack."""
        retry = outcome.retry
        assert retry is not None
        now = dt.datetime.now(dt.timezone.utc)
        if isinstance(retry.when, dt.datetime):
            # A naive datetime is in the app's time zone, as everywhere else.
            eta = retry.when if retry.when.tzinfo else retry.when.replace(tzinfo=self._timezone)
        else:
            eta = now + dt.timedelta(seconds=float(retry.when or 0))
        again = replace(
            message,
            retries=message.retries + 1,
            eta=eta,
            args=message.args if retry.retry_args is None else tuple(retry.retry_args),
            kwargs=message.kwargs if retry.retry_kwargs is None else dict(retry.retry_kwargs),
        )
        try:
            await self._publish_again(delivery, again)
        except (TypeError, ValueError) as exc:
            # Not the broker's fault (an eta past the delay levels' reach): it never will.
            failed = _failed(message, exc)
            self._remember_finished(message, failed)
            await self._report_quietly(message, failed)
            await self._settle.dead_letter(
                delivery, "retry-not-published", f"the retry cannot be published: {exc}"
            )
            return
        except Exception as exc:
            log.error("could not publish the retry; the message goes back", error=str(exc))
            await self._settle.requeue(delivery, "retry-not-published")
            return
        self._remember_finished(message, None)  # the retry is out: this copy is done
        await self._report_quietly(
            message,
            ResultMessage(
                message.id,
                RETRY,
                exception_to_data(outcome.exception or retry),
                outcome.traceback,
                now_iso(),
                message.task,
            ),
        )
        await self._settle.ack(delivery)

    async def _give_up(
        self, delivery: Delivery, message: TaskMessage, outcome: Outcome, request: Request
    ) -> None:
        """No retries left: the caller gets the failure, the message goes to the DLQ."""
        await self._report_quietly(message, outcome.as_result(request))
        exception = outcome.exception
        assert exception is not None
        await self._settle.dead_letter(
            delivery,
            "failed-after-retries",
            f"{type(exception).__name__}: {exception} (after {message.retries} retries)",
            exception=outcome.traceback,
        )

    async def _run(self, task: Task, request: Request) -> Outcome:
        if task.is_coroutine:
            return await run_async(task, request)
        if self._threads is None:
            return run_sync(task, request)
        return await self._threads.run(run_sync, task, request)

    def _request(self, delivery: Delivery, message: TaskMessage) -> Request:
        request = Request(
            id=message.id,
            task=message.task,
            args=message.args,
            kwargs=message.kwargs,
            retries=message.retries,
            root_id=message.root_id,
            parent_id=message.parent_id,
            group=message.group_id,
            reply_to=message.reply_to,
            correlation_id=message.id,
            eta=message.eta.isoformat() if message.eta else None,
            expires=message.expires.isoformat() if message.expires else None,
            headers=message.headers,
            delivery_info={
                "exchange": delivery.exchange,
                "routing_key": delivery.routing_key,
                "queue": delivery.queue,
                "redelivered": delivery.redelivered,
                "priority": message.priority,
            },
            hostname=self.hostname,
            is_eager=False,
        )
        if message.reply_to and not message.ignore_result:
            assert self._loop is not None
            assert self._client is not None
            request.publish_state = _StatePublisher(self._loop, self._client, message.reply_to)
        return request

    async def _flush_states(self, request: Request) -> None:
        publisher = request.publish_state
        if isinstance(publisher, _StatePublisher):
            await publisher.flush()

    async def _report(self, message: TaskMessage, result: ResultMessage) -> None:
        if message.reply_to and not message.ignore_result:
            assert self._client is not None
            await self._client.publish_result(message.reply_to, result)

    async def _report_quietly(self, message: TaskMessage, result: ResultMessage) -> None:
        """Report a state whose loss must not stop the delivery's handling."""
        try:
            await self._report(message, result)
        except Exception as exc:
            log.warning("could not send a state to the caller", state=result.status, error=str(exc))

    async def _tell_caller_it_failed(self, delivery: Delivery, error: MessageError) -> None:
        envelope = delivery.envelope
        task_id = envelope.correlation_id or envelope.message_id
        if not envelope.reply_to or not task_id:
            return
        name = envelope.headers.get("task")
        failed = ResultMessage(
            task_id,
            FAILURE,
            exception_to_data(error),
            None,
            now_iso(),
            name if isinstance(name, str) else None,
        )
        try:
            assert self._client is not None
            await self._client.publish_result(envelope.reply_to, failed)
        except Exception as exc:
            log.warning("could not tell the caller about a bad message", error=str(exc))

    def _count(self, name: str, outcome: Outcome) -> None:
        if outcome.status == FAILURE:
            self.stats.failed += 1
        elif outcome.status == RETRY:
            self.stats.retried += 1
        else:
            self.stats.succeeded += 1
        self.stats.by_task[name] = self.stats.by_task.get(name, 0) + 1


def _failed(message: TaskMessage, error: BaseException) -> ResultMessage:
    return ResultMessage(
        message.id, FAILURE, exception_to_data(error), None, now_iso(), message.task
    )


class _StatePublisher:
    """``update_state`` for one request: blocking from a thread, ordered on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Client, reply_to: str) -> None:
        self._loop = loop
        self._client = client
        self._reply_to = reply_to
        self._last: asyncio.Future[None] | None = None

    def __call__(self, state: ResultMessage) -> None:
        publish = self._client.publish_result(self._reply_to, state)
        if _on_loop(self._loop):
            self._last = self._loop.create_task(_after(self._last, publish))
        else:
            asyncio.run_coroutine_threadsafe(publish, self._loop).result()

    async def flush(self) -> None:
        if self._last is not None:
            with contextlib.suppress(Exception):
                await self._last


async def _after(previous: asyncio.Future[None] | None, publish: Any) -> None:
    if previous is not None:
        with contextlib.suppress(Exception):
            await previous
    await publish


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
