"""Finding a task by id, from any thread: in memory, else in the journal, else an error that says why.

Records are written by the supervisor thread and read here without a lock: each read is of one
attribute or of one dict entry, and ``list()`` of a dict or deque is atomic under the GIL.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from orchestrator.config import OrchestratorConfig
from orchestrator.errors import TaskNotFoundError
from orchestrator.models import Progress, TaskResult, task_seq
from orchestrator.supervisor import TaskRecord


class TaskIds:
    """Issues task ids (``<instance>-<seq>``) and knows, without storing them, which are its own."""

    def __init__(self) -> None:
        self.instance = secrets.token_hex(4)
        self._seq = itertools.count(1)
        self._issued = 0

    def issue(self) -> tuple[str, int]:
        """A new id and its sequence number."""
        seq = next(self._seq)
        self._issued = max(self._issued, seq)
        return f"{self.instance}-{seq}", seq

    def continue_after(self, highest: int) -> None:
        """Number on from a journal's highest sequence number, so recovered ids stay unique."""
        self._seq = itertools.count(highest + 1)

    def issued_here(self, task_id: str) -> bool:
        """An id this instance issued (evicted since, or not)."""
        seq = task_seq(task_id)
        return seq is not None and task_id.rpartition("-")[0] == self.instance and seq <= self._issued


class StreamCursor:
    """Where a reader is in a task's partial results; read without the supervisor's help."""

    def __init__(self, record: TaskRecord) -> None:
        self._record = record
        self._next = 0

    def take(self) -> tuple[list[tuple[int, Any]], TaskResult | None]:
        """The partials not yet taken as (index, data), and the task's result (None while it runs).

        The result is read first: once it is set no partial is added, so the snapshot taken
        after it holds them all. The supervisor only appends, and ``list()`` of a deque is atomic.
        """
        result = self._record.result
        kept = list(self._record.partials) if self._record.partials is not None else []
        fresh = [(index, data) for index, data in kept if index >= self._next]
        if fresh:
            self._next = fresh[-1][0] + 1
        return fresh, result


class TaskLookup:
    """Every task this orchestrator can still answer for, by id."""

    def __init__(self, config: OrchestratorConfig, tasks: dict[str, TaskRecord], ids: TaskIds) -> None:
        self._config = config
        self._tasks = tasks
        self._ids = ids
        # A final task evicted from memory, rebuilt from its journal row (set once a journal is open).
        self.from_journal: Callable[[str], TaskRecord | None] | None = None

    def find(self, task_id: str) -> TaskRecord:
        """The task's record.

        Raises:
            TaskNotFoundError: no such task, or it was evicted (saying by which limit).
        """
        record = self._tasks.get(task_id) if isinstance(task_id, str) else None
        if record is not None:
            return record
        if self.from_journal is not None and isinstance(task_id, str):
            restored = self.from_journal(task_id)
            if restored is not None:
                if not self._outlived_ttl(restored):
                    return restored
                ttl = self._config.result_ttl
                raise TaskNotFoundError(
                    f"task {task_id!r} was evicted: its result outlived result_ttl={ttl} s"
                )
        if isinstance(task_id, str) and self._ids.issued_here(task_id):
            raise TaskNotFoundError(
                f"task {task_id!r} was evicted from memory (max_results_in_memory="
                f"{self._config.max_results_in_memory}); set journal_path to keep old results readable"
            )
        raise TaskNotFoundError(f"no task with id {task_id!r} in orchestrator {self._config.name!r}")

    def partials_so_far(self, task_id: str) -> tuple[list[tuple[int, Any]], TaskResult | None]:
        """The task's kept partials as (index, data), and its result if final (for a late watcher)."""
        return StreamCursor(self.find(task_id)).take()

    def progress_of(self, task_id: str | None) -> Progress | None:
        """The latest progress of a task still running (None for none, or once it is final)."""
        record = self._tasks.get(task_id) if task_id is not None else None
        return record.progress if record is not None and record.result is None else None

    def summaries(self, status: str | None, task_type: str | None, limit: int) -> list[dict[str, Any]]:
        """Task summaries, newest first, of the given status and type (None: any)."""
        rows: list[dict[str, Any]] = []
        for record in reversed(list(self._tasks.values())):
            if (status is None or record.status.value == status) and (
                task_type is None or record.spec.type == task_type
            ):
                rows.append(
                    {
                        "task_id": record.task_id,
                        "type": record.spec.type,
                        "status": record.status.value,
                        "priority": record.spec.priority,
                        "description": record.spec.description,
                        "attempts": record.attempts,
                    }
                )
                if len(rows) == limit:
                    break
        return rows

    def _outlived_ttl(self, record: TaskRecord) -> bool:
        """A result past ``result_ttl`` is gone, even before its row leaves SQLite (up to a move
        interval after it left memory)."""
        ttl = self._config.result_ttl
        finished = record.result.finished_at if record.result is not None else None
        return (
            ttl is not None and finished is not None and (datetime.now(UTC) - finished).total_seconds() > ttl
        )
