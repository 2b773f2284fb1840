"""`ParallelOrchestrator`: the object a host embeds. Thread-safe; every method returns quickly."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import logging
import os
import queue
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, Final, Literal, Self, TypeVar, final

import psutil
from pydantic import ValidationError

from orchestrator.backends.base import ProcessPool
from orchestrator.backends.local import WorkerPool
from orchestrator.config import OrchestratorConfig, TaskSpec, describe
from orchestrator.control import ControlServer
from orchestrator.durations import caller_timeout
from orchestrator.errors import (
    ConfigError,
    GroupNotFoundError,
    InvalidTaskError,
    JournalError,
    OrchestratorClosedError,
    OrchestratorError,
    QueueFullError,
    ScheduleError,
    UnknownTaskTypeError,
)
from orchestrator.events import EventBus
from orchestrator.journal import Journal
from orchestrator.limits import CpuMeter
from orchestrator.logs import enable_logging
from orchestrator.lookup import StreamCursor, TaskIds, TaskLookup
from orchestrator.metrics import Metrics
from orchestrator.models import (
    GroupStatus,
    Message,
    OrchestratorStatus,
    Progress,
    ScheduleInfo,
    TaskResult,
    TaskStatus,
    WorkerInfo,
)
from orchestrator.plans import PlanError, references, validate_plan
from orchestrator.recovery import Recovery
from orchestrator.scheduler import QueueSlots
from orchestrator.schedules import Schedule, ScheduleRunner, aware_timestamp, delayed_until, interval_seconds
from orchestrator.supervisor import Supervisor, TaskRecord
from orchestrator.supervisor.graph import status_counts
from workers import protocol
from workers.shm import BlockWriter, block_prefix, unlink_by_prefix

logger = logging.getLogger("orchestrator")

_State = Literal["created", "running", "closing", "closed"]
T = TypeVar("T")

# Orchestrators still running at interpreter exit are shut down first (see _shutdown_at_exit).
_live: Final[weakref.WeakSet[ParallelOrchestrator]] = weakref.WeakSet()


class ParallelOrchestrator:
    """Runs typed tasks on a pool of worker processes, by priority, and reports back.

    Create it with an `OrchestratorConfig` (or keyword overrides), use it as a context manager
    or call `initialize` and `shutdown`, and submit tasks from any thread: `submit_task` returns
    an id at once and never waits for a worker. Results come back through `wait`,
    `wait_async`, `get_result`, per-task callbacks, or events subscribed with `on`.
    """

    def __init__(self, config: OrchestratorConfig | None = None, **overrides: Any) -> None:
        self.config = _build_config(config, overrides)
        self._handlers = self.config.task_handlers()
        self._tasks: dict[str, TaskRecord] = {}
        self._ids = TaskIds()
        self._lookup = TaskLookup(self.config, self._tasks, self._ids)
        self._plan_seq = itertools.count(1)
        self._queue_slots = QueueSlots(self.config.task_queue_size)
        # Shared memory does not reach other machines: on Dask every payload travels inline.
        threshold = self.config.shm_threshold if self.config.backend == "local" else None
        self._block_namespace = f"{os.getpid()}{self._ids.instance}"
        self._blocks = BlockWriter(block_prefix(self._block_namespace), threshold) if threshold else None
        self._bus = EventBus(self.config.name)
        self._supervisor: Supervisor | None = None
        self._control: ControlServer | None = None
        self._journal: Journal | None = None
        self._recovered: list[str] = []
        # On Dask: the task types some node of the cluster offers now, and the cluster's workers.
        self._offered_types: Callable[[], set[str]] | None = None
        self._cpu_meter = CpuMeter()
        self._cluster_nodes: Callable[[], list[dict[str, Any]]] = list
        self._state: _State = "created"
        self._lifecycle_lock = threading.Lock()
        self._metrics: Metrics | None = None
        if self.config.enable_logging:
            enable_logging(self.config.log_format)

    # ----------------------------------------------------------------- lifecycle

    def initialize(self) -> None:
        """Start the supervisor and ``min_workers`` workers; idempotent.

        Raises:
            OrchestratorError: after `shutdown`, or when called while a worker process imports
                the host's main script (the script lacks ``if __name__ == "__main__":``).
        """
        with self._lifecycle_lock:
            if self._state == "running":
                return
            if self._state != "created":
                raise OrchestratorClosedError("this orchestrator was shut down; create a new one")
            journal = Journal(self.config.journal_path) if self.config.journal_path else None
            self._journal = journal
            pool: ProcessPool | None = None
            try:
                self._metrics = self._serve_metrics()
                if self.config.control_socket:
                    self._control = ControlServer(self, self._lookup)
                    self._control.start()
                pool, supervisor_config = self._start_pool(journal)
                recovery = Recovery(journal, self._tasks, self._handlers, self._blocks) if journal else None
                recovered, final = self._recover(recovery) if recovery is not None else ([], [])
            except BaseException:
                self._undo_start(pool)
                raise
            self._supervisor = Supervisor(
                supervisor_config,
                self._tasks,
                self._queue_slots,
                self._bus,
                pool,
                self._blocks,
                journal,
                self._admit_scheduled,
                self._admit_child,
                self._metrics,
            )
            if self._metrics is not None:
                self._metrics.watch(self._supervisor.metrics_state)
            if recovery is not None:
                self._supervisor.schedules.restore(recovery.schedules())
            self._bus.start()
            self._supervisor.thread.start()
            if recovered or final:
                supervisor = self._supervisor
                supervisor.post(lambda: supervisor.adopt_final(final))
                supervisor.accept(recovered)
            self._state = "running"
            _live.add(self)
        logger.info("orchestrator %r started (max_workers=%d)", self.config.name, self.config.max_workers)

    def _undo_start(self, pool: ProcessPool | None) -> None:
        """A start that failed part-way stops what it started, so that a retry finds nothing held
        (the journal's lock, the control socket's name, the metrics port, helper processes)."""
        self._close_metrics()
        self._close_control()
        self._control = self._metrics = None
        if pool is not None:
            pool.close()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self._tasks.clear()
        self._recovered.clear()
        unlink_by_prefix(block_prefix(self._block_namespace)[:-2])  # blocks of recovered configs

    def _serve_metrics(self) -> Metrics | None:
        """Bind /metrics first, so a port in use fails before any worker starts."""
        config = self.config
        if config.metrics_port is None:
            return None
        metrics = Metrics(config.name, config.backend, sorted(self._handlers))
        metrics.serve(config.metrics_host, config.metrics_port)
        return metrics

    @property
    def metrics_url(self) -> str | None:
        """The URL of this orchestrator's Prometheus endpoint while it serves one (``metrics_port``)."""
        return None if self._metrics is None else self._metrics.url

    def _start_pool(self, journal: Journal | None) -> tuple[ProcessPool, OrchestratorConfig]:
        """The local process pool, or one on a Dask cluster sized by the cluster's threads."""
        config = self.config
        if config.backend == "local":
            private = (journal.lock_fd,) if journal is not None else ()
            pool = WorkerPool(
                config.start_method,
                config.shm_threshold,
                self._block_namespace,
                private,
                config.max_memory_mb,
            )
            return pool, config
        from orchestrator.backends.dask import DaskPool

        dask_pool = DaskPool(config, sorted(self._handlers), self._block_namespace)
        self._offered_types = dask_pool.offered_types
        self._cluster_nodes = dask_pool.nodes
        threads = dask_pool.capacity()
        # A local cluster sizes itself by max_workers; a remote one by its threads, and keeps no
        # idle process beyond idle_timeout.
        local = config.dask_address is None
        floor = min(config.min_workers, threads) if local else 0
        scaling = config.enable_auto_scaling or not local
        update = {"max_workers": threads, "min_workers": floor, "enable_auto_scaling": scaling}
        return dask_pool, config.model_copy(update=update)

    def shutdown(
        self,
        wait: bool = True,
        cancel_pending: bool = False,
        timeout: float | None = None,
        keep_queued: bool = False,
    ) -> None:
        """Stop taking tasks and stop the workers once their work is done; idempotent.

        Queued tasks still run unless ``cancel_pending``. With ``wait`` the call returns once
        every task is final and every worker process is gone; after ``timeout`` seconds the
        tasks still open are cancelled and their workers killed. Without ``wait`` it returns at
        once and the same shutdown goes on in the background. With a journal, ``keep_queued``
        stops at once and leaves queued and running tasks in the journal for the next process.
        """
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
        timeout = caller_timeout(timeout)
        with self._lifecycle_lock:
            if self._state == "created":
                self._state = "closed"
                return
            if self._state == "running":
                self._state = "closing"
        supervisor = self._supervisor
        assert supervisor is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        with contextlib.suppress(OrchestratorClosedError):  # an earlier shutdown already finished
            supervisor.post(lambda: supervisor.begin_shutdown(cancel_pending, deadline, keep_queued))
        if wait:
            self._finish_shutdown()
        else:
            threading.Thread(target=self._finish_shutdown, name="orch-shutdown", daemon=True).start()

    def _finish_shutdown(self) -> None:
        """Wait for the supervisor to end, then stop callbacks and the control socket."""
        assert self._supervisor is not None
        self._supervisor.thread.join()
        self._bus.close()
        self._close_control()
        self._close_metrics()
        self._close_journal()
        self._state = "closed"
        _live.discard(self)

    def _close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()

    def _close_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.close()

    def _close_control(self) -> None:
        if self._control is not None:
            self._control.close()

    def __enter__(self) -> Self:
        self.initialize()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        return (
            f"<ParallelOrchestrator {self.config.name!r} {self._state} "
            f"max_workers={self.config.max_workers} tasks={len(self._tasks)}>"
        )

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "running":
            warnings.warn(
                f"orchestrator {self.config.name!r} was never shut down; call shutdown() or use `with`",
                ResourceWarning,
                stacklevel=2,
            )

    def __reduce__(self) -> Any:
        raise TypeError("a ParallelOrchestrator cannot be pickled; pass task ids, not the orchestrator")

    # ----------------------------------------------------------------- submitting

    def submit_task(
        self,
        spec: TaskSpec | dict[str, Any],
        *,
        run_at: datetime | None = None,
        delay: float | None = None,
        on_progress: Callable[[Progress], object] | None = None,
        on_complete: Callable[[TaskResult], object] | None = None,
        on_error: Callable[[TaskResult], object] | None = None,
    ) -> str:
        """Queue a task and return its id at once (it never waits for a worker).

        ``run_at`` (a timezone-aware datetime, on the wall clock) or ``delay`` (seconds, on the
        monotonic clock) keeps the task ``queued``, without a worker, until then; it counts as
        queued from now and can be cancelled meanwhile. Once due it competes by priority, then by
        due time. A ``run_at`` in the past runs at once.

        ``on_progress`` receives each `Progress`; ``on_complete`` the `TaskResult` of a success;
        ``on_error`` the `TaskResult` of an error or a cancellation. Callbacks run on the event
        thread, never on the caller's or the supervisor's.

        Raises:
            ScheduleError: both ``run_at`` and ``delay``, a negative delay, or a naive datetime.
            InvalidTaskError: the spec does not validate (the message names the field).
            UnknownTaskTypeError: no handler is registered for the spec's type.
            QueueFullError: ``task_queue_size`` tasks are already queued; nothing was queued.
            JournalError: the journal cannot record it (a full or failing disk); nothing was queued.
            OrchestratorClosedError: after `shutdown`.
            OrchestratorFailedError: after the supervisor failed (the message says why).
        """
        if self._state != "running":
            self._ensure_running()
        if run_at is not None or delay is not None:
            delayed_until(run_at, delay, time.time())
        task = _validate_spec(spec)
        handler = self._handler_for(task.type)
        for name, callback in (
            ("on_progress", on_progress),
            ("on_complete", on_complete),
            ("on_error", on_error),
        ):
            if callback is not None and not callable(callback):
                raise TypeError(f"{name} must be callable, not {type(callback).__name__}")
        self._check_dependencies(task)
        record = self._new_record(task, handler)
        if delay is not None:
            record.due += delay
        elif run_at is not None:
            record.run_at = run_at.timestamp()
            record.due += record.run_at - time.time()
        record.on_progress, record.on_complete, record.on_error = on_progress, on_complete, on_error
        self._enqueue([record])
        return record.task_id

    def submit_plan(self, plan: list[dict[str, Any]]) -> PlanHandle:
        """Submit a graph of tasks with plan-local ids; returns a `PlanHandle`.

        Each task is a spec with an ``id`` (``[A-Za-z0-9_][A-Za-z0-9_-]*``); ``depends_on``
        names plan ids; a config string ``"$id"`` or ``"$id.field.0"`` is replaced at dispatch
        by that dependency's result data (inside a longer string, by its text; ``$$`` is a
        literal dollar). The whole plan is checked first: on any problem nothing is queued.

        Raises:
            PlanError: duplicate or malformed ids, unknown dependencies, a cycle, a reference
                to a task that is not a dependency, or an invalid task spec.
            QueueFullError: the queue has no room for the whole plan.
        """
        self._ensure_running()
        handle = PlanHandle(self, f"plan-{next(self._plan_seq)}")
        handle.add(plan)
        return handle

    def _submit_plan_tasks(
        self, plan_id: str, tasks: list[dict[str, Any]], known: dict[str, str]
    ) -> dict[str, str]:
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
                spec = _validate_spec(fields)
                record = self._new_record(spec, self._handler_for(spec.type))
            except (InvalidTaskError, UnknownTaskTypeError) as exc:
                raise PlanError(f"task {local_id!r}: {exc}") from exc
            record.plan = plan_id
            record.plan_refs = {ref: ids[ref] for ref in references(spec.config)} or None
            ids[local_id] = record.task_id
            records.append(record)
        self._enqueue(records)
        return {local_id: ids[local_id] for local_id in order}

    def _handler_for(self, task_type: str) -> str:
        handler = self._handlers.get(task_type)
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            raise UnknownTaskTypeError(
                f"unknown task type {task_type!r}; known types: {known} "
                "(register more with OrchestratorConfig(handlers={name: 'module:function'}))"
            )
        if self._offered_types is not None and task_type not in self._offered_types():
            raise UnknownTaskTypeError(
                f"no Dask worker offers the task type {task_type!r} now; start workers with "
                f'--resources "{task_type}=N"'
            )
        return handler

    def _check_dependencies(self, task: TaskSpec) -> None:
        for dep_id in task.depends_on:
            self._lookup.find(dep_id)  # unknown or evicted: TaskNotFoundError saying which
        group = task.depends_on_group
        if group is not None:
            supervisor = self._running_supervisor()
            if not supervisor.call(lambda: group in supervisor.results.group_names()):
                raise GroupNotFoundError(f"depends_on_group names {group!r}, a group with no tasks")

    def _new_record(self, spec: TaskSpec, handler: str) -> TaskRecord:
        task_id, seq = self._ids.issue()
        blocks: list[str] = []
        packed = protocol.pack_payload(spec.config, self._blocks, blocks)
        record = TaskRecord(task_id, seq, spec, handler, packed, blocks or None)
        record.due = time.monotonic()
        return record

    def _enqueue(self, records: list[TaskRecord]) -> None:
        """Queue records together, or none of them (queue full, or shut down meanwhile)."""
        supervisor = self._running_supervisor()
        self._admit(records)
        try:
            supervisor.accept(records)
        except OrchestratorClosedError:
            self._unadmit(records)
            if self._journal is not None:
                self._journal.withdraw([record.task_id for record in records])
            raise

    def _admit(self, records: list[TaskRecord]) -> None:
        """Take queue slots for the records, track them and journal them; all or none."""
        if not self._queue_slots.take(len(records)):
            raise QueueFullError(
                f"the queue is full: {self.config.task_queue_size} tasks may wait to run and "
                f"{len(records)} more would not fit; wait for some to start or raise task_queue_size"
            )
        for record in records:
            self._tasks[record.task_id] = record
        if self._journal is not None:
            try:
                self._journal.add([_journal_row(record) for record in records])
            except JournalError:
                self._unadmit(records)
                raise

    def _unadmit(self, records: list[TaskRecord]) -> None:
        for record in records:
            del self._tasks[record.task_id]
        self._queue_slots.untake(len(records))

    def _admit_child(self, fields: dict[str, Any], parent: TaskRecord, detached: bool) -> TaskRecord:
        """A task submitted by a running one, on the supervisor's thread (accepted by the caller)."""
        spec = _validate_spec(fields)
        self._check_dependencies(spec)
        record = self._new_record(spec, self._handler_for(spec.type))
        record.parent, record.detached = parent.task_id, detached
        self._admit([record])
        return record

    def _admit_scheduled(self, spec: TaskSpec, delay: float) -> TaskRecord:
        """A schedule's firing, on the supervisor's thread: admitted here, accepted by the caller."""
        record = self._new_record(spec, self._handler_for(spec.type))
        record.due += delay
        self._admit([record])
        return record

    # ----------------------------------------------------------------- schedules

    def schedule(
        self,
        spec: TaskSpec | dict[str, Any],
        *,
        name: str,
        every: float | timedelta | None = None,
        cron: str | None = None,
        tz: str = "UTC",
        start_at: datetime | None = None,
        end_at: datetime | None = None,
        max_runs: int | None = None,
        jitter: float = 0.0,
        overlap: Literal["skip", "queue", "replace"] = "skip",
        catch_up: Literal["once", "none"] = "once",
    ) -> str:
        """Submit ``spec`` again and again: ``every`` so many seconds, or on a ``cron`` schedule.

        Each firing submits an ordinary task (its own id, result, events and timeout) and emits
        ``schedule_fired``. ``every`` counts on the monotonic clock and first fires at
        ``start_at``, else one interval from now; ``cron`` (five fields, or @hourly, @daily,
        @weekly, @monthly) follows the wall clock in time zone ``tz``. ``jitter`` delays each
        firing's task by a uniform [0, jitter] seconds. ``overlap`` decides what a firing does
        while the previous run is not final: ``skip`` it (``schedule_missed``, reason
        ``overlap``), ``queue`` it anyway, or ``replace`` the previous run (cancelled softly).
        A firing late by more than one slot fires once and the next follows one slot later.
        The schedule ends after ``max_runs`` firings or past ``end_at``. With a journal it
        survives a restart and, unless ``catch_up="none"``, fires once for the slots it missed.

        Raises:
            ScheduleError: a bad name, interval, cron expression, time zone or option.
            OrchestratorError: a schedule of that name exists already.
            InvalidTaskError, UnknownTaskTypeError: as for `submit_task`.
        """
        self._ensure_running()
        task = _validate_spec(spec)
        self._handler_for(task.type)
        if task.depends_on or task.depends_on_group:
            raise ScheduleError("a scheduled task cannot have depends_on or depends_on_group")
        schedule = Schedule(
            name,
            task,
            None if every is None else interval_seconds(every),
            cron,
            tz,
            None if start_at is None else aware_timestamp(start_at, "start_at"),
            None if end_at is None else aware_timestamp(end_at, "end_at"),
            max_runs,
            jitter,
            overlap,
            catch_up,
        )
        self._on_schedules(lambda runner: runner.add(schedule))
        return name

    def unschedule(self, name: str) -> None:
        """Stop the schedule before returning; tasks it already fired go on."""
        self._on_schedules(lambda runner: runner.remove(name))

    def pause_schedule(self, name: str) -> None:
        """Stop firing ``name`` until `resume_schedule`."""
        self._on_schedules(lambda runner: runner.pause(name))

    def resume_schedule(self, name: str) -> None:
        """Fire ``name`` again from its next slot; slots missed while paused are not fired."""
        self._on_schedules(lambda runner: runner.resume(name))

    def schedules(self) -> list[ScheduleInfo]:
        """Every schedule, by name."""
        return self._on_schedules(lambda runner: runner.infos())

    def _on_schedules(self, operation: Callable[[ScheduleRunner], T]) -> T:
        supervisor = self._running_supervisor()
        journal = self._journal

        def run() -> T:
            outcome = operation(supervisor.schedules)
            if journal is not None:
                journal.flush(wait=False)  # into the intake log: the supervisor never waits on the disk
            return outcome

        return supervisor.call(run)

    def recovered_tasks(self) -> list[str]:
        """Ids of the tasks that were queued or running when the journal's last host died
        (those that ended ``interrupted`` included), in submission order."""
        return list(self._recovered)

    def _recover(self, recovery: Recovery) -> tuple[list[TaskRecord], list[TaskRecord]]:
        """Rebuild every journaled task; evicted results are read back from the journal from now on."""
        recovered = recovery.tasks()
        self._recovered = recovered.reopened
        self._ids.continue_after(recovered.highest_seq)
        self._lookup.from_journal = recovery.evicted
        return recovered.to_run, recovered.final

    def _ensure_running(self) -> None:
        if self._state == "created":
            self.initialize()
        elif self._supervisor is not None and self._supervisor.failure is not None:
            raise self._supervisor.closed_error()
        elif self._state != "running":
            raise OrchestratorClosedError(
                f"orchestrator {self.config.name!r} is shut down and takes no new tasks"
            )

    # ----------------------------------------------------------------- reading back

    def get_task_status(self, task_id: str) -> TaskStatus:
        """The task's current status."""
        return self._lookup.find(task_id).status

    def get_result(self, task_id: str) -> TaskResult | None:
        """The task's final result, or None while it is queued or running."""
        return self._lookup.find(task_id).result

    def wait(self, task_id: str, timeout: float | None = None) -> TaskResult:
        """Block until the task is final and return its result.

        Raises:
            TimeoutError: the task is not final after ``timeout`` seconds (it keeps running).
            TaskNotFoundError: unknown id.
        """
        record = self._lookup.find(task_id)
        limit = caller_timeout(timeout)
        if record.result is None:
            # A held lock that the supervisor releases: cheaper on both sides than an Event. No
            # round trip to the supervisor either: it sets ``result`` before it calls the waiters,
            # so either it finds this one in the list or the second look below sees the result.
            final = threading.Lock()
            final.acquire()
            record.waiters.append(lambda result: final.release())
            if record.result is None and not final.acquire(timeout=-1 if limit is None else limit):
                raise TimeoutError(f"task {task_id} is not final after {timeout} s (status {record.status})")
        assert record.result is not None
        return record.result

    async def wait_async(self, task_id: str, timeout: float | None = None) -> TaskResult:
        """Await the task's final result without blocking the event loop.

        Raises:
            TimeoutError: the task is not final after ``timeout`` seconds (it keeps running).
            TaskNotFoundError: unknown id.
        """
        record = self._lookup.find(task_id)
        limit = caller_timeout(timeout)
        if record.result is not None:
            return record.result
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TaskResult] = loop.create_future()

        def resolve(result: TaskResult) -> None:
            if not future.done():
                future.set_result(result)

        def notify(result: TaskResult) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to tell
                loop.call_soon_threadsafe(resolve, result)

        self._notify_when_final([record], notify)
        try:
            return await asyncio.wait_for(future, limit)
        except TimeoutError:
            raise TimeoutError(f"task {task_id} is not final after {timeout} s") from None

    def stream(self, task_id: str) -> Iterator[Any]:
        """Yield each partial result of the task in emit order, then its final `TaskResult`.

        A stream opened at any time replays the partials kept so far (the newest 1,000 per
        task, of every attempt) before the live ones. It stops after the final result.
        """
        record = self._lookup.find(task_id)
        supervisor = self._running_supervisor()
        changed = threading.Event()
        supervisor.call(lambda: supervisor.results.watch(record, changed.set))
        cursor = StreamCursor(record)
        try:
            while True:
                changed.clear()
                items, result = cursor.take()
                yield from (data for _, data in items)
                if result is not None:
                    yield result
                    return
                changed.wait()
        finally:
            _post_quietly(supervisor, lambda: supervisor.results.stop_watching(record, changed.set))

    async def stream_async(self, task_id: str) -> AsyncIterator[Any]:
        """`stream` for asyncio: ``async for item in orch.stream_async(task_id)``."""
        record = self._lookup.find(task_id)
        supervisor = self._running_supervisor()
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to wake
                loop.call_soon_threadsafe(changed.set)

        supervisor.call(lambda: supervisor.results.watch(record, wake))
        cursor = StreamCursor(record)
        try:
            while True:
                changed.clear()
                items, result = cursor.take()
                for _, data in items:
                    yield data
                if result is not None:
                    yield result
                    return
                await changed.wait()
        finally:
            _post_quietly(supervisor, lambda: supervisor.results.stop_watching(record, wake))

    def as_completed(self, task_ids: Iterable[str], timeout: float | None = None) -> Iterator[TaskResult]:
        """Yield the tasks' results in the order they became final (those already final first).

        Raises:
            TimeoutError: ``timeout`` seconds (for the whole iteration) passed first.
            TaskNotFoundError: an unknown id (raised before anything is yielded).
        """
        limit = caller_timeout(timeout)
        records = [self._lookup.find(task_id) for task_id in dict.fromkeys(task_ids)]
        finished: queue.SimpleQueue[TaskResult] = queue.SimpleQueue()
        self._notify_when_final(records, finished.put)
        deadline = None if limit is None else time.monotonic() + limit
        for done in range(len(records)):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                yield finished.get(timeout=remaining)
            except queue.Empty:
                raise TimeoutError(
                    f"{len(records) - done} of {len(records)} tasks not final after {timeout} s"
                ) from None

    async def as_completed_async(
        self, task_ids: Iterable[str], timeout: float | None = None
    ) -> AsyncIterator[TaskResult]:
        """`as_completed` for asyncio: ``async for result in orch.as_completed_async(ids)``."""
        limit = caller_timeout(timeout)
        records = [self._lookup.find(task_id) for task_id in dict.fromkeys(task_ids)]
        loop = asyncio.get_running_loop()
        finished: asyncio.Queue[TaskResult] = asyncio.Queue()

        def notify(result: TaskResult) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(finished.put_nowait, result)

        self._notify_when_final(records, notify)
        deadline = None if limit is None else loop.time() + limit
        for done in range(len(records)):
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                yield await asyncio.wait_for(finished.get(), remaining)
            except TimeoutError:
                raise TimeoutError(
                    f"{len(records) - done} of {len(records)} tasks not final after {timeout} s"
                ) from None

    def cancel(self, task_id: str) -> bool:
        """Cancel a queued or running task; False if it already ended.

        A queued task is removed at once. A running handler gets `workers.TaskCancelled` raised
        inside it; if it is still running ``timeout_grace`` seconds later its worker is killed.
        Either way the task ends ``cancelled`` at once.
        """
        record = self._lookup.find(task_id)
        supervisor = self._supervisor
        if supervisor is None or record.result is not None:
            return False
        return supervisor.call(lambda: supervisor.cancel(record))

    def get_group(self, name: str) -> GroupStatus:
        """A group's members in submission order and their counts by status.

        Raises:
            GroupNotFoundError: no task was ever submitted with ``group=name``.
        """
        supervisor = self._running_supervisor()
        return supervisor.call(lambda: supervisor.results.group_status(name))

    def wait_group(self, name: str, timeout: float | None = None) -> list[TaskResult]:
        """Wait for the group's current members; their results in submission order.

        Raises:
            TimeoutError: not all final after ``timeout`` seconds.
            GroupNotFoundError: unknown group.
        """
        ids = self.get_group(name).task_ids
        results = {result.task_id: result for result in self.as_completed(ids, timeout)}
        return [results[task_id] for task_id in ids]

    def cancel_group(self, name: str) -> int:
        """Cancel every member of the group that is not final; returns how many were."""
        return sum(self.cancel(task_id) for task_id in self.get_group(name).task_ids)

    def get_workers(self) -> list[WorkerInfo]:
        """A snapshot of every worker process, with its RSS."""
        supervisor = self._supervisor
        if supervisor is None:
            return []
        rows = supervisor.call(supervisor.worker_rows)
        infos = []
        for row in rows:
            local = row.pop("local")
            infos.append(WorkerInfo(**row, rss_bytes=_rss(row["pid"]) if local else None))
        return infos

    def snapshot(self) -> dict[str, Any]:
        """Everything ``orch status --json`` shows of this orchestrator, as one JSON-ready dict.

        Keys: ``name``, ``pid``, ``uptime_s``, ``tasks_per_s`` (last minute), ``status`` (the
        fields of `get_status`), ``workers`` (those of `get_workers`, with ``cpu_percent`` since
        the previous snapshot and the current task's ``progress``), ``schedules`` and
        ``dask_workers``, and ``metrics_url`` (None without ``metrics_port``). For hosts that
        render their own view ("what are you doing?").
        """
        status = self.get_status()
        workers = []
        for worker in self.get_workers():
            row = worker.model_dump(mode="json")
            row["cpu_percent"] = self._cpu_meter.percent(worker.pid) if worker.rss_bytes is not None else None
            progress = self._lookup.progress_of(worker.current_task)
            row["progress"] = progress.model_dump(mode="json") if progress else None
            workers.append(row)
        running = self._supervisor is not None and self._state == "running"
        return {
            "name": self.config.name,
            "pid": os.getpid(),
            "uptime_s": status.uptime_s,
            "tasks_per_s": self._tasks_per_second() if running else 0.0,
            "status": status.model_dump(mode="json"),
            "workers": workers,
            "schedules": [info.model_dump(mode="json") for info in self.schedules()] if running else [],
            "dask_workers": self._cluster_nodes() if running else [],
            "metrics_url": self.metrics_url,
        }

    def get_status(self) -> OrchestratorStatus:
        """A snapshot of the pool, the queue and the task counts."""
        supervisor = self._supervisor
        if supervisor is None:
            return OrchestratorStatus(
                workers=0,
                busy=0,
                idle=0,
                queued=0,
                running=0,
                completed=0,
                failed=0,
                cancelled=0,
                max_workers=self.config.max_workers,
                task_queue_size=self.config.task_queue_size,
                uptime_s=0.0,
                state=self._state,
            )
        status = supervisor.call(supervisor.status)
        if supervisor.failure is not None:
            return status.model_copy(update={"state": "failed", "failure": supervisor.failure})
        return status if self._state == "running" else status.model_copy(update={"state": self._state})

    def on(self, event: str, callback: Callable[[Any], object]) -> Callable[[], None]:
        """Call ``callback(event_model)`` for every ``event``; returns a function that unsubscribes.

        Events: task_queued, task_started, task_progress, task_partial, task_completed,
        task_error, task_cancelled, worker_spawned, worker_exited, group_completed,
        plan_completed, schedule_fired, schedule_missed. Callbacks run on the event thread, in
        order per task; one that raises is logged and changes nothing else.
        """
        return self._bus.on(event, callback)

    # ----------------------------------------------------------------- topics

    def publish(self, topic: str, data: Any) -> None:
        """Publish ``data`` on ``topic``; returns once it is in every open subscription's buffer.

        Raises `TypeError` (nothing sent) when ``data`` is not msgpack-serialisable.
        """
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"a topic is a non-empty str, not {topic!r}")
        try:
            protocol.check_payload(data, "data")
            copied = protocol.unpack_payload(protocol.pack_payload(data))
        except protocol.PayloadError as exc:
            raise TypeError(f"publish to {topic!r}: {exc}") from None
        supervisor = self._running_supervisor()
        supervisor.call(lambda: supervisor.publish(topic, copied))

    def subscribe(self, topic: str, callback: Callable[[Message], object]) -> Callable[[], None]:
        """Call ``callback(Message)`` on the event thread for each message published on ``topic``
        from now on; returns a function that unsubscribes. The subscription buffers at most
        ``max_pending_messages`` undelivered messages, dropping the oldest (``Message.dropped``).
        """
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"a topic is a non-empty str, not {topic!r}")
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        supervisor = self._running_supervisor()
        subscription = supervisor.call(lambda: supervisor.broker.subscribe_host(topic, callback))

        def unsubscribe() -> None:
            subscription.closed = True
            _post_quietly(supervisor, lambda: supervisor.broker.unsubscribe_host(subscription))

        return unsubscribe

    def _notify_when_final(self, records: list[TaskRecord], notify: Callable[[TaskResult], None]) -> None:
        """Have the supervisor call ``notify(result)`` as each task becomes final (at once for those
        already final, in order); ``notify`` runs on the supervisor's thread and must not block."""
        supervisor = self._running_supervisor()
        try:
            supervisor.post(lambda: supervisor.results.add_waiters(records, notify))
        except OrchestratorClosedError:
            supervisor.results.add_waiters(records, notify)  # it has exited: every task is final

    def _tasks_per_second(self) -> float:
        supervisor = self._running_supervisor()
        return supervisor.call(supervisor.results.tasks_per_second)

    def _running_supervisor(self) -> Supervisor:
        if self._supervisor is None:
            self._ensure_running()
        assert self._supervisor is not None
        return self._supervisor

    def _shutdown_at_exit(self) -> None:
        """An exit without `shutdown` (an unhandled exception, most often): with a journal, the open
        tasks stay in it for the next process, as after a crash; without one they are cancelled."""
        if self._state != "running":
            if self._state == "closing" and self._supervisor is not None:
                self._finish_shutdown()
            return
        if self._journal is not None:
            logger.warning(
                "orchestrator %r still running at exit: its open tasks stay in the journal %s for the "
                "next process (call shutdown() first to run or cancel them)",
                self.config.name,
                self._journal.path,
            )
            self.shutdown(wait=True, keep_queued=True)
        else:
            logger.warning(
                "orchestrator %r still running at exit: cancelling its tasks (call shutdown() first)",
                self.config.name,
            )
            self.shutdown(wait=True, cancel_pending=True, timeout=0)


