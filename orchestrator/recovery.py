"""After a restart: the tasks and schedules a journal holds, rebuilt as the host tracks them."""

from __future__ import annotations

import json
import logging
import time
from typing import NamedTuple, cast

from orchestrator.config import TaskSpec
from orchestrator.errors import OrchestratorError
from orchestrator.journal import Journal, JournalRow, UnreadableRow, journal_result, restore_result
from orchestrator.models import ErrorKind, TaskError, TaskResult, TaskStatus
from orchestrator.schedules import Schedule
from orchestrator.supervisor import TaskRecord
from workers import protocol
from workers.shm import BlockWriter

logger = logging.getLogger("orchestrator")

# What a row that does not decode raises on its way through TaskSpec, the payload and the result.
_UNREADABLE = (OrchestratorError, ValueError, TypeError, KeyError)


class Recovered(NamedTuple):
    """A journal's tasks: open ones to run again, final ones readable again."""

    to_run: list[TaskRecord]
    final: list[TaskRecord]
    # Ids of the tasks that were queued or running when the last host died, in submission order.
    reopened: list[str]
    highest_seq: int


def set_final(record: TaskRecord, result: TaskResult) -> None:
    """Give a record its final result (off the supervisor: it does not run yet, or the record is a copy)."""
    record.status = result.status
    record.result = result


class Recovery:
    """Rebuilds records from one journal's rows, into the orchestrator's task table."""

    def __init__(
        self,
        journal: Journal,
        tasks: dict[str, TaskRecord],
        handlers: dict[str, str],
        blocks: BlockWriter | None,
    ) -> None:
        self._journal = journal
        self._tasks = tasks
        self._handlers = handlers
        self._blocks = blocks

    def tasks(self) -> Recovered:
        """Every journaled task; a row that does not decode ends as a failed task that says why."""
        recovered = Recovered([], [], [], 0)
        highest = 0
        # Tasks whose attempt the crash cut short: their attached children go with them.
        interrupted: set[str] = set()
        for row in self._journal.rows():
            highest = max(highest, row.seq)
            try:
                if isinstance(row, UnreadableRow):
                    raise ValueError(row.error)
                record = self.restore(row)
            except _UNREADABLE as exc:
                recovered.final.append(self._quarantine(row, exc))
                continue
            self._tasks[record.task_id] = record
            if row.status == "running":
                interrupted.add(record.task_id)
            if record.result is None and record.parent in interrupted and not record.detached:
                message = f"its parent {record.parent} was interrupted by the host's crash"
                self._end(record, "interrupted", message, TaskStatus.CANCELLED)
                interrupted.add(record.task_id)
            if row.status in ("queued", "running"):
                recovered.reopened.append(record.task_id)
            (recovered.to_run if record.result is None else recovered.final).append(record)
        self._journal.flush()
        return recovered._replace(highest_seq=highest)

    def evicted(self, task_id: str) -> TaskRecord | None:
        """A final task that left memory, rebuilt from its row (None: no such final row)."""
        row = self._journal.row(task_id)
        return self.restore(row) if row is not None and row.result is not None else None

    def restore(self, row: JournalRow) -> TaskRecord:
        """The record a row describes; an open task that cannot run again ends here, saying why."""
        spec = TaskSpec.model_validate({**row.spec, "config": protocol.unpack_payload(row.config)})
        status = TaskStatus(row.status)
        # Decoded before any block is made for the config, so a bad result leaves no block behind.
        result = restore_result(row.task_id, status, row.attempts, row.result) if row.result else None
        handler = self._handlers.get(spec.type, "")
        blocks: list[str] = []
        packed = protocol.pack_payload(spec.config, self._blocks, blocks)
        record = TaskRecord(row.task_id, row.seq, spec, handler, packed, blocks or None)
        record.attempts, record.plan, record.plan_refs = row.attempts, row.plan, row.plan_refs
        record.holds_slot = False  # recovered tasks are admitted whatever task_queue_size is
        record.recovered = True
        record.due = time.monotonic()
        record.run_at = row.not_before
        record.parent, record.detached = row.parent, row.detached
        if result is not None:
            set_final(record, result)
        elif not handler:
            self._end(record, "exception", f"UnknownTaskTypeError: no handler for {spec.type!r} any more")
        elif row.status == "running" and not spec.idempotent:
            self._end(record, "interrupted", "the host died while it ran, and it is not idempotent")
        elif row.status == "running":
            record.interrupted = 1  # the rerun of a crash does not use up retries
        return record

    def schedules(self) -> list[tuple[Schedule, int]]:
        """The journaled schedules; an unreadable one is logged and left out."""
        now_mono, now_wall = time.monotonic(), time.time()
        restored = []
        for name, spec_json, config, state in self._journal.schedules():
            try:
                fields = {**json.loads(spec_json), "config": protocol.unpack_payload(config)}
                spec = TaskSpec.model_validate(fields)
                restored.append(Schedule.from_json(name, spec, state, now_mono, now_wall))
            except _UNREADABLE as exc:
                logger.error("journal %s: schedule %r is unreadable: %s", self._journal.path, name, exc)
        return restored

    def _quarantine(self, row: JournalRow | UnreadableRow, error: Exception) -> TaskRecord:
        logger.error(
            "journal %s: task %s (row %d) cannot be read and is kept as failed: %s",
            self._journal.path,
            row.task_id,
            row.seq,
            error,
        )
        record = TaskRecord(row.task_id, row.seq, TaskSpec(type="(unreadable)"), "", b"")
        self._tasks[record.task_id] = record
        self._end(record, "interrupted", f"its journal row could not be read after a restart ({error})")
        return record

    def _end(
        self, record: TaskRecord, kind: str, message: str, status: TaskStatus = TaskStatus.ERROR
    ) -> None:
        result = TaskResult(
            task_id=record.task_id,
            status=status,
            success=False,
            error=TaskError(kind=cast(ErrorKind, kind), message=message),
            attempts=record.attempts,
            parent=record.parent,
        )
        set_final(record, result)
        self._journal.finished(record.task_id, status.value, record.attempts, journal_result(result))
