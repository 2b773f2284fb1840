"""Pure scheduling data structures: no processes, no I/O, no clock of their own.

`ReadyQueue` holds the tasks that may run, one heap per task type, so that the most urgent task
whose type still has capacity is found in O(types + log n) and a capped type never blocks the
types behind it. `Timers` is the supervisor's deadline heap (idle exits, timeouts, kill graces).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class QueueSlots:
    """How many more tasks may wait to run: taken by submitters, given back by the supervisor.

    Two counters rather than one under a lock: ``_taken`` grows under a lock only takers hold,
    ``_given`` grows on the supervisor's thread alone and needs none. A lock the supervisor took
    to give back could be caught held by a GIL switch, and stall a submitter for a whole switch
    interval (5 ms) while a burst of submits runs.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._taken = 0
        self._given = 0
        self._lock = threading.Lock()

    def take(self, count: int = 1) -> bool:
        """Take ``count`` slots at once, or none and return False (any thread)."""
        with self._lock:
            if self._taken + count - self._given > self._size:
                return False
            self._taken += count
            return True

    def untake(self, count: int) -> None:
        """Return slots taken for tasks that were not queued after all (any thread)."""
        with self._lock:
            self._taken -= count

    def give(self, count: int = 1) -> None:
        """Return the slot of a task that left the queue (on the supervisor's thread only)."""
        self._given += count


_Entry = tuple[int, float, int, str]


class ReadyQueue:
    """Tasks ready to run, by priority (highest first), then due time, then submission order.

    A task's due time is when it was submitted, or for a delayed task when its delay ends, so a
    delayed task that comes due waits behind the tasks submitted before that moment, not behind
    everything submitted since it was.
    """

    def __init__(self) -> None:
        self._heaps: dict[str, list[_Entry]] = {}
        self._removed: set[str] = set()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, task_type: str, priority: int, due: float, seq: int, task_id: str) -> None:
        """Add a task; ``due`` (monotonic) then ``seq`` order it within its priority."""
        heapq.heappush(self._heaps.setdefault(task_type, []), (-priority, due, seq, task_id))
        self._size += 1

    def remove(self, task_id: str) -> None:
        """Forget a queued task (it was cancelled); it is dropped lazily when it reaches a head."""
        self._removed.add(task_id)
        self._size -= 1

    def peek_best(self, may_run: Callable[[str], bool]) -> tuple[str, str] | None:
        """The (type, task id) of the most urgent task whose type ``may_run``, or None."""
        best: _Entry | None = None
        best_type = ""
        for task_type in list(self._heaps):
            head = self._head(task_type)
            if head is not None and (best is None or head < best) and may_run(task_type):
                best, best_type = head, task_type
        return None if best is None else (best_type, best[3])

    def pop(self, task_type: str) -> str:
        """Remove and return the id of the most urgent task of ``task_type``."""
        head = self._head(task_type)
        if head is None:
            raise KeyError(f"no ready task of type {task_type!r}")
        heapq.heappop(self._heaps[task_type])
        self._size -= 1
        return head[3]

    def task_ids(self) -> list[str]:
        """Every queued task id, most urgent first (for snapshots, not the hot path)."""
        entries = [e for heap in self._heaps.values() for e in heap if e[3] not in self._removed]
        return [entry[3] for entry in sorted(entries)]

    def _head(self, task_type: str) -> _Entry | None:
        heap = self._heaps[task_type]
        while heap and heap[0][3] in self._removed:
            self._removed.discard(heapq.heappop(heap)[3])
        if not heap:
            del self._heaps[task_type]
            return None
        return heap[0]


@dataclass(order=True)
class Timer:
    """A scheduled action; `Timers.cancel` marks it dead instead of searching the heap."""

    deadline: float
    seq: int
    action: Callable[..., None] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False, default=())
    cancelled: bool = field(compare=False, default=False)


class Timers:
    """A heap of deadlines on the monotonic clock, read by the supervisor's wait loop."""

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = itertools.count()

    def schedule(self, deadline: float, action: Callable[..., None], *args: Any) -> Timer:
        """Run ``action(*args)`` once ``deadline`` has passed; returns a cancellable handle.

        A deadline of ``inf`` (a duration that means "never") is a handle that never fires; NaN,
        which would corrupt the heap's order, raises `ValueError`.
        """
        if deadline != deadline:
            raise ValueError("a timer's deadline must be a number, not nan")
        timer = Timer(deadline, next(self._seq), action, args)
        if deadline != math.inf:
            heapq.heappush(self._heap, timer)
        return timer

    @staticmethod
    def cancel(timer: Timer | None) -> None:
        """Make ``timer`` a no-op (None is accepted, for optional handles)."""
        if timer is not None:
            timer.cancelled = True

    def time_to_next(self, now: float) -> float | None:
        """Seconds until the next live deadline (0 if one is due), or None when there is none."""
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        return max(0.0, self._heap[0].deadline - now)

    def pop_due(self, now: float) -> list[Timer]:
        """Remove and return every live timer whose deadline has passed, earliest first."""
        due: list[Timer] = []
        while self._heap and self._heap[0].deadline <= now:
            timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                due.append(timer)
        return due