@final
class PlanHandle:
    """A submitted plan: its task ids, status and results; `add` extends it while it runs."""

    def __init__(self, orchestrator: ParallelOrchestrator, plan_id: str) -> None:
        self.plan_id = plan_id
        self._orchestrator = orchestrator
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()  # add() may be called from several planner threads

    @property
    def ids(self) -> dict[str, str]:
        """Plan id -> task id, for every task of the plan so far."""
        return dict(self._ids)

    def add(self, tasks: list[dict[str, Any]]) -> dict[str, str]:
        """Append tasks (which may depend on the plan's tasks); returns their plan id -> task id.

        Raises:
            PlanError: as `ParallelOrchestrator.submit_plan`; nothing of ``tasks`` is queued.
        """
        with self._lock:
            added = self._orchestrator._submit_plan_tasks(self.plan_id, tasks, self._ids)
            self._ids.update(added)
            return added

    def status(self) -> dict[str, int]:
        """How many of the plan's tasks are in each status."""
        return status_counts([self._orchestrator.get_task_status(t) for t in self._ids.values()])

    def wait(self, timeout: float | None = None) -> dict[str, TaskResult]:
        """Wait for every task of the plan; plan id -> result.

        Raises:
            TimeoutError: not all final after ``timeout`` seconds.
        """
        by_task = {task_id: plan_id for plan_id, task_id in self._ids.items()}
        return {by_task[r.task_id]: r for r in self._orchestrator.as_completed(by_task, timeout)}

    def cancel(self) -> int:
        """Cancel every task of the plan that is not final; returns how many were."""
        return sum(self._orchestrator.cancel(task_id) for task_id in self._ids.values())

    def __repr__(self) -> str:
        return f"<PlanHandle {self.plan_id} tasks={len(self._ids)}>"


