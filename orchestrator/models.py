"""What users read back: task results and errors, progress, worker and orchestrator status, events.

All are frozen pydantic models: snapshots that the orchestrator never changes after handing them
out, so they are safe to keep and to pass between threads.
"""

from __future__ import annotations

import enum
from concurrent.futures import CancelledError
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from orchestrator.errors import (
    MemoryLimitError,
    TaskFailedError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerInitError,
)
from workers.values import utc_moment

ModelT = TypeVar("ModelT", bound=BaseModel)
_set_attribute = object.__setattr__
# Field names by model class: pydantic's ``model_fields`` is a property that costs a microsecond.
# Each is also the fields-set of every model `assemble` builds of that class: one set shared by all
# rather than one per result, which the cyclic GC would walk for as long as the result is kept.
# Pydantic copies it before it changes it (``model_copy``), and adding a name it holds changes nothing.
_field_names: dict[type[BaseModel], set[str]] = {}


def assemble(cls: type[ModelT], **values: Any) -> ModelT:
    """``cls.model_construct(**values)`` at a quarter of its cost, for values that name every field.

    For the models the supervisor builds per task from values it made itself: nothing is
    validated and no default is filled in, so a missing field is an error here.
    """
    names = _field_names.get(cls)
    if names is None:
        names = _field_names[cls] = set(cls.model_fields)
    if values.keys() != names:
        missing, unknown = names - values.keys(), values.keys() - names
        raise TypeError(
            f"{cls.__name__} takes every field: missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    model = cls.__new__(cls)
    _set_attribute(model, "__dict__", values)
    _set_attribute(model, "__pydantic_fields_set__", names)
    _set_attribute(model, "__pydantic_extra__", None)
    _set_attribute(model, "__pydantic_private__", None)
    return model


class TaskStatus(enum.StrEnum):
    """Where a task is: ``queued`` -> ``running`` -> one of the three final states."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for completed, error and cancelled."""
        return self in _FINAL_STATES

    def __str__(self) -> str:
        return self.value


_FINAL_STATES = frozenset({TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.CANCELLED})

ErrorKind = Literal[
    "exception",
    "timeout",
    "worker_crashed",
    "memory_limit",
    "cancelled",
    "dependency_failed",
    "serialization",
    "rate_limit",
    "interrupted",
    "worker_init",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class TaskError(_Frozen):
    """Why a task did not complete: ``kind`` classifies, ``message`` explains.

    ``traceback`` is the worker's traceback as text (empty when the failure was not an exception
    in the handler) and ``exception_type`` the name of the exception's class. ``exitcode`` is a
    crashed worker's exit code (negative: the signal that killed it), when known.
    """

    kind: ErrorKind
    message: str
    traceback: str = ""
    exception_type: str = ""
    exitcode: int | None = None


class TaskResult(_Frozen):
    """The final outcome of a task: its data on success, its `TaskError` otherwise."""

    task_id: str
    status: TaskStatus
    success: bool
    data: Any = None
    error: TaskError | None = None
    attempts: int = 0
    worker_pid: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    parent: str | None = None

    def raise_for_error(self) -> None:
        """Return if the task completed; else raise what its failure maps to.

        ``timeout``: `TaskTimeoutError`; ``worker_crashed``: `WorkerCrashedError` (with the
        ``exitcode``); ``memory_limit``: `MemoryLimitError`; ``worker_init``: `WorkerInitError`;
        cancelled: `concurrent.futures.CancelledError`; anything else: `TaskFailedError`. The
        exception's ``result`` is this result.
        """
        if self.success:
            return
        raise failure_exception(self)


def failure_exception(result: TaskResult) -> BaseException:
    """The exception a failed or cancelled result maps to (see `TaskResult.raise_for_error`)."""
    error = result.error
    if result.status is TaskStatus.CANCELLED:
        return CancelledError(error.message if error else f"task {result.task_id} was cancelled")
    if error is None:
        return TaskFailedError(f"task {result.task_id} ended {result.status.value}", result)
    message = f"task {result.task_id} failed ({error.kind}): {error.message}"
    crashed = _CRASH_ERRORS.get(error.kind)
    if crashed is not None:
        return crashed(message, result, error.exitcode)
    if error.kind == "timeout":
        return TaskTimeoutError(message, result)
    return TaskFailedError(message, result)


_CRASH_ERRORS: dict[str, type[WorkerCrashedError]] = {
    "worker_crashed": WorkerCrashedError,
    "memory_limit": MemoryLimitError,
    "worker_init": WorkerInitError,
}


def result_wire(result: TaskResult) -> dict[str, Any]:
    """A final result as plain data, timestamps as POSIX seconds: what a worker's ``ctx.wait``
    receives (`workers.values.ChildResult.from_wire` reads it there) and what the journal stores."""
    return {
        "task_id": result.task_id,
        "status": result.status.value,
        "success": result.success,
        "data": result.data,
        "error": result.error.model_dump() if result.error else None,
        "attempts": result.attempts,
        "worker_pid": result.worker_pid,
        "started_at": result.started_at.timestamp() if result.started_at else None,
        "finished_at": result.finished_at.timestamp() if result.finished_at else None,
        "duration_s": result.duration_s,
        "parent": result.parent,
    }


def result_from_wire(fields: dict[str, Any]) -> TaskResult:
    """The `TaskResult` that `result_wire` gave ``fields`` of (``parent`` may be missing: older
    journals did not store it)."""
    status = TaskStatus(fields["status"])
    error = fields["error"]
    return TaskResult(
        task_id=fields["task_id"],
        status=status,
        success=status is TaskStatus.COMPLETED,
        data=fields["data"],
        error=TaskError(**error) if error else None,
        attempts=fields["attempts"],
        worker_pid=fields["worker_pid"],
        started_at=utc_moment(fields["started_at"]),
        finished_at=utc_moment(fields["finished_at"]),
        duration_s=fields["duration_s"],
        parent=fields.get("parent"),
    )


class Progress(_Frozen):
    """A progress report from a running handler: ``completed`` of ``total`` (None if unknown)."""

    task_id: str
    completed: float
    total: float | None = None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        """``completed / total`` clamped to [0, 1], or None when the total is unknown or 0."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.completed / self.total))


WorkerState = Literal["starting", "idle", "busy", "waiting", "stopping"]


class WorkerInfo(_Frozen):
    """A snapshot of one worker process; ``type`` is None until it runs its first task.

    On the Dask backend ``worker_id`` is ``"<dask worker address>/<n>"``.
    """

    worker_id: int | str
    pid: int | None
    type: str | None
    state: WorkerState
    current_task: str | None
    current_tasks: list[str]
    tasks_completed: int
    rss_bytes: int | None
    started_at: datetime
    last_active: datetime


class OrchestratorStatus(_Frozen):
    """A snapshot of the whole orchestrator: pool, queue and cumulative task counts."""

    workers: int
    busy: int
    idle: int
    queued: int
    running: int
    completed: int
    failed: int
    cancelled: int
    max_workers: int
    task_queue_size: int
    uptime_s: float
    type_limits: dict[str, int] = {}
    # "running", or "failed" when the supervisor stopped by a fault of ours (``failure`` says which);
    # "created", "closing", "closed" around them.
    state: Literal["created", "running", "failed", "closing", "closed"] = "running"
    failure: str | None = None


class Event(_Frozen):
    """Base of every event delivered to callbacks registered with ``orch.on``."""

    event: str
    timestamp: datetime


class TaskQueuedEvent(Event):
    """A task was accepted (``task_queued``)."""

    task_id: str
    type: str
    priority: int
    recovered: bool = False
    parent: str | None = None


class TaskStartedEvent(Event):
    """A worker started the task's handler (``task_started``)."""

    task_id: str
    type: str
    worker_id: int
    pid: int | None
    attempt: int
    parent: str | None = None


class TaskProgressEvent(Event):
    """The handler reported progress (``task_progress``)."""

    task_id: str
    progress: Progress


class TaskPartialEvent(Event):
    """The handler emitted a partial result (``task_partial``); ``index`` counts from 0."""

    task_id: str
    index: int
    data: Any


class TaskFinishedEvent(Event):
    """A task reached its final state (``task_completed``, ``task_error``, ``task_cancelled``)."""

    task_id: str
    result: TaskResult


class CollectionCompletedEvent(Event):
    """Every task of a group (``group_completed``) or a plan (``plan_completed``) is final."""

    name: str
    total: int
    counts: dict[str, int]


class GroupStatus(_Frozen):
    """A group's members (in submission order) and how many are in each status."""

    name: str
    total: int
    counts: dict[str, int]
    task_ids: list[str]


class Message(_Frozen):
    """A message published on a topic, as a host subscription's callback receives it.

    ``data`` is what was published, after a msgpack round trip; ``sender`` the publishing task's
    id (None for the host); ``dropped`` how many older messages this subscription discarded since
    the previous one it delivered (its buffer was full).
    """

    topic: str
    data: Any
    sender: str | None
    dropped: int = 0


class ScheduleInfo(_Frozen):
    """A recurring task as `ParallelOrchestrator.schedules` reports it.

    ``next_run`` is an aware UTC datetime (None while paused); ``runs`` counts the firings that
    submitted a task; ``task_ids`` are the last 100 of them, oldest first.
    """

    name: str
    every: float | None
    cron: str | None
    tz: str
    overlap: str
    paused: bool
    next_run: datetime | None
    last_run: datetime | None
    last_status: TaskStatus | None
    runs: int
    task_ids: list[str]


class ScheduleFiredEvent(Event):
    """A schedule submitted its ``run``-th task (``schedule_fired``)."""

    schedule: str
    task_id: str
    run: int


class ScheduleMissedEvent(Event):
    """A schedule did not fire ``count`` times (``schedule_missed``).

    ``reason``: ``overlap`` (the previous run was still going), ``late`` (the host was busy or
    the clock jumped), ``restart`` (no host was running), ``queue_full``, or ``error`` (the task
    was refused; the log says why).
    """

    schedule: str
    count: int
    reason: str


class WorkerSpawnedEvent(Event):
    """A worker process was started (``worker_spawned``)."""

    worker_id: int
    pid: int | None


class WorkerExitedEvent(Event):
    """A worker process ended (``worker_exited``); ``reason`` says why, ``exitcode`` how."""

    worker_id: int
    pid: int | None
    type: str | None
    reason: str
    exitcode: int | None


EVENT_NAMES = frozenset(
    {
        "task_queued",
        "task_started",
        "task_progress",
        "task_partial",
        "task_completed",
        "task_error",
        "task_cancelled",
        "worker_spawned",
        "worker_exited",
        "group_completed",
        "plan_completed",
        "schedule_fired",
        "schedule_missed",
    }
)


# The largest sequence number a task id can carry (SQLite's INTEGER is 64-bit signed).
_MAX_SEQ = 2**63 - 1


def task_seq(task_id: object) -> int | None:
    """The sequence number that ends a task id (``<instance>-<seq>``), or None when ``task_id``
    cannot be one of ours: not a str, no ASCII digits after the last '-', or beyond 64 bits."""
    if not isinstance(task_id, str):
        return None
    seq = task_id.rpartition("-")[2]
    if not (seq.isascii() and seq.isdigit() and len(seq) <= 19):
        return None
    number = int(seq)
    return number if number <= _MAX_SEQ else None
