"""Who waits for whom: dependencies, groups and plans. Bookkeeping only, owned by the supervisor.

A task with dependencies waits until each is final; the supervisor then readies it, or fails it
with ``dependency_failed``, by the task's ``on_dependency_failure``. A group or a plan is a named
collection whose completion (every member final) is an event; a group also serves as a fan-in's
dependency set, fixed when the fan-in is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.models import TaskStatus
from orchestrator.supervisor.record import TaskRecord


@dataclass
class Collection:
    """A group's or a plan's members, in submission order, and how many are not final yet."""

    kind: str
    name: str
    members: list[str] = field(default_factory=list)
    open: int = 0


class TaskGraph:
    """Dependants of each open task, and the groups and plans tasks belong to."""

    def __init__(self) -> None:
        self._dependants: dict[str, list[TaskRecord]] = {}
        self.groups: dict[str, Collection] = {}
        self.plans: dict[str, Collection] = {}

    def link(self, record: TaskRecord, tasks: dict[str, TaskRecord]) -> TaskRecord | None:
        """Fix the task's dependencies and wait for the open ones.

        Returns a dependency that already failed when the task's policy is to fail with it
        (the task then waits for nothing), else None.
        """
        spec = record.spec
        if not spec.depends_on and spec.depends_on_group is None:
            return None
        dep_ids = list(spec.depends_on)
        if spec.depends_on_group is not None:
            dep_ids += self.groups[spec.depends_on_group].members
        # A member evicted from memory (max_results_in_memory) has no result left to give.
        record.dep_ids = [dep_id for dep_id in dict.fromkeys(dep_ids) if dep_id in tasks]
        waiting: set[str] = set()
        for dep_id in record.dep_ids:
            dependency = tasks[dep_id]
            dependency.needed_by += 1
            if dependency.result is None:
                waiting.add(dep_id)
            elif not dependency.result.success and spec.on_dependency_failure == "fail":
                return dependency
        for dep_id in waiting:
            self._dependants.setdefault(dep_id, []).append(record)
        record.waiting = waiting or None
        return None

    def forget_dependant(self, dep_id: str, record: TaskRecord) -> None:
        """``record`` no longer waits for ``dep_id`` (it failed for another dependency)."""
        waiting = self._dependants.get(dep_id)
        if waiting and record in waiting:
            waiting.remove(record)

    def join(self, record: TaskRecord) -> None:
        """Count the task in its group and its plan."""
        if record.spec.group is None and record.plan is None:
            return
        for kind, collections, name in (
            ("group", self.groups, record.spec.group),
            ("plan", self.plans, record.plan),
        ):
            if name is not None:
                collection = collections.setdefault(name, Collection(kind, name))
                collection.members.append(record.task_id)
                collection.open += 1

    def involves(self, record: TaskRecord) -> bool:
        """Whether the task has dependants, or belongs to a group or a plan."""
        return record.task_id in self._dependants or record.spec.group is not None or record.plan is not None

    def resolve(self, record: TaskRecord) -> tuple[list[TaskRecord], list[Collection]]:
        """The task is final: its dependants (no longer waiting for it) and what it completed."""
        dependants = self._dependants.pop(record.task_id, [])
        for dependant in dependants:
            if dependant.waiting is not None:
                dependant.waiting.discard(record.task_id)
        completed = []
        for collections, name in ((self.groups, record.spec.group), (self.plans, record.plan)):
            collection = collections.get(name) if name is not None else None
            if collection is not None:
                collection.open -= 1
                if collection.open == 0:
                    completed.append(collection)
        return dependants, completed


def status_counts(statuses: list[TaskStatus]) -> dict[str, int]:
    """How many of each status, every status named (0 when none)."""
    counts = dict.fromkeys((s.value for s in TaskStatus), 0)
    for status in statuses:
        counts[status.value] += 1
    return counts
