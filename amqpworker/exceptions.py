"""Every exception amqpworker raises, in one tree.

    AmqpWorkerError
    ├── ImproperlyConfigured        bad settings, app path or routing: raised at the edge
    │   └── TopologyMismatch        the broker's queues/exchanges differ from the routing file
    ├── DuplicateTaskError          a second task registered under a taken name
    ├── NotRegistered               a task name the app does not know
    ├── BrokerUnavailable           no broker URL accepted a connection
    ├── DeliveryLost                the delivering channel closed before the ack
    ├── PublishError                the broker did not take a message
    │   ├── UnroutableError         no queue is bound for the message (mandatory publish)
    │   └── PublishOutcomeUnknown   no confirm in time: the message may still run
    ├── MessageError                a delivered message breaks the wire format
    │   ├── ContentDisallowed       its content type is not in ``accept_content``
    │   └── DecodeError             its body cannot be decoded
    │       └── MalformedMessage    headers missing or mistyped, or the body is not [args, kwargs]
    ├── TaskError                   a task failed with an exception we cannot rebuild here
    │   └── ResultLost              the caller's reply queue went away with the result in it
    ├── WorkflowError               a finished step's workflow could not go on
    ├── TaskRevokedError            the task was revoked or expired before it ran
    ├── Retry                       raised by ``task.retry()``: run again later
    ├── MaxRetriesExceededError     ``task.retry()`` when no retries are left
    └── TimeoutError                ``get(timeout=...)`` ran out (also the builtin TimeoutError)

A message that breaks the wire format carries a short ``reason`` that the worker writes
into the dead-letter copy's headers, so a person reading the DLQ knows why it is there.
"""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any


class AmqpWorkerError(Exception):
    """Base of all amqpworker errors."""


class ImproperlyConfigured(AmqpWorkerError):
    """A setting, an app path or a routing entry is wrong; the message names which."""


class TopologyMismatch(ImproperlyConfigured):
    """The broker has a queue or exchange with other arguments than the routing file says.

    Attributes:
        differences: one plain sentence per difference.
    """

    def __init__(self, differences: list[str]) -> None:
        super().__init__(
            "the broker's topology differs from the routing file:\n  " + "\n  ".join(differences)
        )
        self.differences = differences


class DuplicateTaskError(AmqpWorkerError):
    """Two tasks were registered under one name."""


class NotRegistered(AmqpWorkerError, KeyError):
    """The app has no task of that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class BrokerUnavailable(AmqpWorkerError):
    """None of the broker URLs accepted a connection."""


class DeliveryLost(AmqpWorkerError):
    """The channel that delivered a message is gone; the broker will redeliver it."""


class PublishError(AmqpWorkerError):
    """The broker refused a message or did not confirm it in time."""


class UnroutableError(PublishError):
    """The broker had no queue to route a mandatory message to."""


class PublishOutcomeUnknown(PublishError):
    """No confirm came in time: the broker may have the message, and it may still run.

    A refusal (a nack, an unroutable message) is a :class:`PublishError` of its own: the
    message is not queued and sending it again is safe. This one is not: a caller that
    sends again may run the task twice. During a resource alarm RabbitMQ blocks
    publishing connections and the message waits in this process or the broker until
    the alarm clears.

    Attributes:
        message_id: the message's id (the task id), to look for it later.
        blocked: True when the broker had blocked the connection (a memory or disk alarm).
    """

    def __init__(self, message: str, message_id: str | None, blocked: bool = False) -> None:
        super().__init__(message)
        self.message_id = message_id
        self.blocked = blocked


class MessageError(AmqpWorkerError):
    """A delivered message breaks the wire format."""

    reason = "malformed"


class ContentDisallowed(MessageError):
    """The message's content type is not accepted by this worker."""

    reason = "content-type-not-accepted"


class DecodeError(MessageError):
    """The body or headers could not be decoded."""

    reason = "undecodable"


class MalformedMessage(DecodeError):
    """Headers are missing or mistyped, or the decoded body is not ``[args, kwargs]``."""

    reason = "malformed"


class TaskError(AmqpWorkerError):
    """A remote task failed with an exception that cannot be rebuilt in this process.

    Attributes:
        exc_type: the remote exception's qualified type name, e.g. ``myapp.errors.Boom``.
    """

    def __init__(self, message: str, exc_type: str = "") -> None:
        super().__init__(message)
        self.exc_type = exc_type


class ResultLost(TaskError):
    """The caller's reply queue was gone (expired or deleted) while a task was pending.

    A state published to it in the meantime is lost; the task may have run. Raised by
    ``get()`` for every task the caller was waiting for, instead of waiting forever.
    """


class WorkflowError(AmqpWorkerError):
    """A step finished, but the next steps of its workflow could not be sent.

    The step is not run again; its message is in ``<queue>.dlq`` as ``workflow-failed``.
    """


class TaskRevokedError(AmqpWorkerError):
    """The task did not run: it was revoked, or it expired before a worker got to it."""


class Retry(AmqpWorkerError):
    """Raised by ``task.retry()``: the worker publishes the task again, delayed.

    Attributes:
        exc: the exception that caused the retry, if any.
        when: seconds from now, or the datetime at which to run again.
    """

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | dt.datetime | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.exc = exc
        self.when = when
        self.retry_args = args
        self.retry_kwargs = kwargs
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else message or "retry"
        when_text = (
            f"in {when}s" if isinstance(when, (int, float)) else f"at {when}" if when else "now"
        )
        super().__init__(f"Retry {when_text}: {reason}")


class MaxRetriesExceededError(AmqpWorkerError):
    """The task asked for a retry, but it has no retries left."""


class TimeoutError(AmqpWorkerError, builtins.TimeoutError):
    """Waiting for a result took longer than the given timeout."""


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task that ran past its soft time limit, so it can clean up.

    An ``Exception`` (as in Celery): a task that does not catch it fails with it.
    """


class TimeLimitExceeded(AmqpWorkerError):
    """The task ran past its hard time limit and was stopped (or abandoned, in a thread)."""


class WorkerLostError(AmqpWorkerError):
    """The process running the task died before the task ended (killed, crashed, exited)."""
