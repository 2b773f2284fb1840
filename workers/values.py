"""The value types a handler receives: a failed dependency, a sub-task's result, a message."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple


class TaskError(NamedTuple):
    """A failed dependency, as ``ctx.deps`` shows it to a task that runs despite the failure.

    A tuple, so a handler can return what it was given: it travels as the list
    ``[kind, message, traceback, exception_type]``.
    """

    kind: str
    message: str
    traceback: str = ""
    exception_type: str = ""

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> TaskError:
        """The error of a result the host packed (fields a handler does not see, such as a
        crash's ``exitcode``, are left out)."""
        return cls(fields["kind"], fields["message"], fields["traceback"], fields["exception_type"])


@dataclass(frozen=True, slots=True)
class Message:
    """A message as a subscription receives it.

    ``data`` is what was published, after a msgpack round trip; ``sender`` the publishing task's
    id (None for the host); ``dropped`` how many older messages this subscription discarded since
    it last returned one (its buffer was full).
    """

    topic: str
    data: Any
    sender: str | None
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class ChildResult:
    """A sub-task's final result as `TaskContext.wait` returns it (the fields of ``TaskResult``)."""

    task_id: str
    status: str
    success: bool
    data: Any
    error: TaskError | None
    attempts: int
    worker_pid: int | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    parent: str | None

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ChildResult:
        """Rebuild a result the host packed (timestamps as epoch seconds)."""
        error = fields["error"]
        return cls(
            task_id=fields["task_id"],
            status=fields["status"],
            success=fields["success"],
            data=fields["data"],
            error=None if error is None else TaskError.from_wire(error),
            attempts=fields["attempts"],
            worker_pid=fields["worker_pid"],
            started_at=utc_moment(fields["started_at"]),
            finished_at=utc_moment(fields["finished_at"]),
            duration_s=fields["duration_s"],
            parent=fields["parent"],
        )


def utc_moment(timestamp: float | None) -> datetime | None:
    """A POSIX timestamp as an aware UTC datetime (None stays None)."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC)
