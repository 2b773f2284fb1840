"""`Lifecycle`: a task from acceptance to its final result. It begins, fails, is retried or put
back in line, is cancelled or timed out, finishes, and releases the tasks that waited for it."""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any, Final, cast

from orchestrator.backends.base import WorkerHandle
from orchestrator.config import OrchestratorConfig, TaskSpec
from orchestrator.models import ErrorKind, TaskError, TaskResult, TaskStatus, assemble
from orchestrator.scheduler import QueueSlots, Timers
from orchestrator.supervisor.announce import Announcer
from orchestrator.supervisor.capacity import Capacity
from orchestrator.supervisor.conversation import Conversation
from orchestrator.supervisor.fleet import Fleet
from orchestrator.supervisor.graph import TaskGraph
from orchestrator.supervisor.journaling import JournalLink
from orchestrator.supervisor.line import Line
from orchestrator.supervisor.record import TaskRecord, active_record
from orchestrator.supervisor.resources import ResourceLimits
from orchestrator.supervisor.results import Results
from workers import protocol
from workers.shm import unlink_block
from workers.values import utc_moment

# The kinds of failure that `TaskSpec.retries` retries (exception only with retry_on_exception, or
# when the exception's class is named in retry_on).
RETRYABLE: Final = frozenset({"worker_crashed", "timeout", "memory_limit", "rate_limit"})
# 2**64 backoffs is beyond any retry_backoff_max; a larger power would overflow a float.
_MAX_BACKOFF_DOUBLINGS: Final = 64


