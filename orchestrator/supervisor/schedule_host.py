"""`TaskScheduleHost`: what the schedule runner does to tasks, carried out on the supervisor's thread."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from orchestrator.config import TaskSpec
from orchestrator.errors import QueueFullError
from orchestrator.models import TaskStatus
from orchestrator.scheduler import Timer, Timers
from orchestrator.schedules import Schedule
from orchestrator.supervisor.announce import Announcer
from orchestrator.supervisor.fleet import Fleet
from orchestrator.supervisor.journaling import JournalLink
from orchestrator.supervisor.lifecycle import Lifecycle
from orchestrator.supervisor.record import TaskRecord
from workers import protocol

Admit = Callable[[TaskSpec, float], TaskRecord]


def clocks() -> tuple[float, float]:
    """(monotonic, wall-clock) now: what schedules measure time with."""
    return time.monotonic(), time.time()


class TaskScheduleHost:
    """The `orchestrator.schedules.ScheduleHost` of a supervisor: fires become tasks, schedules
    are journaled, and the runner's one timer lives among the supervisor's timers."""

    def __init__(
        self,
        tasks: dict[str, TaskRecord],
        timers: Timers,
        admit: Admit | None,
        *,
        lifecycle: Lifecycle,
        fleet: Fleet,
        announce: Announcer,
        journaling: JournalLink,
    ) -> None:
        self._tasks = tasks
        self._timers = timers
        self._admit = admit
        self._lifecycle = lifecycle
        self._fleet = fleet
        self._announce = announce
        self._journaling = journaling
        self._timer: Timer | None = None

    def submit_scheduled(self, schedule: Schedule, delay: float) -> str:
        """Queue one firing of ``schedule`` (raises QueueFullError when the queue has no room)."""
        if self._admit is None or self._fleet.closing:
            raise QueueFullError("the orchestrator is shutting down")
        record = self._admit(schedule.spec, delay)
        self._lifecycle.accept(record)
        return record.task_id

    def task_is_open(self, task_id: str) -> bool:
        """Whether the task is known and not final."""
        record = self._tasks.get(task_id)
        return record is not None and record.result is None

    def cancel_task(self, task_id: str) -> None:
        """Cancel a task if it is still open."""
        record = self._tasks.get(task_id)
        if record is not None and record.result is None:
            self._lifecycle.cancel(record, "cancelled: replaced by the next run of its schedule")

    def task_status(self, task_id: str) -> TaskStatus | None:
        """A task's status, or None once it was evicted."""
        record = self._tasks.get(task_id)
        return None if record is None else record.status

    def emit(self, name: str, **fields: Any) -> None:
        """Post a ``schedule_fired`` or ``schedule_missed`` event to its listeners."""
        self._announce.schedule(name, **fields)

    def save_schedule(self, schedule: Schedule | None, name: str) -> None:
        """Journal a schedule as it now stands, or its removal."""
        journal = self._journaling.journal
        if journal is None:
            return
        if schedule is None:
            journal.schedule_removed(name)
            return
        spec = schedule.spec
        journal.schedule_saved(
            name,
            spec.model_dump_json(exclude={"config"}),
            protocol.pack_payload(spec.config),
            schedule.to_json(*clocks()),
        )

    def arm(self, delay: float | None, action: Callable[[], None]) -> None:
        """The schedule runner's one timer (never armed again once shutting down)."""
        self.disarm()
        if delay is not None and not self._fleet.closing:
            self._timer = self._timers.schedule(time.monotonic() + delay, action)

    def disarm(self) -> None:
        """No schedule fires from now on (until armed again)."""
        Timers.cancel(self._timer)
        self._timer = None
