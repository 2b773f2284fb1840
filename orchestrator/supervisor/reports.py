"""`Reports`: what a worker says about the tasks it runs (progress, partial results, a result or a
failure, its usage), and what its death means for them."""

from __future__ import annotations

from collections import deque
from typing import Final

from orchestrator.backends.base import WorkerHandle, exit_reason_of
from orchestrator.logs import reemit
from orchestrator.models import Progress, TaskStatus, assemble
from orchestrator.supervisor.announce import Announcer
from orchestrator.supervisor.capacity import Capacity
from orchestrator.supervisor.fleet import Fleet, WorkerExit
from orchestrator.supervisor.init_guard import InitGuard
from orchestrator.supervisor.lifecycle import Lifecycle
from orchestrator.supervisor.pace import Pace
from orchestrator.supervisor.record import TaskRecord, active_record, prefetched
from workers import calls, protocol
from workers.shm import BlockReader

# Partial results kept per task for `stream` (the oldest are dropped first).
MAX_PARTIALS_KEPT: Final = 1000


class Reports:
    """Turns a worker's reports into task state; a report about a task no longer its own is late,
    and ignored."""

    def __init__(
        self,
        tasks: dict[str, TaskRecord],
        lifecycle: Lifecycle,
        fleet: Fleet,
        capacity: Capacity,
        announce: Announcer,
        block_reader: BlockReader,
        init_guard: InitGuard,
        pace: Pace,
    ) -> None:
        self._init_guard = init_guard
        self._pace = pace
        self._tasks = tasks
        self._lifecycle = lifecycle
        self._fleet = fleet
        self._capacity = capacity
        self._announce = announce
        self._block_reader = block_reader

    def _running(self, worker: WorkerHandle, task_id: str) -> TaskRecord | None:
        """The task a report is about, begun if the host has not counted it as started yet: a
        prefetched task asked back just as it started reports before the worker answers the
        `Revoke` with its `TaskStarted`, and what reports has started."""
        record = active_record(self._tasks, worker, task_id)
        if record is not None and record.status is TaskStatus.QUEUED:
            self._lifecycle.begin(worker, record)
        return record

    def on_progress(self, worker: WorkerHandle, msg: protocol.TaskProgress) -> None:
        """The handler reported progress."""
        record = self._running(worker, msg.task_id)
        if record is None:
            return
        progress = record.progress = assemble(
            Progress, task_id=msg.task_id, completed=msg.completed, total=msg.total, message=msg.message
        )
        self._announce.progress(record, progress, worker.pid)

    def on_partial(self, worker: WorkerHandle, msg: protocol.TaskPartial) -> None:
        """The handler emitted a partial result: kept for streams (the newest MAX_PARTIALS_KEPT)."""
        record = self._running(worker, msg.task_id)
        if record is None:
            return
        try:
            data = protocol.unpack_payload(msg.data, self._block_reader)
        except protocol.PayloadError as exc:
            self._lifecycle.fail(record, "serialization", f"a partial result {exc}")
            return
        index = record.partial_count
        if record.partials is None:
            record.partials = deque(maxlen=MAX_PARTIALS_KEPT)
        record.partials.append((index, data))
        record.partial_count += 1
        for watcher in record.watchers or ():
            watcher()
        self._announce.partial(record, index, data, worker.pid)

    def on_reply(self, worker: WorkerHandle, msg: protocol.TaskDone | protocol.TaskFailed) -> None:
        """The task's attempt ended with a result or a failure; its worker takes the next."""
        record = self._running(worker, msg.task_id)
        if record is not None:
            if isinstance(msg, protocol.TaskDone):
                self._pace.observe(record.spec.type, msg.run_s)
                self._complete(record, msg.data)
            else:
                self._failed(worker, record, msg)
        kind = msg.kind if isinstance(msg, protocol.TaskFailed) else None
        if isinstance(msg, protocol.TaskFailed) and kind == "worker_init":
            self._init_guard.failed(worker.type or "", msg.message)
        elif worker.type is not None:
            self._init_guard.succeeded(worker.type)
        if kind in ("memory_limit", "worker_init"):
            # Its own cap stopped the handler (its memory is surely given back only with the
            # process), or it never initialized: it takes no more tasks; those it holds go back.
            self._fleet.kill(worker, kind)
        elif msg.task_id in worker.tasks:
            self._fleet.task_over(worker, msg.task_id)
            self._lifecycle.start_head(worker)

    def _complete(self, record: TaskRecord, packed: bytes) -> None:
        try:
            data = protocol.unpack_payload(packed, self._block_reader)
        except protocol.PayloadError as exc:
            self._lifecycle.fail(record, "serialization", f"the handler's result {exc}")
            return
        if record.spec.type == calls.CALL_TYPE:
            try:
                data = calls.loads(data["result"], data["buffers"])
            except BaseException as exc:  # noqa: BLE001 - user code (a reducer) may even raise SystemExit
                why = f"the function's result cannot be unpickled here: {type(exc).__name__}: {exc}"
                self._lifecycle.fail(record, "serialization", why, exception_type=type(exc).__name__)
                return
        self._lifecycle.finish(record, TaskStatus.COMPLETED, data=data)

    def _failed(self, worker: WorkerHandle, record: TaskRecord, msg: protocol.TaskFailed) -> None:
        if msg.kind == "rate_limit":
            self._capacity.rate_limited(record.spec.type)
        elif msg.kind == "memory_limit":
            self._announce.memory_limit_kill(worker)
        record.raised = msg.detail
        lifecycle = self._lifecycle
        lifecycle.fail(record, msg.kind, msg.message, msg.traceback, msg.exception_type, msg.retry_after)

    def on_log(self, worker: WorkerHandle, msg: protocol.Log) -> None:
        """A record the worker's code logged: through the host's logging, with its task."""
        record = self._tasks.get(msg.task_id) if msg.task_id is not None else None
        reemit(msg, record.spec.type if record is not None else None, worker.pid)

    def on_usage(self, worker: WorkerHandle, msg: protocol.Usage) -> None:
        """A remote worker measured its own memory and CPU time."""
        self._lifecycle.judge_usage(worker, msg.rss, msg.cpu)

    def on_death(self, worker: WorkerHandle, end: WorkerExit) -> None:
        """The worker's process ended: a task it never started goes back in line; the others fail."""
        how = (
            exit_reason_of(end.exitcode)
            if worker.node is None
            else f"connection lost; Dask worker {worker.node}"
        )
        if worker.violation is not None:
            message = f"worker pid {worker.pid} broke the protocol and was killed ({worker.violation})"
        elif end.never_started:
            message = (
                f"worker pid {worker.pid} exited during start-up ({how}); see its stderr. "
                'A common cause: the host script lacks `if __name__ == "__main__":`'
            )
        else:
            message = f"worker pid {worker.pid} died while running the task ({how})"
        for record in self._fleet.open_records(worker):
            if prefetched(record) and (not end.never_started or end.reason == "start_timeout"):
                self._lifecycle.take_back(worker, record.task_id)
            else:
                self._lifecycle.fail(record, "worker_crashed", message, exitcode=end.exitcode)
