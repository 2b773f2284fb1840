"""Telling the world: every event, task log line and metric hook of the supervisor, built here once.

Each method stands for one moment of a task's or a worker's life and does all of that moment's
telling. An event is built only when someone listens (one cheap test, as trio's instruments do);
the event thread delivers it, never this one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from orchestrator.backends.base import WorkerHandle, exit_reason_of
from orchestrator.events import Callback, EventBus, call_each
from orchestrator.logs import TaskRef, task_extra, task_logger
from orchestrator.metrics import Metrics
from orchestrator.models import (
    CollectionCompletedEvent,
    Event,
    Progress,
    ScheduleFiredEvent,
    ScheduleMissedEvent,
    TaskFinishedEvent,
    TaskPartialEvent,
    TaskProgressEvent,
    TaskQueuedEvent,
    TaskResult,
    TaskStartedEvent,
    TaskStatus,
    WorkerExitedEvent,
    WorkerSpawnedEvent,
    assemble,
)
from orchestrator.supervisor.graph import Collection
from orchestrator.supervisor.record import TaskRecord

logger = logging.getLogger("orchestrator.supervisor")

_MODELS: Final[dict[str, type[Event]]] = {
    "task_queued": TaskQueuedEvent,
    "task_started": TaskStartedEvent,
    "task_partial": TaskPartialEvent,
    "worker_spawned": WorkerSpawnedEvent,
    "worker_exited": WorkerExitedEvent,
    "group_completed": CollectionCompletedEvent,
    "plan_completed": CollectionCompletedEvent,
    "schedule_fired": ScheduleFiredEvent,
    "schedule_missed": ScheduleMissedEvent,
}

_FINAL_EVENT: Final = {
    TaskStatus.COMPLETED: "task_completed",
    TaskStatus.ERROR: "task_error",
    TaskStatus.CANCELLED: "task_cancelled",
}


class Announcer:
    """Events for listeners, records for the task log, counts for metrics."""

    def __init__(self, bus: EventBus, metrics: Metrics | None, log_tasks: bool) -> None:
        self._bus = bus
        self._metrics = metrics
        self._log_tasks = log_tasks

    # ----------------------------------------------------------------- a task's life

    def queued(self, record: TaskRecord) -> None:
        """A task entered the queue (submitted, recovered, or fired by a schedule)."""
        spec = record.spec
        if self._metrics is not None:
            self._metrics.task_queued(spec.type, spec.priority)
        self.log(record, logging.INFO, "task %s queued (priority %d)", record.task_id, spec.priority)
        self._event(
            "task_queued",
            record,
            None,
            type=spec.type,
            priority=spec.priority,
            recovered=record.recovered,
            parent=record.parent,
        )

    def started(self, record: TaskRecord, worker: WorkerHandle, queue_wait: float) -> None:
        """A worker began an attempt of the task."""
        spec = record.spec
        if self._metrics is not None:
            self._metrics.task_started(spec.type, spec.priority, queue_wait)
        self.log(
            record,
            logging.INFO,
            "task %s started on worker %s (attempt %d)",
            record.task_id,
            worker.worker_id,
            record.attempts,
        )
        if record.on_start is not None:
            record.on_start()  # on this thread: a future turning running costs no hand-off
        self._event(
            "task_started",
            record,
            worker.pid,
            type=spec.type,
            worker_id=worker.worker_id,
            pid=worker.pid,
            attempt=record.attempts,
            parent=record.parent,
        )

    def progress(self, record: TaskRecord, progress: Progress, pid: int | None) -> None:
        """A progress report, to the task's ``on_progress`` and to listeners (coalesced)."""
        listeners = self._bus.listeners("task_progress")
        if listeners or record.on_progress is not None:
            about = (record.task_id, record.spec.type, pid)
            self._bus.post(
                record.task_id,
                _deliver_progress,
                record.on_progress,
                listeners,
                progress,
                about,
                coalescible=True,
            )

    def partial(self, record: TaskRecord, index: int, data: Any, pid: int | None) -> None:
        """A streamed partial result."""
        self._event("task_partial", record, pid, partial=True, index=index, data=data)

    def attempt_failed(self, record: TaskRecord, kind: str) -> None:
        """An attempt ended without a result (retried or not)."""
        if self._metrics is not None:
            self._metrics.attempt_failed(record.spec.type, kind)

    def retrying(self, record: TaskRecord, was_running: bool, kind: str, message: str, delay: float) -> None:
        """A failed attempt goes back in line after ``delay`` seconds."""
        if self._metrics is not None:
            self._metrics.task_requeued(record.spec.type, record.spec.priority, was_running, kind)
        self.log(
            record,
            logging.INFO,
            "task %s attempt %d failed (%s: %s); retrying in %.2f s",
            record.task_id,
            record.attempts,
            kind,
            message,
            delay,
        )

    def finished(self, record: TaskRecord, result: TaskResult, was_running: bool) -> None:
        """The task has its final result: counted and logged (announced later by `final`)."""
        if self._metrics is not None:
            kind = result.error.kind if result.error else None
            self._metrics.task_finished(
                record.spec.type,
                record.spec.priority,
                was_running,
                result.status.value,
                kind,
                result.duration_s,
            )
        if result.success:
            duration = result.duration_s or 0.0
            self.log(record, logging.INFO, "task %s completed in %.3f s", record.task_id, duration)
        elif result.error is not None and result.status is TaskStatus.ERROR:
            kind, message = result.error.kind, result.error.message
            self.log(record, logging.WARNING, "task %s failed (%s): %s", record.task_id, kind, message)
        else:
            message = result.error.message if result.error else "cancelled"
            self.log(record, logging.INFO, "task %s %s", record.task_id, message)

    def final(self, record: TaskRecord, result: TaskResult) -> None:
        """The final result, to listeners and the task's ``on_complete`` or ``on_error``."""
        name = _FINAL_EVENT[result.status]
        listeners = self._bus.listeners(name)
        callback = record.on_complete if result.success else record.on_error
        if result.success and record.take_success is not None and record.take_success(result.data):
            callback = None  # an executor's future took its value here: no hand-off to the event thread
        if listeners or callback is not None:
            about = (record.task_id, record.spec.type, record.worker_pid)
            self._bus.post(record.task_id, _deliver_final, callback, listeners, name, result, about)

    def collection_completed(self, collection: Collection, counts: dict[str, int]) -> None:
        """Every task of a group or a plan is final."""
        self._event(
            f"{collection.kind}_completed",
            None,
            None,
            name=collection.name,
            total=len(collection.members),
            counts=counts,
        )

    def log(self, record: TaskRecord, level: int, message: str, *args: Any) -> None:
        """A record about a task's lifecycle: at ``level`` with log_tasks, else at DEBUG."""
        if not self._log_tasks:
            level = logging.DEBUG
        if task_logger.isEnabledFor(level):
            extra = task_extra(record.task_id, record.spec.type, record.worker_pid)
            task_logger.log(level, message, *args, extra=extra)

    # ----------------------------------------------------------------- workers

    def worker_spawned(self, worker: WorkerHandle) -> None:
        """A worker process was started (or arrived from a Dask node)."""
        if self._metrics is not None:
            self._metrics.worker_spawned()
        self._event("worker_spawned", None, None, worker_id=worker.worker_id, pid=worker.pid)

    def crashed(self, worker: WorkerHandle) -> None:
        """A worker died unasked (counted before its tasks' results go out)."""
        if self._metrics is not None:
            self._metrics.worker_crashed(worker.type)

    def worker_exited(self, worker: WorkerHandle, reason: str, exitcode: int | None) -> None:
        """A worker process is gone, for ``reason``."""
        logger.debug(
            "worker %d (pid %s) exited: %s, %s",
            worker.worker_id,
            worker.pid,
            reason,
            exit_reason_of(exitcode),
        )
        self._event(
            "worker_exited",
            None,
            None,
            worker_id=worker.worker_id,
            pid=worker.pid,
            type=worker.type,
            reason=reason,
            exitcode=exitcode,
        )

    def memory_limit_kill(self, worker: WorkerHandle) -> None:
        """A worker went over max_memory_mb (counted before its tasks' results go out)."""
        if self._metrics is not None:
            self._metrics.memory_limit_kill(worker.type)

    # ----------------------------------------------------------------- schedules

    def schedule(self, name: str, **fields: Any) -> None:
        """A ``schedule_fired`` or ``schedule_missed`` event."""
        self._event(name, None, None, **fields)
        logger.debug("%s %s", name, fields)

    # ----------------------------------------------------------------- the one builder

    def _event(
        self,
        name: str,
        record: TaskRecord | None,
        pid: int | None,
        /,
        *,
        partial: bool = False,
        **fields: Any,
    ) -> None:
        # Positional-only: events have fields called name and pid too.
        listeners = self._bus.listeners(name)
        if not listeners:
            return
        if record is None:
            event = assemble(_MODELS[name], event=name, timestamp=datetime.now(UTC), **fields)
            self._bus.post(None, call_each, listeners, event, name)
            return
        task_id = record.task_id
        event = assemble(_MODELS[name], event=name, timestamp=datetime.now(UTC), task_id=task_id, **fields)
        about = (task_id, record.spec.type, pid)
        self._bus.post(task_id, call_each, listeners, event, name, about, partial=partial)


def _deliver_progress(
    callback: Callable[[Progress], object] | None,
    listeners: tuple[Callback, ...],
    progress: Progress,
    about: TaskRef,
) -> None:
    if callback is not None:
        call_each((callback,), progress, "on_progress", about)
    if listeners:
        event = assemble(
            TaskProgressEvent,
            event="task_progress",
            timestamp=datetime.now(UTC),
            task_id=progress.task_id,
            progress=progress,
        )
        call_each(listeners, event, "task_progress", about)


def _deliver_final(
    callback: Callable[[TaskResult], object] | None,
    listeners: tuple[Callback, ...],
    name: str,
    result: TaskResult,
    about: TaskRef,
) -> None:
    if listeners:
        event = assemble(
            TaskFinishedEvent, event=name, timestamp=datetime.now(UTC), task_id=result.task_id, result=result
        )
        call_each(listeners, event, name, about)
    if callback is not None:
        call_each((callback,), result, "on_complete" if result.success else "on_error", about)