class Lifecycle:
    """Moves tasks between states and owns the count of tasks in each."""

    def __init__(
        self,
        config: OrchestratorConfig,
        tasks: dict[str, TaskRecord],
        queue_slots: QueueSlots,
        timers: Timers,
        *,
        line: Line,
        fleet: Fleet,
        capacity: Capacity,
        graph: TaskGraph,
        results: Results,
        announce: Announcer,
        journaling: JournalLink,
        conversation: Conversation,
    ) -> None:
        self._config = config
        self._tasks = tasks
        self._queue_slots = queue_slots
        self._timers = timers
        self._line = line
        self._fleet = fleet
        self._capacity = capacity
        self._graph = graph
        self._results = results
        self._announce = announce
        self._journaling = journaling
        self._conversation = conversation
        self.counts = dict.fromkeys(TaskStatus, 0)
        self.limits = ResourceLimits(config, timers, fleet.busy, self.judge_usage)
        self._to_release: deque[TaskRecord] = deque()
        self._releasing = False

    def accept(self, record: TaskRecord) -> None:
        """A new task: in line now, once its dependencies are final, or failed by one that failed."""
        self.counts[TaskStatus.QUEUED] += 1
        self._announce.queued(record)
        self._graph.join(record)
        failed = self._graph.link(record, self._tasks)
        if failed is not None:
            self._fail_dependant(record, failed)
        elif not record.waiting:
            self._line.join(record)

    # ----------------------------------------------------------------- running

    def start_head(self, worker: WorkerHandle) -> None:
        """A worker that runs one task at a time takes them in the order they were sent: once
        those before it ended, its first task runs, and it does not say so (`RunTask.report_start`).
        One being taken back is left to the worker's answer (`Revoked` or `TaskStarted`)."""
        if worker.concurrent is not False or not worker.tasks:
            return
        record = active_record(self._tasks, worker, next(iter(worker.tasks)))
        if record is not None and record.status is TaskStatus.QUEUED and not record.revoking:
            self.begin(worker, record)

    def begin(self, worker: WorkerHandle, record: TaskRecord) -> None:
        """The task runs on ``worker`` from now: its timeout's clock starts."""
        record.revoking = False
        record.status = TaskStatus.RUNNING
        self._journaling.started(record)
        self.counts[TaskStatus.QUEUED] -= 1
        self.counts[TaskStatus.RUNNING] += 1
        record.started_at = time.time()
        record.worker_pid = worker.pid
        worker.last_active = record.started_at
        self._announce.started(record, worker, time.monotonic() - record.ready_at)
        timeout = record.spec.timeout or self._config.default_task_timeout
        if timeout is not None:
            deadline = time.monotonic() + timeout
            record.timer = self._timers.schedule(deadline, self._on_timeout, record, timeout)
        record.cpu_at_start = self.limits.cpu_at_start(worker)
        self.limits.watch()

    def take_back(self, worker: WorkerHandle, task_id: str) -> None:
        """A task sent ahead to a worker never ran there: back in line, its attempt not used up."""
        record = active_record(self._tasks, worker, task_id)
        if record is None:
            return
        del worker.tasks[task_id]
        self._capacity.vacate(record.spec.type)
        record.worker = None
        record.attempts -= 1
        record.revoking = False
        self._journaling.requeued(record)
        record.holds_slot = self._queue_slots.take()
        self._line.join(record)
        if not worker.tasks and worker.worker_id in self._fleet.workers and worker.exit_reason is None:
            self._fleet.make_idle(worker)
        self.start_head(worker)

    def judge_usage(self, worker: WorkerHandle, rss: int | None, cpu: float | None) -> None:
        """Carry out what a worker's measured memory and CPU time call for."""
        running = [r for r in self._fleet.open_records(worker) if r.status is TaskStatus.RUNNING]
        if not running:
            return
        overuse = self.limits.overuse(worker, running, rss, cpu)
        if overuse.memory is not None:
            self._announce.memory_limit_kill(worker)  # counted before its tasks' results go out
            for record in running:
                self.fail(record, "memory_limit", overuse.memory)
            self._fleet.kill(worker, "memory_limit")
        for record, message in overuse.cpu:
            self.stop(record, "timeout", message)

    # ----------------------------------------------------------------- stopping

    def cancel(self, record: TaskRecord, message: str = "cancelled") -> bool:
        """Cancel a queued or running task; False if it is already final."""
        if record.result is not None:
            return False
        if record.worker is None:
            self.fail(record, "cancelled", f"{message} while queued")
        else:
            self.stop(record, "cancelled", f"{message} while running")
        return True

    def stop(self, record: TaskRecord, reason: str, message: str) -> None:
        """End a dispatched task now, ask its handler to stop, and kill it if it does not."""
        worker = record.worker
        self.fail(record, reason, message)
        if worker is None or record.task_id not in worker.tasks:
            return
        worker.send(protocol.StopTask(record.task_id, reason))
        self._timers.schedule(
            time.monotonic() + self._config.timeout_grace,
            self._fleet.kill_if_still_running,
            worker,
            record.task_id,
            reason,
        )

    def _on_timeout(self, record: TaskRecord, timeout: float) -> None:
        if record.result is None:
            self.stop(record, "timeout", f"the task ran past its timeout of {timeout:g} s")

    # ----------------------------------------------------------------- ending an attempt

    def fail(
        self,
        record: TaskRecord,
        kind: str,
        message: str,
        traceback: str = "",
        exception_type: str = "",
        retry_after: float | None = None,
        exitcode: int | None = None,
    ) -> None:
        """End an attempt without a result: retry it if its spec allows, else finish the task."""
        self._announce.attempt_failed(record, kind)
        if _may_retry(record, kind, exception_type):
            self._retry_later(record, kind, message, retry_after)
            return
        error = assemble(
            TaskError,
            kind=cast(ErrorKind, kind),
            message=message,
            traceback=traceback,
            exception_type=exception_type,
            exitcode=exitcode,
        )
        status = TaskStatus.CANCELLED if kind == "cancelled" else TaskStatus.ERROR
        self.finish(record, status, error=error)

    def _retry_later(self, record: TaskRecord, kind: str, message: str, retry_after: float | None) -> None:
        """Queue the task again after ``retry_after`` or an exponential backoff with jitter.

        It keeps its id and priority.
        """
        self._detach(record)
        was_running = record.status is TaskStatus.RUNNING
        self.counts[record.status] -= 1
        self.counts[TaskStatus.QUEUED] += 1
        record.status = TaskStatus.QUEUED
        self._journaling.requeued(record)
        self._end_attempt(record, kind)
        delay = _retry_delay(record.spec, record.attempts, retry_after)
        self._announce.retrying(record, was_running, kind, message, delay)
        record.timer = self._timers.schedule(time.monotonic() + delay, self._requeue, record)

    def _requeue(self, record: TaskRecord) -> None:
        if record.result is not None:
            return
        # A retry is not a new submission: it is queued even when the queue is full.
        record.holds_slot = self._queue_slots.take()
        self._line.join(record)

    def _detach(self, record: TaskRecord) -> None:
        """Free what a task holds: its queue slot, its place in line, its type's capacity."""
        if record.holds_slot:
            record.holds_slot = False
            self._queue_slots.give()
        self._line.leave(record)
        if record.lent:
            self._conversation.reclaim(record)
        if record.worker is not None:
            record.worker = None
            self._capacity.vacate(record.spec.type)
        Timers.cancel(record.timer)

    def _end_attempt(self, record: TaskRecord, failure: str | None) -> None:
        """An attempt is over: close its subscriptions and waits; on a failure, cancel its children."""
        self._conversation.end_attempt(record.task_id)
        children = record.children
        if not children:
            return
        record.children = None
        if failure is None:
            return
        for child_id in children:
            child = self._tasks.get(child_id)
            if child is not None and child.result is None:
                self.cancel(child, f"cancelled: its parent {record.task_id} ended ({failure})")

    # ----------------------------------------------------------------- final

    def finish(
        self,
        record: TaskRecord,
        status: TaskStatus,
        data: Any = None,
        error: TaskError | None = None,
    ) -> None:
        """Record the task's final result once, then tell waiters, callbacks and listeners."""
        self.counts[record.status] -= 1
        self.counts[status] += 1
        failure = None if status is TaskStatus.COMPLETED else (error.kind if error else status.value)
        self._end_attempt(record, failure)
        self._detach(record)
        if record.blocks:
            for name in record.blocks:
                unlink_block(name)
            record.blocks.clear()
        result = _final_result(record, status, data, error)
        self._announce.finished(record, result, was_running=record.status is TaskStatus.RUNNING)
        self._results.settle(record, result)
        if status is TaskStatus.COMPLETED:
            self._capacity.succeeded(record.spec.type)
        # Announced before its dependants hear of it, so that a cause's event comes before its effects'.
        self._announce.final(record, result)
        # Told for the last time: a kept record must not keep the caller's closures alive (an
        # executor's future, and through it the function's value).
        record.on_progress = record.on_complete = record.on_error = record.on_start = None
        record.take_success = None
        self._release_dependants(record)
        for dep_id in record.dep_ids:
            dependency = self._tasks.get(dep_id)
            if dependency is not None:
                dependency.needed_by -= 1
        self._results.keep(record)

    def _release_dependants(self, record: TaskRecord) -> None:
        """Ready or fail the tasks that waited for this one, iteratively (chains can be long)."""
        if not self._releasing and not self._graph.involves(record):
            return
        self._to_release.append(record)
        if self._releasing:
            return
        self._releasing = True
        try:
            while self._to_release:
                done = self._to_release.popleft()
                dependants, completed = self._graph.resolve(done)
                for collection in completed:
                    self._announce.collection_completed(collection, self._results.counts(collection))
                for dependant in dependants:
                    self._on_dependency_final(dependant, done)
        finally:
            self._releasing = False

    def _on_dependency_final(self, dependant: TaskRecord, dependency: TaskRecord) -> None:
        if dependant.result is not None:
            return
        failed = dependency.result is not None and not dependency.result.success
        if failed and dependant.spec.on_dependency_failure == "fail":
            self._fail_dependant(dependant, dependency)
        elif not dependant.waiting:
            self._line.join(dependant)

    def _fail_dependant(self, record: TaskRecord, dependency: TaskRecord) -> None:
        result = dependency.result
        assert result is not None
        why = f"{result.error.kind}: {result.error.message}" if result.error else result.status.value
        for dep_id in record.waiting or ():
            self._graph.forget_dependant(dep_id, record)
        record.waiting = None
        self.fail(
            record,
            "dependency_failed",
            f"dependency {dependency.task_id} ended {result.status.value} ({why})",
        )