def _post_quietly(supervisor: Supervisor, command: Callable[[], None]) -> None:
    with contextlib.suppress(OrchestratorClosedError):
        supervisor.post(command)


def _journal_row(record: TaskRecord) -> tuple[Any, ...]:
    spec = record.spec
    now_wall = time.time()
    return (
        record.task_id,
        record.seq,
        spec.model_dump_json(exclude={"config"}, exclude_defaults=True),  # a smaller row: faster moves
        protocol.pack_payload(spec.config),  # never a shared-memory reference: blocks die with the host
        record.handler,
        record.plan,
        json.dumps(record.plan_refs) if record.plan_refs else None,
        now_wall,
        _not_before(record, now_wall),
        record.parent,
        record.detached,
    )


def _not_before(record: TaskRecord, now_wall: float) -> float | None:
    """A delayed task's due time on the wall clock (a restart has no use for monotonic times)."""
    if record.run_at is not None:
        return record.run_at
    ahead = record.due - time.monotonic()
    return now_wall + ahead if ahead > 0 else None


def _build_config(config: OrchestratorConfig | None, overrides: dict[str, Any]) -> OrchestratorConfig:
    if config is not None and not isinstance(config, OrchestratorConfig):
        raise ConfigError(f"config must be an OrchestratorConfig, not {type(config).__name__}")
    if config is not None and not overrides:
        return config
    fields = config.model_dump(exclude_unset=True) if config is not None else {}
    return OrchestratorConfig(**{**fields, **overrides})


def _validate_spec(spec: TaskSpec | dict[str, Any]) -> TaskSpec:
    if isinstance(spec, TaskSpec):
        return spec
    if not isinstance(spec, dict):
        raise InvalidTaskError(f"a task spec must be a TaskSpec or a dict, not {type(spec).__name__}")
    try:
        return TaskSpec.model_validate(spec)
    except ValidationError as exc:
        raise InvalidTaskError(f"invalid task spec: {describe(exc)}") from exc


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


@atexit.register
def _shutdown_at_exit() -> None:
    for orchestrator in list(_live):
        try:
            orchestrator._shutdown_at_exit()
        except OrchestratorError:
            logger.exception("shutting down %r at exit failed", orchestrator)
