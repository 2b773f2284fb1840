"""`Admission`: a spec becomes an accepted task. Validated, given a handler and an id, packed,
journaled and handed to the supervisor, all or nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from orchestrator.config import OrchestratorConfig, TaskSpec, check_handler, describe
from orchestrator.errors import (
    GroupNotFoundError,
    InvalidTaskError,
    JournalError,
    OrchestratorClosedError,
    QueueFullError,
    UnknownTaskTypeError,
)
from orchestrator.journal import Journal, NewTask
from orchestrator.lookup import TaskIds, TaskLookup
from orchestrator.models import Progress, TaskResult
from orchestrator.plans import PlanError, references, validate_plan
from orchestrator.scheduler import QueueSlots
from orchestrator.schedules import delayed_until
from orchestrator.supervisor import Supervisor, TaskRecord
from workers import protocol
from workers.calls import CALL_HANDLER, CALL_TYPE
from workers.shm import BlockWriter

# A task's own callbacks, run on the event thread: on_progress, on_complete, on_error.
Callbacks = tuple[
    Callable[[Progress], object] | None,
    Callable[[TaskResult], object] | None,
    Callable[[TaskResult], object] | None,
]


class Admission:
    """Admits tasks from callers' threads, and sub-tasks and schedule firings on the supervisor's.

    A task is admitted whole or not at all: its queue slot, its place in the task table and its
    journal row are taken together, and given back together when any of them fails.
    """

    def __init__(
        self,
        config: OrchestratorConfig,
        tasks: dict[str, TaskRecord],
        ids: TaskIds,
        lookup: TaskLookup,
        blocks: BlockWriter | None,
        supervisor: Callable[[], Supervisor],
        journal: Callable[[], Journal | None],
    ) -> None:
        self._config = self.config = config
        self.handlers = config.task_handlers()
        self._tasks = tasks
        self._ids = ids
        self._lookup = lookup
        self._blocks = blocks
        self._supervisor = supervisor
        self._journal = journal
        self.queue_slots = QueueSlots(config.task_queue_size)
        self._registering = threading.Lock()
        # On Dask: the task types some node of the cluster offers now.
        self.offered_types: Callable[[], set[str]] | None = None

    def submit(
        self,
        spec: TaskSpec | dict[str, Any],
        run_at: datetime | None,
        delay: float | None,
        callbacks: Callbacks,
    ) -> str:
        """Queue one task from a caller; its id."""
        if run_at is not None or delay is not None:
            delayed_until(run_at, delay, time.time())
        task = validate_spec(spec)
        handler = self.handler_for(task.type)
        for name, callback in zip(("on_progress", "on_complete", "on_error"), callbacks, strict=True):
            if callback is not None and not callable(callback):
                raise TypeError(f"{name} must be callable, not {type(callback).__name__}")
        self.check_dependencies(task)
        record = self.new_record(task, handler)
        if delay is not None:
            record.due += delay
        elif run_at is not None:
            record.run_at = run_at.timestamp()
            record.due += record.run_at - time.time()
        record.on_progress, record.on_complete, record.on_error = callbacks
        self._enqueue([record])
        return record.task_id

    def submit_plan_tasks(
        self, plan_id: str, tasks: list[dict[str, Any]], known: dict[str, str]
    ) -> dict[str, str]:
        """Queue a plan's tasks (which may depend on its ``known`` ones), all or none; their plan
        id -> task id."""
        if not isinstance(tasks, list):
            raise PlanError(f"a plan is a list of task specs, not {type(tasks).__name__}")
        order = validate_plan(tasks, known)
        by_id = {task["id"]: task for task in tasks}
        ids = dict(known)
        records = []
        for local_id in order:
            fields = {key: value for key, value in by_id[local_id].items() if key != "id"}
            fields["depends_on"] = [ids[dep] for dep in fields.get("depends_on", [])]
            try:
                spec = validate_spec(fields)
                record = self.new_record(spec, self.handler_for(spec.type))
            except (InvalidTaskError, UnknownTaskTypeError) as exc:
                raise PlanError(f"task {local_id!r}: {exc}") from exc
            record.plan = plan_id
            record.plan_refs = {ref: ids[ref] for ref in references(spec.config)} or None
            ids[local_id] = record.task_id
            records.append(record)
        self._enqueue(records)
        return {local_id: ids[local_id] for local_id in order}

    def admit_child(self, fields: dict[str, Any], parent: TaskRecord, detached: bool) -> TaskRecord:
        """A task submitted by a running one, on the supervisor's thread (accepted by the caller)."""
        spec = validate_spec(fields)
        self.check_dependencies(spec)
        record = self.new_record(spec, self.handler_for(spec.type))
        record.parent, record.detached = parent.task_id, detached
        self._admit([record])
        return record

    def admit_scheduled(self, spec: TaskSpec, delay: float) -> TaskRecord:
        """A schedule's firing, on the supervisor's thread: admitted here, accepted by the caller."""
        record = self.new_record(spec, self.handler_for(spec.type))
        record.due += delay
        self._admit([record])
        return record

    def submit_call(self, spec: TaskSpec, callbacks: Callbacks, bind: Callable[[TaskRecord], None]) -> None:
        """Queue an executor's task (type ``call``, a validated spec), never journaled. ``bind``
        gets its record before it is queued (so before any of its callbacks run): the caller's
        future reads what the call raised there, and sets the record's supervisor-thread hooks."""
        self._check_offered(CALL_TYPE)
        record = self.new_record(spec, CALL_HANDLER)
        record.journaled = False
        record.on_progress, record.on_complete, record.on_error = callbacks
        bind(record)
        self._enqueue([record])

    def register(self, task_type: str, path: str) -> None:
        """Add a task type after construction (`ParallelOrchestrator.register_handler`).

        Raises:
            ValueError: a malformed name or path, the reserved ``call``, or a name already taken
                (a built-in or a registered type).
        """
        check_handler(task_type, path)
        with self._registering:
            taken = self.handlers.get(task_type)
            if taken is not None:
                raise ValueError(
                    f"the task type {task_type!r} is taken (its handler is {taken!r}); choose another name"
                )
            # A new dict, swapped in whole: readers on other threads see the old one or the new one.
            self.handlers = {**self.handlers, task_type: path}

    def handler_for(self, task_type: str) -> str:
        """The handler path of a task type (on Dask, one some node offers now)."""
        if task_type == CALL_TYPE:
            raise InvalidTaskError(
                f"the task type {CALL_TYPE!r} is reserved for functions submitted through an executor: "
                "use orch.executor().submit(fn, *args)"
            )
        handler = self.handlers.get(task_type)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            raise UnknownTaskTypeError(
                f"unknown task type {task_type!r}; known types: {known} "
                "(register more with OrchestratorConfig(handlers={name: 'module:function'}) "
                "or orch.register_handler(name, 'module:function'))"
            )
        self._check_offered(task_type)
        return handler

    def _check_offered(self, task_type: str) -> None:
        if self.offered_types is not None and task_type not in self.offered_types():
            raise UnknownTaskTypeError(
                f"no Dask worker offers the task type {task_type!r} now; start workers with "
                f'--resources "{task_type}=N"'
            )

    def check_dependencies(self, task: TaskSpec) -> None:
        """Every task and group the spec depends on exists."""
        for dep_id in task.depends_on:
            self._lookup.find(dep_id)  # unknown or evicted: TaskNotFoundError saying which
        group = task.depends_on_group
        if group is not None:
            supervisor = self._supervisor()
            if not supervisor.call(lambda: group in supervisor.results.group_names()):
                raise GroupNotFoundError(f"depends_on_group names {group!r}, a group with no tasks")

    def new_record(self, spec: TaskSpec, handler: str) -> TaskRecord:
        """A record for the spec, with a new id and its config packed (large buffers in blocks)."""
        task_id, seq = self._ids.issue()
        blocks: list[str] = []
        packed = protocol.pack_payload(spec.config, self._blocks, blocks)
        record = TaskRecord(task_id, seq, spec, handler, packed, blocks or None)
        record.due = time.monotonic()
        return record

    def _enqueue(self, records: list[TaskRecord]) -> None:
        """Queue records together, or none of them (queue full, or shut down meanwhile)."""
        supervisor = self._supervisor()
        self._admit(records)
        try:
            supervisor.accept(records)
        except OrchestratorClosedError:
            self._unadmit(records)
            journal = self._journal()
            if journal is not None:
                journal.withdraw([record.task_id for record in records if record.journaled])
            raise

    def _admit(self, records: list[TaskRecord]) -> None:
        """Take queue slots for the records, track them and journal them; all or none."""
        if not self.queue_slots.take(len(records)):
            raise QueueFullError(
                f"the queue is full: {self._config.task_queue_size} tasks may wait to run and "
                f"{len(records)} more would not fit; wait for some to start or raise task_queue_size"
            )
        for record in records:
            self._tasks[record.task_id] = record
        journal = self._journal()
        rows = [_journal_row(record) for record in records if record.journaled] if journal else None
        if journal is not None and rows:
            try:
                journal.add(rows)
            except JournalError:
                self._unadmit(records)
                raise

    def _unadmit(self, records: list[TaskRecord]) -> None:
        for record in records:
            del self._tasks[record.task_id]
        self.queue_slots.untake(len(records))


