"""`HostSchedules`: the host's side of schedules. A new one checked, and every operation run on
the supervisor's thread, journaled before it returns."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from orchestrator.admission import Admission, validate_spec
from orchestrator.config import TaskSpec
from orchestrator.errors import ScheduleError
from orchestrator.journal import Journal
from orchestrator.schedules import (
    CatchUp,
    Overlap,
    Schedule,
    ScheduleRunner,
    aware_timestamp,
    interval_seconds,
)
from orchestrator.supervisor import Supervisor

T = TypeVar("T")


class HostSchedules:
    """Adds, changes and lists the schedules that the supervisor's `ScheduleRunner` fires."""

    def __init__(
        self,
        admission: Admission,
        supervisor: Callable[[], Supervisor],
        journal: Callable[[], Journal | None],
    ) -> None:
        self._admission = admission
        self._supervisor = supervisor
        self._journal = journal

    def add(
        self,
        spec: TaskSpec | dict[str, Any],
        name: str,
        every: float | timedelta | None,
        cron: str | None,
        tz: str,
        start_at: datetime | None,
        end_at: datetime | None,
        max_runs: int | None,
        jitter: float,
        overlap: Overlap,
        catch_up: CatchUp,
    ) -> str:
        """See `ParallelOrchestrator.schedule`."""
        task = validate_spec(spec)
        self._admission.handler_for(task.type)
        if task.depends_on or task.depends_on_group:
            raise ScheduleError("a scheduled task cannot have depends_on or depends_on_group")
        schedule = Schedule(
            name,
            task,
            None if every is None else interval_seconds(every),
            cron,
            tz,
            None if start_at is None else aware_timestamp(start_at, "start_at"),
            None if end_at is None else aware_timestamp(end_at, "end_at"),
            max_runs,
            jitter,
            overlap,
            catch_up,
        )
        self.run(lambda runner: runner.add(schedule))
        return name

    def run(self, operation: Callable[[ScheduleRunner], T]) -> T:
        """``operation`` on the supervisor's thread; its changes are in the journal's intake log
        when this returns (the supervisor never waits on the disk)."""
        supervisor = self._supervisor()
        journal = self._journal()

        def run() -> T:
            outcome = operation(supervisor.schedules)
            if journal is not None:
                journal.flush(wait=False)
            return outcome

        return supervisor.call(run)
