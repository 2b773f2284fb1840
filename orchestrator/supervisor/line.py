"""`Line`: the tasks that wait for a worker, and those that wait for their delay to end."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from orchestrator.scheduler import ReadyQueue, Timer, Timers
from orchestrator.schedules import WALL_CLOCK_RECHECK
from orchestrator.supervisor.record import TaskRecord


class Line:
    """Ready tasks by type and priority (oldest first within one), and delayed ones behind timers.

    A delay given in seconds waits on the monotonic clock, one timer per task; a delay that ends
    at a wall-clock time (``run_at``, or any delay after a restart) waits in one heap behind one
    timer that re-reads the clock at least every ``WALL_CLOCK_RECHECK`` seconds, so that a clock
    set forward or back is noticed.
    """

    def __init__(self, timers: Timers, tasks: dict[str, TaskRecord]) -> None:
        self._timers = timers
        self._tasks = tasks
        self._ready = ReadyQueue()
        self._delayed: list[tuple[float, int, TaskRecord]] = []
        self._delayed_timer: Timer | None = None

    def __len__(self) -> int:
        return len(self._ready)

    def join(self, record: TaskRecord) -> None:
        """Put the task in line: ready now, or once its delay has ended."""
        if record.run_at is not None:
            if record.run_at > time.time():
                heapq.heappush(self._delayed, (record.run_at, record.seq, record))
                self._arm_delayed()
                return
            record.run_at = None
        elif record.due > time.monotonic():
            record.timer = self._timers.schedule(record.due, self.join, record)
            return
        record.in_ready = True
        record.ready_at = time.monotonic()
        self._ready.push(record.spec.type, record.spec.priority, record.due, record.seq, record.task_id)

    def leave(self, record: TaskRecord) -> None:
        """Take the task out of the ready queue, if it is there (a delayed one leaves by its timer)."""
        if record.in_ready:
            record.in_ready = False
            self._ready.remove(record.task_id)

    def peek_best(self, may_run: Callable[[str], bool]) -> tuple[str, str] | None:
        """(type, task id) of the best ready task of a type that ``may_run``, or None."""
        return self._ready.peek_best(may_run)

    def pop(self, task_type: str) -> TaskRecord:
        """Take the best ready task of the type out of line."""
        record = self._tasks[self._ready.pop(task_type)]
        record.in_ready = False
        return record

    def _arm_delayed(self) -> None:
        Timers.cancel(self._delayed_timer)
        self._delayed_timer = None
        while self._delayed and self._delayed[0][2].result is not None:
            heapq.heappop(self._delayed)  # cancelled while it waited
        if self._delayed:
            wait = min(self._delayed[0][0] - time.time(), WALL_CLOCK_RECHECK)
            self._delayed_timer = self._timers.schedule(time.monotonic() + max(0.0, wait), self._ready_due)

    def _ready_due(self) -> None:
        now = time.time()
        while self._delayed and self._delayed[0][0] <= now:
            record = heapq.heappop(self._delayed)[2]
            if record.result is None:
                self.join(record)
        self._arm_delayed()
