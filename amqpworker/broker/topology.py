"""Queue arguments, computed in one place so that publishers and workers declare alike.

RabbitMQ refuses (with a channel-closing ``PRECONDITION_FAILED``) a declaration whose
arguments differ from the queue it already has, so every declaration of a work queue,
by any process, must come from :func:`work_queue_arguments`.
"""

from __future__ import annotations

from typing import Any

DLQ_SUFFIX = ".dlq"


def dlq_name(queue: str) -> str:
    """The dead-letter queue that belongs to a work queue."""
    return queue + DLQ_SUFFIX


def work_queue_arguments(queue: str, max_priority: int | None) -> dict[str, Any]:
    """Arguments of a classic work queue: native priorities, dead-lettering to its DLQ."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlq_name(queue),
    }
    if max_priority:
        arguments["x-max-priority"] = max_priority
    return arguments
