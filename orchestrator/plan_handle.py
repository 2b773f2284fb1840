"""`PlanHandle`: what `ParallelOrchestrator.submit_plan` returns."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, final

from orchestrator.models import TaskResult, TaskStatus
from orchestrator.supervisor.graph import status_counts

# Queues a plan's tasks: (plan id, task specs, plan ids known so far) -> their plan id -> task id.
SubmitPlanTasks = Callable[[str, list[dict[str, Any]], dict[str, str]], dict[str, str]]


class PlannedTasks(Protocol):
    """The members of an orchestrator that a plan's handle uses (public ones)."""

    def get_task_status(self, task_id: str) -> TaskStatus: ...

    def as_completed(self, task_ids: Iterable[str], timeout: float | None = None) -> Iterator[TaskResult]: ...

    def cancel(self, task_id: str) -> bool: ...


@final
class PlanHandle:
    """A submitted plan: its task ids, status and results; `add` extends it while it runs."""

    def __init__(self, orchestrator: PlannedTasks, plan_id: str, submit: SubmitPlanTasks) -> None:
        self.plan_id = plan_id
        self._orchestrator = orchestrator
        self._submit = submit
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()  # add() may be called from several planner threads

    @property
    def ids(self) -> dict[str, str]:
        """Plan id -> task id, for every task of the plan so far."""
        return dict(self._ids)

    def add(self, tasks: list[dict[str, Any]]) -> dict[str, str]:
        """Append tasks (which may depend on the plan's tasks); returns their plan id -> task id.

        Raises:
            PlanError: as `ParallelOrchestrator.submit_plan`; nothing of ``tasks`` is queued.
        """
        with self._lock:
            added = self._submit(self.plan_id, tasks, self._ids)
            self._ids.update(added)
            return added

    def status(self) -> dict[str, int]:
        """How many of the plan's tasks are in each status."""
        return status_counts([self._orchestrator.get_task_status(t) for t in self._ids.values()])

    def wait(self, timeout: float | None = None) -> dict[str, TaskResult]:
        """Wait for every task of the plan; plan id -> result.

        Raises:
            TimeoutError: not all final after ``timeout`` seconds.
        """
        by_task = {task_id: plan_id for plan_id, task_id in self._ids.items()}
        return {by_task[r.task_id]: r for r in self._orchestrator.as_completed(by_task, timeout)}

    def cancel(self) -> int:
        """Cancel every task of the plan that is not final; returns how many were."""
        return sum(self._orchestrator.cancel(task_id) for task_id in self._ids.values())

    def __repr__(self) -> str:
        return f"<PlanHandle {self.plan_id} tasks={len(self._ids)}>"
