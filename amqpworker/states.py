"""Task states, as ``result.state`` reports them."""

from .wire.results import (
    EXCEPTION_STATES,
    FAILURE,
    PENDING,
    PROGRESS,
    READY_STATES,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
)

__all__ = [
    "EXCEPTION_STATES",
    "FAILURE",
    "PENDING",
    "PROGRESS",
    "READY_STATES",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
]
