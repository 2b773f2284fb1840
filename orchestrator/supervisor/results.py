"""Final results: who hears of them, how long they stay in memory, and what groups and plans count.

A result reaches the task's waiters (blocking waits, asyncio, ``as_completed``) and watchers
(streams) on the supervisor thread, which is why neither may block. It stays in memory among the
newest ``max_results_in_memory`` and for at most ``result_ttl`` seconds; with a journal, only once
it is in SQLite, where reads still find it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from orchestrator.config import OrchestratorConfig
from orchestrator.errors import GroupNotFoundError
from orchestrator.journal import journal_result
from orchestrator.models import GroupStatus, TaskResult
from orchestrator.scheduler import Timer, Timers
from orchestrator.supervisor.graph import Collection, TaskGraph, status_counts
from orchestrator.supervisor.journaling import JournalLink
from orchestrator.supervisor.record import TaskRecord, add_waiter, take_waiters
from workers.calls import CALL_TYPE

# Finish times kept for the tasks-per-second figure of `orch status` (a minute at 3,000/s).
THROUGHPUT_SAMPLES: Final = 200_000

_EPOCH: Final = datetime.fromtimestamp(0, tz=UTC)


class Results:
    """The final half of the task table: results set, heard of, kept and let go."""

    def __init__(
        self,
        config: OrchestratorConfig,
        tasks: dict[str, TaskRecord],
        graph: TaskGraph,
        timers: Timers,
        journaling: JournalLink,
    ) -> None:
        self._config = config
        self._tasks = tasks
        self._graph = graph
        self._timers = timers
        self._journaling = journaling
        self._recent: deque[float] = deque(maxlen=THROUGHPUT_SAMPLES)
        # (monotonic finish time, task id), oldest first: the order results leave memory in.
        self._kept: deque[tuple[float, str]] = deque()
        self._ttl_timer: Timer | None = None
        self._started = time.monotonic()

    def settle(self, record: TaskRecord, result: TaskResult) -> None:
        """Give the task its final result, journal it, and tell its waiters and watchers."""
        self._recent.append(time.monotonic())
        record.status = result.status
        # A function's value belongs to its future alone, freed with it as the stdlib's is.
        record.result = result.model_copy(update={"data": None}) if record.spec.type == CALL_TYPE else result
        journal = self._journaling.of(record)
        if journal is not None:
            journal.finished(record.task_id, result.status.value, record.attempts, journal_result(result))
        for notify in take_waiters(record):  # one added while they are told is told too
            notify(result)
        if record.watchers:
            for watcher in record.watchers:
                watcher()
            record.watchers.clear()

    def keep(self, record: TaskRecord) -> None:
        """Keep a final result among the newest in memory; older ones go (a journal still has them)."""
        self._kept.append((time.monotonic(), record.task_id))
        self.evict()
        ttl = self._config.result_ttl
        if ttl is not None and self._ttl_timer is None:
            self._ttl_timer = self._timers.schedule(time.monotonic() + ttl, self._on_ttl_sweep)

    def adopt(self, records: list[TaskRecord]) -> None:
        """Take in results recovered from a journal, in line for eviction like any other."""
        now = time.monotonic()
        self._kept.extend((now, record.task_id) for record in records)
        self.evict()

    def evict(self) -> None:
        """Let go of results past ``max_results_in_memory`` or ``result_ttl`` (with a journal, only
        those already in SQLite; never one that a queued dependant still needs)."""
        limit = self._config.max_results_in_memory
        ttl = self._config.result_ttl
        if ttl is None and len(self._kept) <= limit:
            return
        now = time.monotonic()
        journal = self._journaling.journal
        moved_at = journal.moved_at if journal is not None else now
        for _ in range(len(self._kept)):
            finished_at, task_id = self._kept[0]
            expired = ttl is not None and now - finished_at > ttl
            if (len(self._kept) <= limit and not expired) or finished_at >= moved_at:
                break
            self._kept.popleft()
            kept = self._tasks.get(task_id)
            if kept is not None and kept.needed_by > 0:
                self._kept.append((finished_at, task_id))  # a dependant still needs it
                break
            self._tasks.pop(task_id, None)
            if expired and journal is not None and (kept is None or kept.journaled):
                journal.forget(task_id)

    def _on_ttl_sweep(self) -> None:
        self._ttl_timer = None
        self.evict()
        ttl = self._config.result_ttl
        if self._kept and ttl is not None:
            self._ttl_timer = self._timers.schedule(self._kept[0][0] + ttl + 0.01, self._on_ttl_sweep)

    # ----------------------------------------------------------------- listening (supervisor thread)

    def add_waiters(self, records: list[TaskRecord], notify: Callable[[TaskResult], None]) -> None:
        """Call ``notify(result)`` once each task is final (at once, in the order they finished,
        for those already final); it runs on the supervisor thread, so it must not block."""
        final = [record.result for record in records if record.result is not None]
        for result in sorted(final, key=lambda result: result.finished_at or _EPOCH):
            notify(result)
        for record in records:
            if record.result is None:
                add_waiter(record, notify)

    def watch(self, record: TaskRecord, watcher: Callable[[], None]) -> None:
        """Call ``watcher()`` (on the supervisor thread: it must not block) on each partial and at
        the end."""
        if record.result is None:
            if record.watchers is None:
                record.watchers = []
            record.watchers.append(watcher)
        else:
            watcher()

    def stop_watching(self, record: TaskRecord, watcher: Callable[[], None]) -> None:
        """Stop calling ``watcher``."""
        if record.watchers and watcher in record.watchers:
            record.watchers.remove(watcher)

    # ----------------------------------------------------------------- counts

    def counts(self, collection: Collection) -> dict[str, int]:
        """How many of a group's or plan's tasks are in each status (and evicted)."""
        counts = status_counts([self._tasks[t].status for t in collection.members if t in self._tasks])
        counts["evicted"] = sum(1 for t in collection.members if t not in self._tasks)
        return counts

    def group_names(self) -> set[str]:
        """Every group name tasks were submitted with."""
        return set(self._graph.groups)

    def group_status(self, name: str) -> GroupStatus:
        """A group's members and counts; raise `GroupNotFoundError` for an unknown name."""
        group = self._graph.groups.get(name)
        if group is None:
            raise GroupNotFoundError(f"no group named {name!r}: no task was submitted with group={name!r}")
        return GroupStatus(
            name=name, total=len(group.members), counts=self.counts(group), task_ids=list(group.members)
        )

    def tasks_per_second(self, window: float = 60.0) -> float:
        """Tasks that became final per second over the last ``window`` seconds (or the uptime)."""
        now = time.monotonic()
        recent = sum(1 for t in reversed(self._recent) if now - t <= window)
        return recent / max(1e-9, min(window, now - self._started))