def validate_spec(spec: TaskSpec | dict[str, Any]) -> TaskSpec:
    """A `TaskSpec` from a spec or a dict; `InvalidTaskError` naming the field that is wrong."""
    if isinstance(spec, TaskSpec):
        return spec
    if not isinstance(spec, dict):
        raise InvalidTaskError(f"a task spec must be a TaskSpec or a dict, not {type(spec).__name__}")
    try:
        return TaskSpec.model_validate(spec)
    except ValidationError as exc:
        raise InvalidTaskError(f"invalid task spec: {describe(exc)}") from exc


def _journal_row(record: TaskRecord) -> NewTask:
    spec = record.spec
    now_wall = time.time()
    return NewTask(
        task_id=record.task_id,
        seq=record.seq,
        spec=spec.model_dump_json(exclude={"config"}, exclude_defaults=True),  # a smaller row: faster moves
        config=protocol.pack_payload(spec.config),
        handler=record.handler,
        plan=record.plan,
        plan_refs=json.dumps(record.plan_refs) if record.plan_refs else None,
        submitted_at=now_wall,
        not_before=_not_before(record, now_wall),
        parent=record.parent,
        detached=record.detached,
    )


def _not_before(record: TaskRecord, now_wall: float) -> float | None:
    """A delayed task's due time on the wall clock (a restart has no use for monotonic times)."""
    if record.run_at is not None:
        return record.run_at
    ahead = record.due - time.monotonic()
    return now_wall + ahead if ahead > 0 else None