def _final_result(record: TaskRecord, status: TaskStatus, data: Any, error: TaskError | None) -> TaskResult:
    finished = time.time()
    started = record.started_at
    return assemble(
        TaskResult,
        task_id=record.task_id,
        status=status,
        success=status is TaskStatus.COMPLETED,
        data=data,
        error=error,
        attempts=record.attempts,
        worker_pid=record.worker_pid,
        started_at=utc_moment(started),
        finished_at=utc_moment(finished),
        duration_s=None if started is None else finished - started,
        parent=record.parent,
    )


def _may_retry(record: TaskRecord, kind: str, exception_type: str) -> bool:
    spec = record.spec
    retryable = kind in RETRYABLE or (
        kind == "exception" and (spec.retry_on_exception or exception_type in spec.retry_on)
    )
    return retryable and record.attempts - record.interrupted <= spec.retries


def _retry_delay(spec: TaskSpec, attempts: int, retry_after: float | None) -> float:
    """Seconds before the next attempt: the handler's ``retry_after``, else an exponential backoff
    with jitter; either way at most ``retry_backoff_max``."""
    if retry_after is None:
        doublings = min(attempts - 1, _MAX_BACKOFF_DOUBLINGS)
        retry_after = spec.retry_backoff * 2.0**doublings * random.uniform(0.5, 1.0)
    return min(max(0.0, retry_after), spec.retry_backoff_max)
