"""`Supervisor`: builds the collaborators of this package and runs the loop on its own thread.

Public methods never touch its state: they post commands (``post``/``call``) that run here, in
order, between waits. The package docstring draws the data flow.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import random
import selectors
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

import psutil

from orchestrator.backends.base import ProcessPool, WorkerHandle, exit_reason_of
from orchestrator.config import OrchestratorConfig, TaskSpec
from orchestrator.durations import clamp_wait
from orchestrator.errors import (
    OrchestratorClosedError,
    OrchestratorError,
    OrchestratorFailedError,
    QueueFullError,
)
from orchestrator.events import EventBus
from orchestrator.journal import Journal
from orchestrator.limits import process_tree, signal_processes
from orchestrator.logs import task_extra
from orchestrator.messaging import Broker
from orchestrator.metrics import Metrics, WorkerReading
from orchestrator.models import (
    ErrorKind,
    OrchestratorStatus,
    Progress,
    TaskError,
    TaskResult,
    TaskStatus,
    assemble,
)
from orchestrator.plans import PlanError, substitute
from orchestrator.scheduler import QueueSlots, ReadyQueue, Timer, Timers
from orchestrator.schedules import WALL_CLOCK_RECHECK, Schedule, ScheduleRunner
from orchestrator.supervisor.announce import Announcer
from orchestrator.supervisor.capacity import Capacity
from orchestrator.supervisor.graph import TaskGraph
from orchestrator.supervisor.loop import CommandQueue
from orchestrator.supervisor.record import TaskRecord, is_delayed, result_fields
from orchestrator.supervisor.resources import ResourceLimits
from orchestrator.supervisor.results import Results
from orchestrator.trust import Refused, vetted_config
from workers import protocol
from workers.shm import BlockReader, BlockWriter, block_prefix, unlink_block, unlink_by_prefix

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A worker told to exit gets this long before it is killed.
STOP_TIMEOUT: Final = 3.0
# Between the SIGTERM and the SIGKILL of a worker whose handler ignored a stop request.
TERMINATE_GRACE: Final = 0.25
# Workers that die before saying Hello this many times in a row stop the pool from respawning
# on its own (min_workers, fixed pools); each task still gets its own attempt and error.
MAX_START_FAILURES: Final = 3
# Partial results kept per task for `stream` (the oldest are dropped first).
MAX_PARTIALS_KEPT: Final = 1000
# The kinds of failure that `TaskSpec.retries` retries (exception only with retry_on_exception, or
# when the exception's class is named in retry_on).
RETRYABLE: Final = frozenset({"worker_crashed", "timeout", "memory_limit", "rate_limit"})

_REPLIES: Final = (protocol.TaskDone, protocol.TaskFailed)


@dataclass(eq=False)
class _ChildWait:
    """A task blocked in ``ctx.wait`` or ``ctx.as_completed`` (``any_of``) on other tasks."""

    worker: WorkerHandle
    call_id: int
    ids: list[str]
    any_of: bool
    answered: bool = False


def _clocks() -> tuple[float, float]:
    return time.monotonic(), time.time()


_EPOCH: Final = datetime.fromtimestamp(0, tz=UTC)


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC)


class Supervisor:
    """Runs the scheduling loop on its own thread; see the module docstring for the data flow."""

    def __init__(
        self,
        config: OrchestratorConfig,
        tasks: dict[str, TaskRecord],
        queue_slots: QueueSlots,
        bus: EventBus,
        pool: ProcessPool,
        blocks: BlockWriter | None = None,
        journal: Journal | None = None,
        admit: Callable[[TaskSpec, float], TaskRecord] | None = None,
        admit_child: Callable[[dict[str, Any], TaskRecord, bool], TaskRecord] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._announce = Announcer(bus, metrics, config.log_tasks)
        self._tasks = tasks
        self._queue_slots = queue_slots
        self._bus = bus
        self._pool = pool
        self._blocks = blocks
        self._journal = journal
        self._journal_moved_at = 0.0
        # Blocks come only from this orchestrator's own processes (shared memory is off on Dask).
        accepted = block_prefix(pool.block_namespace)[:-2] if blocks is not None else None
        self._block_reader = BlockReader(copy=True, accept=accepted)
        self._ready = ReadyQueue()
        self._timers = Timers()
        self._workers: dict[int, WorkerHandle] = {}
        # One selector for the whole life of the loop: worker pipes, process sentinels, wake-ups.
        self._selector = selectors.DefaultSelector()
        self._capacity = Capacity(config)
        self._graph = TaskGraph()
        self.results = Results(config, tasks, self._graph, self._timers, journal)
        self._to_release: deque[TaskRecord] = deque()
        self._releasing = False
        self._prefetching = False
        self._counts = dict.fromkeys(TaskStatus, 0)
        self._next_worker_id = 1
        self._start_failures = 0
        self._closing = False
        self._limits = ResourceLimits(config, self._timers, self._busy_workers, self._judge_usage)
        self._started = time.monotonic()
        # Why the loop ended by a fault of ours (None while it runs, and after a clean shutdown).
        self.failure: str | None = None
        self._commands = CommandQueue(self._selector, self.closed_error)
        # Tasks delayed until a wall-clock time, earliest first, behind one timer.
        self._delayed: list[tuple[float, int, TaskRecord]] = []
        self._delayed_timer: Timer | None = None
        self._admit = admit
        self._schedule_timer: Timer | None = None
        self.schedules = ScheduleRunner(self, _clocks)
        pool.on_arrival = self._wake
        self._admit_child = admit_child
        self.broker = Broker(bus, blocks, config.max_pending_messages)
        self._child_waits: dict[str, list[_ChildWait]] = {}
        self.thread = threading.Thread(target=self._run, name=f"orch-supervisor-{config.name}", daemon=True)

    # ----------------------------------------------------------------- commands (any thread)

    def post(self, command: Callable[[], None]) -> None:
        """Run ``command`` on the supervisor thread soon; raise if the supervisor has exited."""
        self._commands.put((command,))

    def accept(self, records: list[TaskRecord]) -> None:
        """Take newly submitted tasks soon, in order: dependencies first (their queue slots are
        already held); raise if the supervisor has exited."""
        self._commands.put(records)

    def closed_error(self) -> OrchestratorClosedError:
        """What a command posted after the loop ended raises: why it ended."""
        if self.failure is not None:
            return OrchestratorFailedError(
                f"the orchestrator's supervisor failed ({self.failure}); see the CRITICAL log record. "
                "Create a new orchestrator (with a journal it recovers the open tasks)"
            )
        return OrchestratorClosedError("the orchestrator has shut down")

    def _wake(self) -> None:
        """New capacity arrived (from another thread): take it in, so idle_timeout applies to it."""
        with contextlib.suppress(OrchestratorClosedError):
            self.post(self._take_arrivals)

    def _take_arrivals(self) -> None:
        while (
            not self._closing
            and sum(not w.lent_out for w in self._workers.values()) < self._config.max_workers
            and self._spawn_worker(waiting=False) is not None
        ):
            pass

    def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the supervisor thread and return its result (inline once it exited)."""
        if threading.current_thread() is self.thread:
            return function()
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(function())
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                future.set_exception(exc)

        try:
            self.post(run)
        except OrchestratorClosedError:
            self.thread.join()
            return function()
        return future.result()

    # ----------------------------------------------------------------- the loop

    def _run(self) -> None:
        try:
            self._replenish_workers()
            self._take_arrivals()
            journal_due: float | None = None
            while not self._finished():
                self._dispatch_ready_tasks()
                timeout = self._timers.time_to_next(time.monotonic())
                if journal_due is not None:
                    timeout = journal_due if timeout is None else min(timeout, journal_due)
                self._commands.expect_wakeup()
                if self._commands.pending:
                    timeout = 0
                self._handle_ready(self._selector.select(clamp_wait(timeout)))
                self._fire_due_timers()
                if self._journal is not None:
                    journal_due = self._flush_journal(self._journal)
        except BaseException as exc:  # noqa: BLE001 - any fault of ours: reported, never data loss
            self._fail_loudly(exc)
        finally:
            self._close_down()

    def _fail_loudly(self, exc: BaseException) -> None:
        """A fault of ours escaped the loop: say so everywhere, and lose nothing that was accepted.

        With a journal, open tasks stay open there (queued, or running at their attempt) for the
        next process to recover, exactly as after a host crash; only memory learns they ended.
        """
        self.failure = f"{type(exc).__name__}: {exc}"
        logger.critical(
            "orchestrator %r: the supervisor failed (%s); its workers are killed and its open tasks "
            "end here%s",
            self._config.name,
            self.failure,
            ", and stay open in the journal for the next process" if self._journal is not None else "",
            exc_info=exc,
        )
        if self._journal is not None:
            journal = self._journal
            self._stop_journaling()
            try:
                journal.flush(wait=False)  # this wake-up's changes, into the intake log; no disk wait
            except Exception:
                logger.exception("the journal could not take the last changes before the failure")

    def _stop_journaling(self) -> None:
        """What happens to open tasks from here on is not journaled: they stay open there."""
        self._journal = None
        self.results.journal = None

    def _flush_journal(self, journal: Journal) -> float | None:
        """Group-commit this wake-up; once results moved into SQLite, older ones may leave memory."""
        due = journal.flush(wait=False)
        if journal.moved_at != self._journal_moved_at:
            self._journal_moved_at = journal.moved_at
            self.results.evict()
        return due

    def _finished(self) -> bool:
        return (
            self._closing
            and not self._workers
            and not self._commands.pending
            and self._counts[TaskStatus.QUEUED] == 0
            and self._counts[TaskStatus.RUNNING] == 0
        )

    def _handle_ready(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        deaths = []
        woken = False
        for key, _ in ready:
            if key.data is None:
                woken = True
                continue
            worker, what = key.data
            if what == "pipe":
                self._drain(worker)
            else:
                deaths.append(worker)
        for worker in deaths:
            if worker.worker_id in self._workers:
                self._reap(worker)
        for command in self._commands.take(woken):
            self._execute(command)

    def _execute(self, item: Callable[[], None] | TaskRecord) -> None:
        if isinstance(item, TaskRecord):
            try:
                self._accept_one(item)
            except Exception as exc:  # noqa: BLE001 - contained to that task
                self._contain(exc, "accepting it", item)
        else:
            item()

    def _fire_due_timers(self) -> None:
        for timer in self._timers.pop_due(time.monotonic()):
            try:
                timer.action(*timer.args)
            except Exception as exc:  # noqa: BLE001 - contained to its task or worker, if it has one
                about = next((arg for arg in timer.args if isinstance(arg, TaskRecord | WorkerHandle)), None)
                self._contain(exc, f"its timer ({getattr(timer.action, '__name__', 'timer')})", about)

    def _contain(self, exc: Exception, doing: str, about: TaskRecord | WorkerHandle | None) -> None:
        """A fault while handling one task or one worker ends that task (or kills that worker), not
        the supervisor. A fault about neither is the supervisor's own: it is raised again, and ends
        the loop loudly."""
        if about is None:
            raise exc
        logger.error("internal error while %s: %s", doing, exc, exc_info=exc)
        if isinstance(about, WorkerHandle):
            self._expel(about, exc)
        elif about.result is None:
            self._fail(about, "interrupted", f"the orchestrator failed while {doing}: {exc!r}")

    # ----------------------------------------------------------------- accepting work

    def adopt_final(self, records: list[TaskRecord]) -> None:
        """Take in tasks recovered already final: back in their groups and plans, and in line for
        eviction like any other result."""
        for record in records:
            self._graph.join(record)
            self._graph.release(record)
        self.results.adopt(records)

    def _accept_one(self, record: TaskRecord) -> None:
        self._counts[TaskStatus.QUEUED] += 1
        self._announce.queued(record)
        self._graph.join(record)
        failed = self._graph.link(record, self._tasks)
        if failed is not None:
            self._fail_dependant(record, failed)
        elif not record.waiting:
            self._make_ready(record)

    def _make_ready(self, record: TaskRecord) -> None:
        if record.run_at is not None:
            if record.run_at > time.time():
                heapq.heappush(self._delayed, (record.run_at, record.seq, record))
                self._arm_delayed()
                return
            record.run_at = None
        elif record.due > time.monotonic():
            record.timer = self._timers.schedule(record.due, self._make_ready, record)
            return
        record.in_ready = True
        record.ready_at = time.monotonic()
        self._ready.push(record.spec.type, record.spec.priority, record.due, record.seq, record.task_id)

    def _arm_delayed(self) -> None:
        """One timer for every wall-clock delayed task, re-reading the clock at least every second."""
        Timers.cancel(self._delayed_timer)
        self._delayed_timer = None
        while self._delayed and self._delayed[0][2].result is not None:
            heapq.heappop(self._delayed)  # cancelled while it waited
        if self._delayed:
            wait = min(self._delayed[0][0] - time.time(), WALL_CLOCK_RECHECK)
            self._delayed_timer = self._timers.schedule(time.monotonic() + max(0.0, wait), self._release_due)

    def _release_due(self) -> None:
        now = time.time()
        while self._delayed and self._delayed[0][0] <= now:
            record = heapq.heappop(self._delayed)[2]
            if record.result is None:
                self._make_ready(record)
        self._arm_delayed()

    def _dispatch_ready_tasks(self) -> None:
        if not self._ready:
            if self._prefetching:
                self._revoke_prefetched()
            return
        blocked: set[str] = set()

        def may_run(task_type: str) -> bool:
            return task_type not in blocked and self._capacity.has_room(task_type)

        while self._ready:
            best = self._ready.peek_best(may_run)
            if best is None:
                return
            task_type, task_id = best
            worker = self._worker_for(task_type)
            if worker is None:
                blocked.add(task_type)
                self._revoke_outranked(self._tasks[task_id])
                continue
            self._ready.pop(task_type)
            record = self._tasks[task_id]
            record.in_ready = False
            message = self._run_message(record)
            if message is not None:
                self._assign(record, worker, message)
        if not self._ready:
            self._revoke_prefetched()
        self._retire_unneeded_workers()

    def _run_message(self, record: TaskRecord) -> protocol.RunTask | None:
        """The RunTask for this attempt: dependencies' results, references substituted.

        None when a reference cannot be resolved (the task has then failed).
        """
        spec = record.spec
        config, deps = record.packed_config, _EMPTY_DEPS
        substituted: dict[str, Any] | None = None
        if record.dep_ids:
            results: dict[str, Any] = {}
            errors: dict[str, Any] = {}
            for dep_id in record.dep_ids:
                outcome = self._tasks[dep_id].result
                assert outcome is not None
                if outcome.success:
                    results[dep_id] = outcome.data
                else:
                    errors[dep_id] = outcome.error.model_dump() if outcome.error else {}
            deps = protocol.pack_payload([results, errors], self._blocks, self._blocks_of(record))
            if record.plan_refs:
                try:
                    substituted = self._substituted_config(record, results, errors)
                    config = protocol.pack_payload(substituted, self._blocks, self._blocks_of(record))
                except (PlanError, protocol.PayloadError) as exc:
                    self._fail(record, "dependency_failed", str(exc))
                    return None
        try:
            vetted = vetted_config(
                record.handler, spec.config if substituted is None else substituted, self._config
            )
            if vetted is not None:
                config = protocol.pack_payload(vetted, self._blocks, self._blocks_of(record))
        except Refused as exc:
            self._fail(record, "exception", str(exc), exception_type="PermissionError")
            return None
        return protocol.RunTask(
            record.task_id,
            spec.type,
            record.handler,
            spec.description,
            config,
            deps,
            record.attempts + 1,
            spec.group,
        )

    @staticmethod
    def _substituted_config(record: TaskRecord, results: dict[str, Any], errors: dict[str, Any]) -> Any:
        refs = record.plan_refs or {}

        def lookup(plan_id: str) -> Any:
            task_id = refs[plan_id]
            return results[task_id] if task_id in results else errors.get(task_id)

        return substitute(record.spec.config, lookup)

    @staticmethod
    def _blocks_of(record: TaskRecord) -> list[str]:
        """The list the names of the task's blocks go to (made on first use)."""
        if record.blocks is None:
            record.blocks = []
        return record.blocks

    def _worker_for(self, task_type: str) -> WorkerHandle | None:
        """Where the task goes: a worker of its type that starts it at once (the most recently
        active), an untyped one, a new one, then the least loaded one of its type that can hold it
        queued (prefetch); else none, and an idle worker of another type is retired for room."""
        # One pass over the pool, on every dispatch: it runs per task.
        pool = self._pool
        typed = untyped = ahead = None
        working = 0
        for w in self._workers.values():
            working += not w.lent_out
            if w.type == task_type:
                if (typed is None or w.last_active > typed.last_active) and w.has_room():
                    typed = w if pool.may_run(w, task_type) else typed
                if (ahead is None or len(w.tasks) < len(ahead.tasks)) and w.can_prefetch():
                    ahead = w
            elif w.type is None and (untyped is None or w.last_active > untyped.last_active) and w.has_room():
                untyped = w if pool.may_run(w, task_type) else untyped
        if typed is not None or untyped is not None:
            return typed or untyped
        if working < self._config.max_workers:
            spawned = self._spawn_worker(task_type)
            if spawned is not None:
                return spawned
        if ahead is None:
            self._make_room()
        return ahead

    def _revoke_prefetched(self) -> None:
        """An idle worker must not watch a task wait behind a long one elsewhere: ask for it back."""
        idle = [w for w in self._workers.values() if w.state == "idle" and w.exit_reason is None]
        if not idle:
            return
        for worker in idle:
            for other in self._workers.values():
                if other is worker or (worker.type is not None and other.type != worker.type):
                    continue
                record = next(iter(self._held_behind(other)), None)
                if record is not None:
                    self._revoke(record)
                    break

    def _revoke_outranked(self, waiting: TaskRecord) -> None:
        """A task waits for a worker while one of lower priority sits prefetched: take that back."""
        if not self._prefetching:
            return
        outranked = [
            record
            for worker in self._workers.values()
            if worker.type == waiting.spec.type
            for record in self._held_behind(worker)
            if record.spec.priority < waiting.spec.priority
        ]
        if outranked:
            self._revoke(min(outranked, key=lambda r: (r.spec.priority, -r.seq)))

    def _revoke(self, record: TaskRecord) -> None:
        """Ask the worker that holds a prefetched task to give it back (it answers `Revoked`, or
        `TaskStarted` when it had taken it already)."""
        worker = record.worker
        assert worker is not None
        record.revoking = True
        worker.send(protocol.Revoke(record.task_id, worker.tasks[record.task_id]))

    def _on_revoked_message(self, worker: WorkerHandle, task_id: str) -> None:
        record = self._active_record(worker, task_id)
        if record is not None and not record.revoking:
            # A task given back that was never asked back would run again, and again.
            raise protocol.ProtocolError(f"Revoked {task_id!r}, which the host did not ask back")
        self._on_revoked(worker, task_id)

    def _on_revoked(self, worker: WorkerHandle, task_id: str) -> None:
        record = self._active_record(worker, task_id)
        if record is None:
            return
        del worker.tasks[task_id]
        self._capacity.vacate(record.spec.type)
        record.worker = None
        record.attempts -= 1
        record.revoking = False
        if self._journal is not None:
            self._journal.requeued(record.task_id, record.attempts)
        record.holds_slot = self._queue_slots.take()
        self._make_ready(record)
        if not worker.tasks and worker.worker_id in self._workers and worker.exit_reason is None:
            self._make_idle(worker)
        self._start_head(worker)

    def _make_room(self) -> None:
        """Retire the least recently used idle worker of another type, one at a time."""
        if any(w.exit_reason == "retired" for w in self._workers.values()):
            return
        idle = [w for w in self._workers.values() if w.state == "idle" and w.type is not None]
        if idle:
            self._retire(min(idle, key=lambda w: w.last_active), "retired")

    def _assign(self, record: TaskRecord, worker: WorkerHandle, msg: protocol.RunTask) -> None:
        spec = record.spec
        if record.holds_slot:
            record.holds_slot = False
            self._queue_slots.give()
        if worker.state != "starting":
            Timers.cancel(worker.timer)  # its idle timer (a starting worker's is its start deadline)
        worker.type = spec.type
        worker.sent += 1
        msg.seq = worker.tasks[record.task_id] = worker.sent
        record.worker = worker
        record.attempts += 1
        self._capacity.occupy(spec.type)
        msg.report_start = worker.concurrent is not False
        if worker.state == "starting":
            worker.pending.append(msg)
        else:
            worker.state = "busy"
            worker.send(msg)
            if len(worker.tasks) == 1:
                self._start_head(worker)

    # ----------------------------------------------------------------- worker messages

    def _drain(self, worker: WorkerHandle, until_empty: bool = False) -> None:
        """Handle what the worker's pipe holds: one read when the selector found it readable, or
        everything left (``until_empty``, a dead worker's last words; a pipe another process still
        holds open may then be empty without EOF, so it is polled before each read).

        A frame that is not a valid message, or a message whose handling fails, is that worker's
        fault: it is killed and its tasks end as crashed; the supervisor goes on.
        """
        while True:
            try:
                if until_empty and not worker.conn.poll(0):
                    return
                frames = worker.frames.read()
            except (EOFError, OSError):
                self._unwatch(worker.conn.fileno())
                self._pool.connection_lost(worker)  # a remote process's death is seen only here
                return
            except protocol.ProtocolError as exc:
                if worker.violation is None:
                    self._expel(worker, exc)
                self._unwatch(worker.conn.fileno())  # its framing is lost: nothing more can be read
                self._pool.connection_lost(worker)
                return
            if worker.violation is None:  # an expelled worker's frames are read only to see its end
                self._handle_frames(worker, frames)
            if not until_empty:
                return

    def _handle_frames(self, worker: WorkerHandle, frames: list[bytes]) -> None:
        for frame in frames:
            try:
                self._handle_message(worker, protocol.decode(frame))
            except Exception as exc:  # noqa: BLE001 - contained to the worker that sent it
                self._expel(worker, exc)
                return

    def _expel(self, worker: WorkerHandle, exc: Exception) -> None:
        """Kill a worker that broke the protocol; nothing more it sends is read."""
        worker.violation = str(exc)[:500] or type(exc).__name__
        logger.error(
            "worker %d (pid %s) broke the protocol: %s; killing it",
            worker.worker_id,
            worker.pid,
            worker.violation,
            exc_info=not isinstance(exc, protocol.ProtocolError),  # ours to debug: its traceback
        )
        self._kill(worker, "protocol_violation")

    def _handle_message(self, worker: WorkerHandle, msg: protocol.Message) -> None:
        # The commonest first: every task sends a start and a reply.
        if isinstance(msg, _REPLIES):
            self._on_task_reply(worker, msg)
        elif isinstance(msg, protocol.TaskStarted):
            self._on_started(worker, msg.task_id, msg.concurrent)
        elif isinstance(msg, protocol.TaskProgress):
            self._on_progress(worker, msg)
        elif isinstance(msg, protocol.TaskPartial):
            self._on_partial(worker, msg)
        elif isinstance(msg, protocol.Hello):
            self._on_hello(worker)
        elif isinstance(msg, protocol.Revoked):
            self._on_revoked_message(worker, msg.task_id)
        elif isinstance(msg, protocol.Publish):
            self._on_publish(worker, msg)
        elif isinstance(msg, protocol.Call):
            self._on_call(worker, msg)
        elif isinstance(msg, protocol.Waiting):
            self._on_waiting(worker, msg)
        elif isinstance(msg, protocol.Received):
            self.broker.received(worker, msg.sub_id, msg.message_id)
        elif isinstance(msg, protocol.Usage):
            self._judge_usage(worker, msg.rss, msg.cpu)

    def _on_hello(self, worker: WorkerHandle) -> None:
        self._start_failures = 0
        if worker.state != "starting":
            return
        Timers.cancel(worker.timer)  # its start deadline
        if worker.pending:
            worker.state = "busy"
            for msg in worker.pending:
                worker.send(msg)
            worker.pending.clear()
        else:
            self._make_idle(worker)

    def _active_record(self, worker: WorkerHandle, task_id: str) -> TaskRecord | None:
        """The task's record if it is still this worker's and not final (else a late message)."""
        record = self._tasks.get(task_id)
        if record is None or record.worker is not worker or record.result is not None:
            return None
        return record

    def _on_started(self, worker: WorkerHandle, task_id: str, concurrent: bool) -> None:
        worker.concurrent = concurrent
        if concurrent:
            worker.slots = self._config.worker_concurrency.get(worker.type or "", 1)
        else:
            worker.prefetch = self._config.prefetch
            self._prefetching = self._config.prefetch > 0
        record = self._active_record(worker, task_id)
        if record is not None and record.status is TaskStatus.QUEUED:
            self._begin(worker, record)

    def _start_head(self, worker: WorkerHandle) -> None:
        """A worker that runs one task at a time takes them in the order they were sent: once
        those before it ended, its first task runs, and it does not say so (`RunTask.report_start`).
        One being taken back is left to the worker's answer (`Revoked` or `TaskStarted`)."""
        if worker.concurrent is not False or not worker.tasks:
            return
        record = self._active_record(worker, next(iter(worker.tasks)))
        if record is not None and record.status is TaskStatus.QUEUED and not record.revoking:
            self._begin(worker, record)

    def _begin(self, worker: WorkerHandle, record: TaskRecord) -> None:
        """The task runs on ``worker`` from now: its timeout's clock starts."""
        task_id = record.task_id
        record.revoking = False
        record.status = TaskStatus.RUNNING
        if self._journal is not None:
            self._journal.started(task_id, record.attempts)
        self._counts[TaskStatus.QUEUED] -= 1
        self._counts[TaskStatus.RUNNING] += 1
        record.started_at = time.time()
        record.worker_pid = worker.pid
        worker.last_active = record.started_at
        self._announce.started(record, worker, time.monotonic() - record.ready_at)
        timeout = record.spec.timeout or self._config.default_task_timeout
        if timeout is not None:
            record.timer = self._timers.schedule(
                time.monotonic() + timeout, self._on_timeout, record, timeout
            )
        record.cpu_at_start = self._limits.cpu_at_start(worker)
        self._limits.watch()

    def _on_progress(self, worker: WorkerHandle, msg: protocol.TaskProgress) -> None:
        record = self._active_record(worker, msg.task_id)
        if record is None:
            return
        progress = record.progress = assemble(
            Progress, task_id=msg.task_id, completed=msg.completed, total=msg.total, message=msg.message
        )
        self._announce.progress(record, progress, worker.pid)

    def _on_partial(self, worker: WorkerHandle, msg: protocol.TaskPartial) -> None:
        record = self._active_record(worker, msg.task_id)
        if record is None:
            return
        try:
            data = protocol.unpack_payload(msg.data, self._block_reader)
        except protocol.PayloadError as exc:
            self._fail(record, "serialization", f"a partial result {exc}")
            return
        index = record.partial_count
        if record.partials is None:
            record.partials = deque(maxlen=MAX_PARTIALS_KEPT)
        record.partials.append((index, data))
        record.partial_count += 1
        for watcher in record.watchers or ():
            watcher()
        self._announce.partial(record, index, data, worker.pid)

    def _on_task_reply(self, worker: WorkerHandle, msg: protocol.TaskDone | protocol.TaskFailed) -> None:
        record = self._active_record(worker, msg.task_id)
        if record is not None:
            if record.status is TaskStatus.QUEUED:  # it ended before the answer to a Revoke came
                self._begin(worker, record)
            if isinstance(msg, protocol.TaskDone):
                self._complete(record, msg.data)
            else:
                if msg.kind == "rate_limit":
                    self._capacity.rate_limited(record.spec.type)
                elif msg.kind == "memory_limit":
                    self._announce.memory_limit_kill(worker)
                self._fail(record, msg.kind, msg.message, msg.traceback, msg.exception_type, msg.retry_after)
        if isinstance(msg, protocol.TaskFailed) and msg.kind == "memory_limit":
            # Its own cap stopped the handler; its memory is surely given back only with the process.
            self._kill(worker, "memory_limit")
        elif msg.task_id in worker.tasks:
            self._release(worker, msg.task_id)
            self._start_head(worker)

    def _complete(self, record: TaskRecord, packed: bytes) -> None:
        try:
            data = protocol.unpack_payload(packed, self._block_reader)
        except protocol.PayloadError as exc:
            self._fail(record, "serialization", f"the handler's result {exc}")
            return
        self._finish(record, TaskStatus.COMPLETED, data=data)

    def _release(self, worker: WorkerHandle, task_id: str) -> None:
        """One of the worker's tasks is over; with none left, recycle it or make it idle."""
        del worker.tasks[task_id]
        worker.tasks_completed += 1
        worker.last_active = time.time()
        limit = self._config.max_tasks_per_worker
        if limit is not None and worker.tasks_completed >= limit:
            worker.slots = worker.prefetch = 0
            if not worker.tasks:
                self._retire(worker, "recycled")
        elif not worker.tasks and worker.exit_reason is None:
            self._make_idle(worker)

    def _make_idle(self, worker: WorkerHandle) -> None:
        Timers.cancel(worker.timer)
        worker.state = "idle"
        working = [w for w in self._workers.values() if w.exit_reason is None and not w.lent_out]
        if len(working) > self._config.max_workers:
            self._retire(worker, "surplus")  # spawned while another waited; that one goes on now
        elif self._closing:
            self._retire_unneeded_workers()
        elif self._config.enable_auto_scaling:
            worker.timer = self._timers.schedule(
                time.monotonic() + self._config.idle_timeout, self._on_idle_timeout, worker
            )

    # ----------------------------------------------------------------- finishing tasks

    def _fail(
        self,
        record: TaskRecord,
        kind: str,
        message: str,
        traceback: str = "",
        exception_type: str = "",
        retry_after: float | None = None,
    ) -> None:
        """End an attempt without a result: retry it if its spec allows, else finish the task."""
        self._announce.attempt_failed(record, kind)
        if self._may_retry(record, kind, exception_type):
            self._retry_later(record, kind, message, retry_after)
            return
        error = assemble(
            TaskError,
            kind=cast(ErrorKind, kind),
            message=message,
            traceback=traceback,
            exception_type=exception_type,
        )
        status = TaskStatus.CANCELLED if kind == "cancelled" else TaskStatus.ERROR
        self._finish(record, status, error=error)

    @staticmethod
    def _may_retry(record: TaskRecord, kind: str, exception_type: str) -> bool:
        spec = record.spec
        retryable = kind in RETRYABLE or (
            kind == "exception" and (spec.retry_on_exception or exception_type in spec.retry_on)
        )
        return retryable and record.attempts - record.interrupted <= spec.retries

    def _retry_later(self, record: TaskRecord, kind: str, message: str, retry_after: float | None) -> None:
        """Queue the task again after ``retry_after`` or an exponential backoff with jitter.

        It keeps its id and priority.
        """
        self._detach(record)
        was_running = record.status is TaskStatus.RUNNING
        self._counts[record.status] -= 1
        self._counts[TaskStatus.QUEUED] += 1
        record.status = TaskStatus.QUEUED
        if self._journal is not None:
            self._journal.requeued(record.task_id, record.attempts)
        self._end_attempt(record, kind)
        delay = _retry_delay(record.spec, record.attempts, retry_after)
        self._announce.retrying(record, was_running, kind, message, delay)
        record.timer = self._timers.schedule(time.monotonic() + delay, self._requeue, record)

    def _requeue(self, record: TaskRecord) -> None:
        if record.result is not None:
            return
        # A retry is not a new submission: it is queued even when the queue is full.
        record.holds_slot = self._queue_slots.take()
        self._make_ready(record)

    def _detach(self, record: TaskRecord) -> None:
        """Free what a task holds: its queue slot, its place in the ready queue, its type's capacity."""
        if record.holds_slot:
            record.holds_slot = False
            self._queue_slots.give()
        if record.in_ready:
            record.in_ready = False
            self._ready.remove(record.task_id)
        if record.released:
            self._reclaim(record)
        if record.worker is not None:
            record.worker = None
            self._capacity.vacate(record.spec.type)
        Timers.cancel(record.timer)

    def _finish(
        self,
        record: TaskRecord,
        status: TaskStatus,
        data: Any = None,
        error: TaskError | None = None,
    ) -> None:
        """Record the task's final result once, then tell waiters, callbacks and listeners."""
        self._counts[record.status] -= 1
        self._counts[status] += 1
        failure = None if status is TaskStatus.COMPLETED else (error.kind if error else status.value)
        self._end_attempt(record, failure)
        self._detach(record)
        if record.blocks:
            for name in record.blocks:
                unlink_block(name)
            record.blocks.clear()
        finished = time.time()
        started = record.started_at
        result = assemble(
            TaskResult,
            task_id=record.task_id,
            status=status,
            success=status is TaskStatus.COMPLETED,
            data=data,
            error=error,
            attempts=record.attempts,
            worker_pid=record.worker_pid,
            started_at=_utc(started),
            finished_at=_utc(finished),
            duration_s=None if started is None else finished - started,
            parent=record.parent,
        )
        self._announce.finished(record, result, was_running=record.status is TaskStatus.RUNNING)
        self.results.settle(record, result)
        if status is TaskStatus.COMPLETED:
            self._capacity.succeeded(record.spec.type)
        # Announced before its dependants hear of it, so that a cause's event comes before its effects'.
        self._announce.final(record, result)
        self._release_dependants(record)
        for dep_id in record.dep_ids:
            dependency = self._tasks.get(dep_id)
            if dependency is not None:
                dependency.needed_by -= 1
        self.results.keep(record)

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
                dependants, completed = self._graph.release(done)
                for collection in completed:
                    self._announce.collection_completed(collection, self.results.counts(collection))
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
            self._make_ready(dependant)

    def _fail_dependant(self, record: TaskRecord, dependency: TaskRecord) -> None:
        result = dependency.result
        assert result is not None
        why = f"{result.error.kind}: {result.error.message}" if result.error else result.status.value
        for dep_id in record.waiting or ():
            self._graph.forget_dependant(dep_id, record)
        record.waiting = None
        self._fail(
            record,
            "dependency_failed",
            f"dependency {dependency.task_id} ended {result.status.value} ({why})",
        )

    def cancel(self, record: TaskRecord, message: str = "cancelled") -> bool:
        """Cancel a queued or running task; False if it is already final."""
        if record.result is not None:
            return False
        if record.worker is None:
            self._fail(record, "cancelled", f"{message} while queued")
        else:
            self._stop(record, "cancelled", f"{message} while running")
        return True

    def _stop(self, record: TaskRecord, reason: str, message: str) -> None:
        """End a dispatched task now, ask its handler to stop, and kill it if it does not."""
        worker = record.worker
        self._fail(record, reason, message)
        if worker is None or record.task_id not in worker.tasks:
            return
        worker.send(protocol.StopTask(record.task_id, reason))
        self._timers.schedule(
            time.monotonic() + self._config.timeout_grace,
            self._on_grace_expired,
            worker,
            record.task_id,
            reason,
        )

    def _on_timeout(self, record: TaskRecord, timeout: float) -> None:
        if record.result is None:
            self._stop(record, "timeout", f"the task ran past its timeout of {timeout:g} s")

    def _on_grace_expired(self, worker: WorkerHandle, task_id: str, reason: str) -> None:
        """The handler outlived its stop request: SIGTERM its worker's tree, SIGKILL it shortly after."""
        if task_id in worker.tasks and worker.worker_id in self._workers and worker.state != "stopping":
            logger.warning(
                "worker %d ignored a stop request for %s; terminating it",
                worker.worker_id,
                task_id,
                extra=task_extra(task_id, worker.type or "", worker.pid),
            )
            Timers.cancel(worker.timer)
            worker.state = "stopping"
            worker.exit_reason = reason
            tree = process_tree(worker.pid) if worker.local else []
            self._pool.kill(worker, signal.SIGTERM)
            # Not the worker's own timer: the worker may die of the SIGTERM (and be reaped, its
            # timer cancelled) while a child of its handler that ignores SIGTERM lives on.
            self._timers.schedule(
                time.monotonic() + TERMINATE_GRACE, self._kill_leftovers, worker, reason, tree
            )

    def _kill_leftovers(self, worker: WorkerHandle, reason: str, tree: list[psutil.Process]) -> None:
        """SIGKILL what is left of the tree a SIGTERM went to, whether or not the worker died of it."""
        signal_processes(tree, signal.SIGKILL)
        self._kill(worker, reason)

    # ----------------------------------------------------------------- worker lifecycle

    def _spawn_worker(self, task_type: str | None = None, waiting: bool = True) -> WorkerHandle | None:
        worker = self._pool.spawn(self._next_worker_id, task_type, waiting)
        if worker is None:
            return None  # no process free on a node that offers the type (Dask backend)
        self._next_worker_id += 1
        self._workers[worker.worker_id] = worker
        self._selector.register(worker.conn.fileno(), selectors.EVENT_READ, (worker, "pipe"))
        self._selector.register(worker.sentinel, selectors.EVENT_READ, (worker, "exit"))
        deadline = time.monotonic() + self._config.worker_start_timeout
        worker.timer = self._timers.schedule(deadline, self._on_start_timeout, worker)
        self._announce.worker_spawned(worker)
        return worker

    def _on_start_timeout(self, worker: WorkerHandle) -> None:
        """A worker that never said Hello (stuck in an import, or on a lock inherited by a fork) is
        killed; the tasks it was given go back in line without using up an attempt."""
        if worker.state != "starting" or worker.worker_id not in self._workers:
            return
        logger.warning(
            "worker %d (pid %s) did not start within worker_start_timeout=%g s; killing it",
            worker.worker_id,
            worker.pid,
            self._config.worker_start_timeout,
        )
        self._kill(worker, "start_timeout")

    def _replenish_workers(self) -> None:
        """Keep min_workers (all max_workers in a fixed pool) processes, untyped until used."""
        floor = self._config.max_workers if not self._config.enable_auto_scaling else self._config.min_workers
        while (
            not self._closing
            and sum(w.exit_reason is None for w in self._workers.values()) < floor
            and self._start_failures < MAX_START_FAILURES
            and self._spawn_worker() is not None
        ):
            pass

    def _retire(self, worker: WorkerHandle, reason: str) -> None:
        """Ask a worker without a task to exit; it is killed if it has not after STOP_TIMEOUT."""
        Timers.cancel(worker.timer)
        worker.state = "stopping"
        worker.exit_reason = reason
        worker.send(protocol.Shutdown())
        worker.timer = self._timers.schedule(time.monotonic() + STOP_TIMEOUT, self._kill, worker, reason)
        logger.debug("retiring worker %d (%s)", worker.worker_id, reason)

    def _kill(self, worker: WorkerHandle, reason: str) -> None:
        if worker.worker_id not in self._workers:
            return
        worker.state = "stopping"
        worker.exit_reason = reason
        self._pool.kill(worker)
        logger.debug("killed worker %d (%s)", worker.worker_id, reason)

    def _unwatch(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def _on_idle_timeout(self, worker: WorkerHandle) -> None:
        busy_or_gone = worker.state != "idle" or worker.worker_id not in self._workers
        staying = sum(w.exit_reason is None for w in self._workers.values())
        if busy_or_gone or staying <= self._config.min_workers:
            return
        self._retire(worker, "idle")

    def _reap(self, worker: WorkerHandle) -> None:
        """A worker's process ended: fail its task if it had one, forget it, replace it if needed."""
        self._drain(worker, until_empty=True)
        worker.process.join()
        exitcode = worker.process.exitcode
        Timers.cancel(worker.timer)
        self._workers.pop(worker.worker_id, None)
        self._unwatch(worker.conn.fileno())
        self._unwatch(worker.sentinel)
        self._pool.release(worker)
        unlink_by_prefix(block_prefix(self._pool.block_namespace, worker.worker_id))
        never_started = worker.state == "starting"
        if never_started:
            self._start_failures += 1
        reason = worker.exit_reason or "crashed"
        if reason == "crashed":
            self._announce.crashed(worker)  # counted before its tasks' results go out
        self._fail_task_of_dead_worker(worker, reason, exitcode, never_started)
        self._announce.worker_exited(worker, reason, exitcode)
        self._replenish_workers()

    def _fail_task_of_dead_worker(
        self, worker: WorkerHandle, reason: str, exitcode: int | None, never_started: bool
    ) -> None:
        how = (
            exit_reason_of(exitcode) if worker.node is None else f"connection lost; Dask worker {worker.node}"
        )
        if worker.violation is not None:
            message = f"worker pid {worker.pid} broke the protocol and was killed ({worker.violation})"
        elif never_started:
            message = (
                f"worker pid {worker.pid} exited during start-up ({how}); see its stderr. "
                'A common cause: the host script lacks `if __name__ == "__main__":`'
            )
        else:
            message = f"worker pid {worker.pid} died while running the task ({how})"
        for record in self._open_records(worker):
            if _prefetched(record) and (not never_started or reason == "start_timeout"):
                self._on_revoked(worker, record.task_id)  # it never ran: it simply goes back in line
            else:
                self._fail(record, "worker_crashed", message)

    def _held_behind(self, worker: WorkerHandle) -> list[TaskRecord]:
        """The tasks a worker holds queued behind the one it runs: prefetched, not started. A
        task just sent to a worker that had none is not among them: it starts at once."""
        running = max(1, worker.slots)
        if len(worker.tasks) <= running:
            return []
        held = []
        for task_id in itertools.islice(worker.tasks, running, None):
            record = self._tasks.get(task_id)
            if record is not None and record.worker is worker and _prefetched(record):
                held.append(record)
        return held

    def _open_records(self, worker: WorkerHandle) -> list[TaskRecord]:
        """The not yet final tasks that this worker still runs for us."""
        records = (self._tasks.get(task_id) for task_id in worker.tasks)
        return [r for r in records if r is not None and r.result is None and r.worker is worker]

    # ----------------------------------------------------------------- limits

    def _busy_workers(self) -> list[WorkerHandle]:
        return [w for w in self._workers.values() if w.state == "busy"]

    def _judge_usage(self, worker: WorkerHandle, rss: int | None, cpu: float | None) -> None:
        """Carry out what a worker's measured usage calls for."""
        running = [r for r in self._open_records(worker) if r.status is TaskStatus.RUNNING]
        if not running:
            return
        overuse = self._limits.overuse(worker, running, rss, cpu)
        if overuse.memory is not None:
            self._announce.memory_limit_kill(worker)  # counted before its tasks' results go out
            for record in running:
                self._fail(record, "memory_limit", overuse.memory)
            self._kill(worker, "memory_limit")
        for record, message in overuse.cpu:
            self._stop(record, "timeout", message)

    # ----------------------------------------------------------------- tasks that talk

    def _on_publish(self, worker: WorkerHandle, msg: protocol.Publish) -> None:
        record = self._active_record(worker, msg.task_id)
        try:
            data = protocol.unpack_payload(msg.data, self._block_reader)
        except protocol.PayloadError as exc:
            logger.warning(
                "task %s published on %r data that %s",
                msg.task_id,
                msg.topic,
                exc,
                extra=task_extra(msg.task_id, worker.type or "", worker.pid),
            )
            return
        if record is not None:
            self.broker.publish(msg.topic, data, msg.task_id)

    def _on_call(self, worker: WorkerHandle, msg: protocol.Call) -> None:
        record = self._active_record(worker, msg.task_id)
        if record is None:
            return  # the task ended meanwhile; its worker stopped waiting for an answer
        try:
            args = protocol.unpack_payload(msg.args)
            if msg.op == "subscribe":
                sub_id, topic = args
                self.broker.subscribe_worker(worker, record.task_id, sub_id, topic)
                self._reply(worker, msg.call_id, self.broker.limit)
            elif msg.op == "unsubscribe":
                self.broker.unsubscribe_worker(record.task_id, args)
            elif msg.op == "submit":
                self._submit_child(worker, msg.call_id, record, args["spec"], args["detached"])
            elif msg.op == "wait":
                self._wait_for_children(worker, msg.call_id, record, args["ids"], args["any"])
            elif msg.op == "forget":
                waits = self._child_waits.get(record.task_id, [])
                self._child_waits[record.task_id] = [w for w in waits if w.call_id != args]
            else:
                raise ValueError(f"unknown request {msg.op!r}")
        except (protocol.PayloadError, ValueError, KeyError, TypeError) as exc:
            self._reply(worker, msg.call_id, error=exc)

    def _reply(
        self, worker: WorkerHandle, call_id: int, value: Any = None, error: BaseException | None = None
    ) -> None:
        if not call_id:
            return
        if error is None:
            worker.send(protocol.Reply(call_id, "", "", protocol.pack_payload(value)))
        else:
            message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
            worker.send(protocol.Reply(call_id, type(error).__name__, message, b""))

    def _submit_child(
        self, worker: WorkerHandle, call_id: int, parent: TaskRecord, spec: dict[str, Any], detached: bool
    ) -> None:
        assert self._admit_child is not None
        try:
            child = self._admit_child(spec, parent, detached)
        except OrchestratorError as exc:
            self._reply(worker, call_id, error=exc)
            return
        if not detached:
            if parent.children is None:
                parent.children = []
            parent.children.append(child.task_id)
        self._accept_one(child)
        self._reply(worker, call_id, child.task_id)

    def _wait_for_children(
        self, worker: WorkerHandle, call_id: int, waiter: TaskRecord, ids: list[str], any_of: bool
    ) -> None:
        unknown = [task_id for task_id in ids if task_id not in self._tasks]
        if unknown:
            raise KeyError(f"unknown task id {unknown[0]!r} (never issued, or its result was evicted)")
        wait = _ChildWait(worker, call_id, ids, any_of)
        if not self._answer_if_ready(wait):
            self._child_waits.setdefault(waiter.task_id, []).append(wait)
            for task_id in ids:
                self._tasks[task_id].waiters.append(functools.partial(self._on_child_final, wait))

    def _on_child_final(self, wait: _ChildWait, result: TaskResult) -> None:
        self._answer_if_ready(wait)

    def _answer_if_ready(self, wait: _ChildWait) -> bool:
        """Answer a wait whose tasks are final (any one of them, for as_completed); True if answered."""
        if wait.answered:
            return True
        final = [self._tasks[t] for t in wait.ids if t in self._tasks and self._tasks[t].result is not None]
        if not final or (not wait.any_of and len(final) < len(wait.ids)):
            return False
        wait.answered = True
        if wait.any_of:
            final.sort(key=lambda r: r.result.finished_at if r.result and r.result.finished_at else _EPOCH)
        self._reply(wait.worker, wait.call_id, [result_fields(r) for r in final])
        return True

    def _on_waiting(self, worker: WorkerHandle, msg: protocol.Waiting) -> None:
        record = self._active_record(worker, msg.task_id)
        if record is None or record.status is not TaskStatus.RUNNING:
            return
        if not msg.waiting:
            if record.released:
                self._reclaim(record)
            return
        if record.released or not self._capacity.lend(record.spec.type):
            return  # beyond max_waiting_tasks a waiting task keeps its slot
        record.released = True
        worker.released += 1
        if worker.released == len(worker.tasks):
            worker.state = "waiting"
        if worker.lent_out:
            for queued in self._open_records(worker):
                if _prefetched(queued):
                    self._revoke(queued)  # it would wait behind a task that waits: run it elsewhere

    def _reclaim(self, record: TaskRecord) -> None:
        """A waiting task goes on: it takes its slot back, even above the limits (they recover)."""
        worker = record.worker
        assert worker is not None
        record.released = False
        worker.released -= 1
        self._capacity.take_back(record.spec.type)
        if worker.state == "waiting":
            worker.state = "busy"

    def _end_attempt(self, record: TaskRecord, failure: str | None) -> None:
        """An attempt is over: close its subscriptions and waits; on a failure, cancel its children."""
        self.broker.end_task(record.task_id)
        for wait in self._child_waits.pop(record.task_id, ()):
            wait.answered = True
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

    def publish(self, topic: str, data: Any) -> None:
        """The host publishes (``data`` already round-tripped through msgpack)."""
        self.broker.publish(topic, data, None)

    # ----------------------------------------------------------------- schedules (the runner's host)

    def submit_scheduled(self, schedule: Schedule, delay: float) -> str:
        """Queue one firing of ``schedule`` (raises QueueFullError when the queue has no room)."""
        if self._admit is None or self._closing:
            raise QueueFullError("the orchestrator is shutting down")
        record = self._admit(schedule.spec, delay)
        self._accept_one(record)
        return record.task_id

    def task_is_open(self, task_id: str) -> bool:
        """Whether the task is known and not final."""
        record = self._tasks.get(task_id)
        return record is not None and record.result is None

    def cancel_task(self, task_id: str) -> None:
        """Cancel a task if it is still open."""
        record = self._tasks.get(task_id)
        if record is not None and record.result is None:
            self.cancel(record, "cancelled: replaced by the next run of its schedule")

    def task_status(self, task_id: str) -> TaskStatus | None:
        """A task's status, or None once it was evicted."""
        record = self._tasks.get(task_id)
        return None if record is None else record.status

    def emit(self, name: str, **fields: Any) -> None:
        """Post a ``schedule_fired`` or ``schedule_missed`` event to its listeners."""
        self._announce.schedule(name, **fields)

    def save_schedule(self, schedule: Schedule | None, name: str) -> None:
        """Journal a schedule as it now stands, or its removal."""
        if self._journal is None:
            return
        if schedule is None:
            self._journal.schedule_removed(name)
            return
        spec = schedule.spec
        self._journal.schedule_saved(
            name,
            spec.model_dump_json(exclude={"config"}),
            protocol.pack_payload(spec.config),
            schedule.to_json(*_clocks()),
        )

    def arm(self, delay: float | None, action: Callable[[], None]) -> None:
        """The schedule runner's one timer."""
        Timers.cancel(self._schedule_timer)
        self._schedule_timer = None
        if delay is not None and not self._closing:
            self._schedule_timer = self._timers.schedule(time.monotonic() + delay, action)

    # ----------------------------------------------------------------- shutdown

    def begin_shutdown(self, cancel_pending: bool, deadline: float | None, keep_queued: bool = False) -> None:
        """Take no new work; cancel the queue if asked; at ``deadline``, cancel and kill the rest.

        ``keep_queued`` (with a journal): stop now, and leave every open task in the journal, as it
        stands, for the next process (the upgrade case).
        """
        self._closing = True
        Timers.cancel(self._schedule_timer)
        if keep_queued and self._journal is not None:
            self._journal.flush(wait=False)  # the rest moves at close, on the caller's thread
            self._stop_journaling()
            self._on_shutdown_deadline()
            self._retire_unneeded_workers()
            return
        if cancel_pending:
            self._cancel_all(TaskStatus.QUEUED, "cancelled by shutdown(cancel_pending=True)")
        # Waiting for a delay to end would hold shutdown for as long as the delay.
        now_mono, now_wall = _clocks()
        delayed = [r for r in self._tasks.values() if r.result is None and is_delayed(r, now_mono, now_wall)]
        for record in delayed:
            self.cancel(record, "cancelled by shutdown before its delay ended (keep_queued keeps it)")
        if deadline is not None:
            self._timers.schedule(deadline, self._on_shutdown_deadline)
        self._retire_unneeded_workers()

    def _cancel_all(self, status: TaskStatus, message: str) -> None:
        for record in [r for r in self._tasks.values() if r.status is status and r.result is None]:
            self.cancel(record, message)

    def _on_shutdown_deadline(self) -> None:
        self._cancel_all(TaskStatus.QUEUED, "cancelled: shutdown timed out before the task ran")
        self._cancel_all(TaskStatus.RUNNING, "cancelled: shutdown timed out while the task ran")
        for worker in list(self._workers.values()):
            if worker.tasks:
                self._kill(worker, "shutdown")

    def _retire_unneeded_workers(self) -> None:
        """While closing, once nothing is left to dispatch, every worker without a task exits."""
        if not self._closing or self._ready:
            return
        for worker in list(self._workers.values()):
            if worker.state in ("idle", "starting") and not worker.tasks:
                self._retire(worker, "shutdown")

    def _close_down(self) -> None:
        """The loop ended (normally or not): no worker, command or open task may be left behind."""
        for command in self._commands.shut():
            try:
                self._execute(command)
            except Exception:
                logger.exception("command left at shutdown failed")
        for worker in list(self._workers.values()):
            self._pool.kill(worker)
            worker.process.join(STOP_TIMEOUT)
            self._pool.release(worker)
        self._workers.clear()
        if self.failure is None:
            kind, message = "cancelled", "the orchestrator shut down before the task finished"
        else:
            kind, message = "interrupted", f"the orchestrator failed before the task finished: {self.failure}"
        for record in list(self._tasks.values()):
            if record.result is None:
                self._fail(record, kind, message)
        if self._journal is not None:
            self._journal.flush(wait=False)  # the rest moves at close, on the caller's thread
        unlink_by_prefix(block_prefix(self._pool.block_namespace)[:-2])
        self._selector.close()
        self._commands.close()
        self._pool.close()
        self._bus.close(wait=False)

    # ----------------------------------------------------------------- snapshots

    def status(self) -> OrchestratorStatus:
        """Counts of workers and tasks, as of now."""
        states = [w.state for w in self._workers.values()]
        return OrchestratorStatus(
            workers=len(states),
            busy=states.count("busy"),
            idle=states.count("idle"),
            queued=self._counts[TaskStatus.QUEUED],
            running=self._counts[TaskStatus.RUNNING],
            completed=self._counts[TaskStatus.COMPLETED],
            failed=self._counts[TaskStatus.ERROR],
            cancelled=self._counts[TaskStatus.CANCELLED],
            max_workers=self._config.max_workers,
            task_queue_size=self._config.task_queue_size,
            uptime_s=time.monotonic() - self._started,
            type_limits=self._capacity.limits(),
        )

    def metrics_state(self) -> tuple[list[WorkerReading], dict[str, int]]:
        """For a scrape, from any thread: (type, state, pid if local) of every worker, and the
        parallelism each task type is allowed now."""

        def read() -> tuple[list[WorkerReading], dict[str, int]]:
            workers = [(w.type, w.state, w.pid if w.local else None) for w in self._workers.values()]
            limits = self._capacity.allowed(list(self._config.task_handlers()))
            return workers, limits

        return self.call(read)

    def worker_rows(self) -> list[dict[str, Any]]:
        """The fields of every worker (without RSS, which the caller measures off this thread)."""
        return [
            {
                "worker_id": w.label or w.worker_id,
                "pid": w.pid,
                "local": w.local,
                "type": w.type,
                "state": w.state,
                "current_task": w.current_task,
                "current_tasks": list(w.tasks),
                "tasks_completed": w.tasks_completed,
                "started_at": _utc(w.started_at),
                "last_active": _utc(w.last_active),
            }
            for w in self._workers.values()
        ]


_EMPTY_DEPS: Final = protocol.pack_payload(None)
# 2**64 backoffs is beyond any retry_backoff_max; a larger power would overflow a float.
_MAX_BACKOFF_DOUBLINGS: Final = 64


def _retry_delay(spec: TaskSpec, attempts: int, retry_after: float | None) -> float:
    """Seconds before the next attempt: the handler's ``retry_after``, else an exponential backoff
    with jitter; either way at most ``retry_backoff_max``."""
    if retry_after is None:
        doublings = min(attempts - 1, _MAX_BACKOFF_DOUBLINGS)
        retry_after = spec.retry_backoff * 2.0**doublings * random.uniform(0.5, 1.0)
    return min(max(0.0, retry_after), spec.retry_backoff_max)


def _prefetched(record: TaskRecord) -> bool:
    """Sent to a worker ahead of time and not started there (nor being taken back already)."""
    return record.status is TaskStatus.QUEUED and record.worker is not None and not record.revoking
