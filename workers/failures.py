"""How an exception that ended a handler is reported to the host: its kind, text and traceback."""

from __future__ import annotations

import os
import traceback
from typing import Any

from workers import protocol
from workers.calls import CallRaised, InitializerFailed
from workers.context import TaskContext
from workers.errors import RateLimitError, TaskCancelled


def failure(task_id: str, kind: str, exc: BaseException, prefix: str = "") -> protocol.TaskFailed:
    """The message for an attempt that ``exc`` ended, with its text and traceback."""
    text = str(exc) or type(exc).__name__
    trace = "".join(traceback.format_exception(exc))
    return protocol.TaskFailed(task_id, kind, prefix + text, trace, type(exc).__name__)


def classify(ctx: TaskContext, exc: BaseException) -> protocol.TaskFailed:
    """The failure message for an exception that ended a handler."""
    if isinstance(exc, CallRaised):
        if exc.kind == "exception":
            reported = classify(ctx, exc.original)
        else:
            reported = failure(
                ctx.task_id, exc.kind, exc.original, prefix="the function's result cannot be pickled: "
            )
        reported.detail = exc.pickled
        return reported
    if isinstance(exc, InitializerFailed):
        reported = init_failure(ctx.task_id, exc.original)
        reported.detail = exc.pickled
        return reported
    if isinstance(exc, TaskCancelled):
        return failure(ctx.task_id, ctx.stop_reason or exc.kind, exc)
    if isinstance(exc, RateLimitError):
        limited = failure(ctx.task_id, "rate_limit", exc)
        limited.retry_after = seconds_or_none(exc.retry_after)
        return limited
    return failure(ctx.task_id, "exception", exc)


def init_failure(task_id: str, exc: BaseException) -> protocol.TaskFailed:
    """The failure of a task whose worker's initializer raised: the worker runs no task."""
    return failure(
        task_id, "worker_init", exc, prefix=f"the worker initializer raised {type(exc).__name__}: "
    )


def over_cap(task_id: str, exc: MemoryError, limit_mb: float | None) -> protocol.TaskFailed:
    """The failure of a handler that hit the worker's own memory cap."""
    return failure(
        task_id,
        "memory_limit",
        exc,
        prefix=f"worker pid {os.getpid()} reached its cap of max_memory_mb={limit_mb:g}, allocating: ",
    )


def seconds_or_none(value: Any) -> float | None:
    """A handler's ``retry_after`` as the protocol carries it: seconds >= 0 (``inf`` waits as long as
    the host allows), or None for what is not a number, so the host falls back to the backoff."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return max(0.0, float(value))
