"""The exceptions of the worker side: what a stop request raises in a handler, what a handler
raises to say a service pushed back, and what `TaskContext.submit` raises."""

from __future__ import annotations


class TaskCancelled(BaseException):
    """Raised inside a handler whose task was cancelled.

    It derives from `BaseException`, as `asyncio.CancelledError` does, so that a handler's
    ``except Exception:`` does not swallow it by accident. A handler may catch it to clean up,
    but should re-raise: a handler still running ``timeout_grace`` seconds after a stop request
    has its worker killed.
    """

    kind = "cancelled"


class TaskTimeout(TaskCancelled):
    """Raised inside a handler whose task ran past its timeout (a kind of `TaskCancelled`)."""

    kind = "timeout"


class RateLimitError(Exception):
    """Raise it from a handler when a service said "too many requests".

    The attempt ends with ``error.kind="rate_limit"``: the orchestrator halves the parallelism of
    the task type (raising it again step by step on successes) and ``TaskSpec.retries`` retries
    the task after ``retry_after`` seconds when given, else after its backoff.
    """

    def __init__(self, message: str = "rate limited", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CapacityError(RateLimitError):
    """Raise it when a service is out of capacity (overloaded, 503); handled as `RateLimitError`."""


_STOP_EXCEPTIONS: dict[str, type[TaskCancelled]] = {
    "cancelled": TaskCancelled,
    "timeout": TaskTimeout,
}


class UnknownTaskTypeError(ValueError):
    """`TaskContext.submit` named a task type with no handler."""


class QueueFullError(Exception):
    """`TaskContext.submit` found the host's queue full; nothing was queued."""


def stop_exception(reason: str) -> TaskCancelled:
    """The exception that a stop request for ``reason`` raises in the handler."""
    return _STOP_EXCEPTIONS.get(reason, TaskCancelled)(f"task stopped: {reason}")
