"""`TaskRecord`: a task as the host tracks it, and the questions asked of one."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.backends.base import WorkerHandle
from orchestrator.config import TaskSpec
from orchestrator.models import Progress, TaskResult, TaskStatus
from orchestrator.scheduler import Timer


@dataclass(eq=False, slots=True)
class TaskRecord:
    """A task as the host tracks it. Created by `submit_task`, then mutated by the supervisor only.

    Caller threads read ``status`` and ``result`` (single attribute reads) and may add waiters
    (`add_waiter`); the supervisor sets ``result`` before it takes the waiters and calls them.
    """

    task_id: str
    seq: int
    spec: TaskSpec
    handler: str
    packed_config: bytes
    # Lists that most tasks never fill are None until they do: each empty list is one more object
    # for the cyclic GC to walk, per queued task (the GC cost of a deep queue).
    blocks: list[str] | None = None
    on_progress: Callable[[Progress], object] | None = None
    on_complete: Callable[[TaskResult], object] | None = None
    on_error: Callable[[TaskResult], object] | None = None
    status: TaskStatus = TaskStatus.QUEUED
    result: TaskResult | None = None
    attempts: int = 0
    worker: WorkerHandle | None = None
    worker_pid: int | None = None
    started_at: float | None = None
    timer: Timer | None = None
    progress: Progress | None = None
    partial_count: int = 0
    partials: deque[tuple[int, Any]] | None = None
    watchers: list[Callable[[], None]] | None = None
    cpu_at_start: float | None = None
    holds_slot: bool = True
    in_ready: bool = False
    dep_ids: Sequence[str] = ()
    # The dependencies it still waits for; None for none (most tasks: an empty set costs 216 bytes).
    waiting: set[str] | None = None
    plan: str | None = None
    plan_refs: dict[str, str] | None = None
    revoking: bool = False
    interrupted: int = 0
    recovered: bool = False
    # Ordering within a priority (monotonic): submission, or the end of the task's delay.
    due: float = 0.0
    # A task delayed until a wall-clock time (run_at, or any delay after a restart).
    run_at: float | None = None
    parent: str | None = None
    detached: bool = False
    children: list[str] | None = None
    # Blocked in ctx.wait or receive, its slot lent to other work.
    lent: bool = False
    needed_by: int = 0
    # When it last entered the ready queue (monotonic): the start of its queue wait.
    ready_at: float = 0.0
    waiters: list[Callable[[TaskResult], None]] | None = None
    # Told on the supervisor's thread when an attempt starts (an executor's future turns running):
    # it must be quick and run no user code.
    on_start: Callable[[], None] | None = None
    # Told on the supervisor's thread with a completed task's data before its on_complete is
    # posted: True when it took the value itself (running no user code), and then it is not.
    take_success: Callable[[Any], bool] | None = None
    # False for an executor's task: its config and result are pickles, which the journal never holds.
    journaled: bool = True
    # An executor task's last exception, pickled by its worker (see `workers.calls`).
    raised: bytes = b""


# Held only while a record's first waiter list is made: two callers must not each make one, or
# the waiter added to the list that lost would never be told.
_FIRST_WAITER = threading.Lock()


def add_waiter(record: TaskRecord, notify: Callable[[TaskResult], None]) -> None:
    """Have ``notify(result)`` called on the supervisor's thread once the task is final (any thread).

    A caller off that thread must look at ``record.result`` afterwards: when the result was set
    meanwhile, ``notify`` may not be called.
    """
    waiters = record.waiters
    if waiters is None:
        with _FIRST_WAITER:
            waiters = record.waiters
            if waiters is None:
                waiters = record.waiters = []
    waiters.append(notify)


def take_waiters(record: TaskRecord) -> list[Callable[[TaskResult], None]]:
    """The waiters to tell of the result just set (supervisor's thread): the list goes with them,
    so a kept record holds no empty one (each is one more object for the cyclic GC to walk)."""
    waiters = record.waiters
    if waiters is None:
        return []
    record.waiters = None
    return waiters


def is_delayed(record: TaskRecord, now_mono: float, now_wall: float) -> bool:
    """Whether the task still waits for its delay to end."""
    return record.run_at > now_wall if record.run_at is not None else record.due > now_mono


def active_record(tasks: dict[str, TaskRecord], worker: WorkerHandle, task_id: str) -> TaskRecord | None:
    """The task's record if it is still this worker's and not final (else a message came late)."""
    record = tasks.get(task_id)
    if record is None or record.worker is not worker or record.result is not None:
        return None
    return record


def prefetched(record: TaskRecord) -> bool:
    """Sent to a worker ahead of time and not started there (nor being taken back already)."""
    return record.status is TaskStatus.QUEUED and record.worker is not None and not record.revoking
