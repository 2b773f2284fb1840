"""What a handler sees: `TaskContext`, and the exceptions a stop request raises inside it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers import protocol


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


@dataclass(frozen=True, slots=True)
class TaskError:
    """A failed dependency, as ``ctx.deps`` shows it to a task that runs despite the failure."""

    kind: str
    message: str
    traceback: str = ""
    exception_type: str = ""


_STOP_EXCEPTIONS: dict[str, type[TaskCancelled]] = {
    "cancelled": TaskCancelled,
    "timeout": TaskTimeout,
}


def stop_exception(reason: str) -> TaskCancelled:
    """The exception that a stop request for ``reason`` raises in the handler."""
    return _STOP_EXCEPTIONS.get(reason, TaskCancelled)(f"task stopped: {reason}")


class TaskContext:
    """The handler's view of its task: inputs, progress reporting, partial results, cancellation."""

    __slots__ = (
        "_pack",
        "_send",
        "_stop_reason",
        "attempt",
        "config",
        "deps",
        "description",
        "task_id",
        "type",
    )

    def __init__(
        self,
        task_id: str,
        task_type: str,
        description: str,
        config: dict[str, Any],
        deps: dict[str, Any],
        attempt: int,
        send: Callable[[protocol.Message], None],
        pack: Callable[[Any], bytes] = protocol.pack_payload,
    ) -> None:
        self.task_id = task_id
        self.type = task_type
        self.description = description
        self.config = config
        self.deps = deps
        self.attempt = attempt
        self._send = send
        self._pack = pack
        self._stop_reason: str | None = None

    def progress(self, completed: float, total: float | None = None, message: str = "") -> None:
        """Report progress: ``completed`` units of ``total`` (None when unknown), with a message."""
        if not isinstance(completed, int | float) or isinstance(completed, bool):
            raise TypeError(f"progress: completed must be a number, not {type(completed).__name__}")
        if total is not None and (not isinstance(total, int | float) or isinstance(total, bool)):
            raise TypeError(f"progress: total must be a number or None, not {type(total).__name__}")
        self._send(protocol.TaskProgress(self.task_id, completed, total, str(message)))

    def emit(self, data: Any) -> None:
        """Stream a partial result to the host (event ``task_partial``); raise if not msgpack-able."""
        self._send(protocol.TaskPartial(self.task_id, self._pack(data)))

    @property
    def cancelled(self) -> bool:
        """True once the host asked this task to stop (cancel or timeout)."""
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        """``"cancelled"`` or ``"timeout"`` once a stop was requested, else None."""
        return self._stop_reason

    def request_stop(self, reason: str) -> None:
        """Mark the task as asked to stop; called by the worker runtime when the host asks."""
        self._stop_reason = reason

    def check_cancelled(self) -> None:
        """Raise `TaskCancelled` (or `TaskTimeout`) if a stop was requested; else return."""
        if self._stop_reason is not None:
            raise stop_exception(self._stop_reason)

    def __repr__(self) -> str:
        return f"<TaskContext {self.task_id} type={self.type!r} attempt={self.attempt}>"
