"""What a worker does after a task, for the workflow it belongs to.

Everything here happens before the task's message is acknowledged, and every publish is
confirmed, so a crash repeats it rather than losing it: after a success, the callbacks
and the chain's next step are published with the result; after a failure, the errbacks
run and every remaining step of the chain is reported failed to the caller; either way,
a chord member records its result in the chord's queue and asks for a join.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from ..app import App
from ..app.canvas import Plan, from_dict, plan, publish, result_ids
from ..app.publisher import Publisher
from ..app.results import rebuild_exception
from ..app.task import Request
from ..broker import Outgoing, chord
from ..log import get_logger
from ..wire import ResultMessage, TaskMessage
from ..wire.results import FAILURE, SUCCESS, exception_to_data, now_iso
from .execution import Outcome

log = get_logger(__name__)

#: The built-in task a chord member publishes after recording its result.
JOIN_TASK = "amqpworker.chord.join"
#: How long joins keep trying while another join holds the chord.
JOIN_RETRIES = 1800
JOIN_RETRY_DELAY = 2.0


class Workflow:
    """Continues workflows for one worker: its app, and its publisher."""

    def __init__(self, app: App, publisher: Publisher) -> None:
        self.app = app
        self.publisher = publisher

    def involved(self, message: TaskMessage) -> bool:
        return bool(message.callbacks or message.errbacks or message.chain or message.chord)

    async def after(
        self, message: TaskMessage, request: Request, outcome: Outcome, queue: str
    ) -> None:
        if outcome.exception is None:
            await self._succeeded(message, outcome.value)
        else:
            await self._failed(message, request, outcome)
        if message.chord:
            await self._record_in_chord(message, outcome, queue)

    async def _succeeded(self, message: TaskMessage, value: Any) -> None:
        work = Plan()
        for callback in message.callbacks:
            work.extend(plan(self.app, from_dict(callback, self.app), [value]))
        if message.chain:
            step, *rest = message.chain
            work.extend(plan(self.app, from_dict(step, self.app), [value], rest))
        await publish(self.app, self.publisher, work)

    async def _failed(self, message: TaskMessage, request: Request, outcome: Outcome) -> None:
        exception = outcome.exception
        assert exception is not None
        await self.run_errbacks(message.errbacks, request, exception, outcome.traceback or "")
        await self.fail_remaining(message, exception, outcome.traceback, chord_body=False)

    async def fail_remaining(
        self,
        message: TaskMessage,
        exception: BaseException,
        traceback: str | None,
        chord_body: bool = True,
    ) -> None:
        """The workflow stops here: its later results fail with ``exception``.

        So the caller's ``get()`` on the last one raises instead of waiting forever.
        The chord body's results are included when the chord will not fire either.
        """
        if not message.reply_to:
            return
        steps = list(message.chain)
        if chord_body and message.chord:
            steps = [message.chord["body"], *message.chord.get("then", []), *steps]
        failed = exception_to_data(exception)
        for task_id in [task_id for step in steps for task_id in result_ids(step)]:
            await self.publisher.publish_result(
                message.reply_to, ResultMessage(task_id, FAILURE, failed, traceback, now_iso())
            )

    async def run_errbacks(
        self,
        errbacks: Sequence[Mapping[str, Any]],
        request: Request,
        exception: BaseException,
        traceback: str,
    ) -> None:
        """Call each ``errback(request, exc, traceback)``.

        Here, when this worker has the errback's task; else it is published with the
        failed task's id as its argument (the form a remote task can take).
        """
        for data in errbacks:
            signature = from_dict(data, self.app)
            task = self.app.get_task(signature.name)
            if task is None:
                await publish(self.app, self.publisher, plan(self.app, signature, [request.id]))
                continue
            try:
                args = (request, exception, traceback, *signature.args)
                if task.is_coroutine:
                    await task.run(*args, **signature.kwargs)
                else:
                    outcome = await asyncio.to_thread(task.run, *args, **signature.kwargs)
                    if inspect.isawaitable(outcome):
                        await outcome
            except Exception:
                log.exception("an errback raised", errback=signature.name)

    # Chords.

    async def _record_in_chord(self, message: TaskMessage, outcome: Outcome, queue: str) -> None:
        info = message.chord
        assert info is not None
        result = ResultMessage(
            message.id,
            SUCCESS if outcome.exception is None else FAILURE,
            outcome.value if outcome.exception is None else exception_to_data(outcome.exception),
            outcome.traceback,
            now_iso(),
            message.task,
        )
        serializer = self.app.serializers.get(self.app.conf.result_serializer)
        await chord.record(
            self.publisher.broker, info["id"], info["index"], result.encode(serializer)
        )
        join = TaskMessage(
            task=JOIN_TASK,
            args=(info["id"], info["size"], info["body"], info.get("then", [])),
            ignore_result=True,
            priority=message.priority,
        )
        await self.publisher.publish_to_queue(queue, join)

    async def join(self, message: TaskMessage, queue: str) -> None:
        """Handle a join message: fire the chord's body once every header task reported."""
        chord_id, size, body, then = message.args
        failure: list[tuple[ResultMessage, Mapping[str, Any]]] = []

        async def fire(results: list[Any]) -> Sequence[Outgoing]:
            return await self._fire(results, body, then, failure)

        outcome = await chord.join(self.publisher.broker, chord_id, size, fire)
        if outcome is chord.Join.BUSY:
            if message.retries >= JOIN_RETRIES:
                log.error("giving up a chord join: its queue stayed busy", chord_id=chord_id)
                return
            retry = TaskMessage(
                task=JOIN_TASK,
                args=message.args,
                retries=message.retries + 1,
                # Two seconds, so that it really waits in the delay levels (under one
                # second, a message is published straight to its queue).
                eta=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=JOIN_RETRY_DELAY),
                ignore_result=True,
            )
            await self.publisher.publish_to_queue(queue, retry)
        elif outcome is chord.Join.FIRED and failure:
            failed, body_data = failure[0]
            exception = rebuild_exception(failed.result or {}, failed.traceback)
            request = Request(id=failed.task_id, task=failed.task_name, is_eager=False)
            errbacks = (body_data.get("options") or {}).get("link_error") or []
            await self.run_errbacks(errbacks, request, exception, failed.traceback or "")
        log.info("chord join", chord_id=chord_id, outcome=outcome.value)

    async def _fire(
        self,
        envelopes: list[Any],
        body: Mapping[str, Any],
        then: Sequence[Mapping[str, Any]],
        failure: list[tuple[ResultMessage, Mapping[str, Any]]],
    ) -> Sequence[Outgoing]:
        serializers = self.app.serializers
        accepted = serializers.content_types(self.app.conf.accept_content)
        results = [ResultMessage.decode(envelope, serializers, accepted) for envelope in envelopes]
        failed = next((result for result in results if result.status != SUCCESS), None)
        if failed is None:
            work = plan(self.app, from_dict(body, self.app), [[r.result for r in results]], then)
            for chord_id in work.chords:
                await self.publisher.declare_chord(chord_id)
            return await self.publisher.outgoing(work.messages)
        # A header task failed: the body does not run; its caller and later steps fail.
        failure.append((failed, body))
        reply_to = (body.get("options") or {}).get("reply_to")
        if not reply_to:
            return []
        serializer = serializers.get(self.app.conf.result_serializer)
        ids = result_ids(body) + [i for step in then for i in result_ids(step)]
        return [
            (
                ResultMessage(task_id, FAILURE, failed.result, failed.traceback, now_iso()).encode(
                    serializer
                ),
                "",
                reply_to,
            )
            for task_id in ids
        ]
