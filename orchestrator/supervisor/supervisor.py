"""`Supervisor`: builds the collaborators of this package and runs the loop on its own thread.

Public methods never touch its state: they post commands (``post``/``call``) that run here, in
order, between waits. The package docstring draws the data flow.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from orchestrator.backends.base import ProcessPool, WorkerHandle
from orchestrator.config import OrchestratorConfig
from orchestrator.durations import clamp_wait
from orchestrator.errors import OrchestratorClosedError, OrchestratorFailedError
from orchestrator.events import EventBus
from orchestrator.journal import Journal
from orchestrator.messaging import Broker
from orchestrator.metrics import Metrics, WorkerReading
from orchestrator.models import OrchestratorStatus, TaskStatus
from orchestrator.scheduler import QueueSlots, Timers
from orchestrator.schedules import ScheduleRunner
from orchestrator.supervisor.announce import Announcer
from orchestrator.supervisor.capacity import Capacity
from orchestrator.supervisor.conversation import AdmitChild, Conversation
from orchestrator.supervisor.dispatch import Dispatcher
from orchestrator.supervisor.fleet import Fleet
from orchestrator.supervisor.graph import TaskGraph
from orchestrator.supervisor.inbox import Handlers, Inbox
from orchestrator.supervisor.init_guard import InitGuard
from orchestrator.supervisor.journaling import JournalLink
from orchestrator.supervisor.lifecycle import Lifecycle
from orchestrator.supervisor.line import Line
from orchestrator.supervisor.loop import CommandQueue
from orchestrator.supervisor.pace import Pace
from orchestrator.supervisor.record import TaskRecord
from orchestrator.supervisor.reports import Reports
from orchestrator.supervisor.results import Results
from orchestrator.supervisor.schedule_host import Admit, TaskScheduleHost, clocks
from orchestrator.supervisor.shutdown import Shutdown
from workers import protocol
from workers.shm import BlockReader, BlockWriter, block_prefix, unlink_by_prefix

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Supervisor:
    """Runs the scheduling loop on its own thread; see the package docstring for the data flow."""

    def __init__(
        self,
        config: OrchestratorConfig,
        tasks: dict[str, TaskRecord],
        queue_slots: QueueSlots,
        bus: EventBus,
        pool: ProcessPool,
        blocks: BlockWriter | None = None,
        journal: Journal | None = None,
        admit: Admit | None = None,
        admit_child: AdmitChild | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._tasks = tasks
        self._bus = bus
        self._pool = pool
        self._started = time.monotonic()
        # Why the loop ended by a fault of ours (None while it runs, and after a clean shutdown).
        self.failure: str | None = None
        # One selector for the whole life of the loop: worker pipes, process sentinels, wake-ups.
        self._selector = selectors.DefaultSelector()
        self._commands = CommandQueue(self._selector, self.closed_error)
        self._timers = Timers()
        self._journaling = JournalLink(journal)
        self._journal_moved_at = 0.0
        self._announce = Announcer(bus, metrics, config.log_tasks)
        # Blocks come only from this orchestrator's own processes (shared memory is off on Dask).
        accepted = block_prefix(pool.block_namespace)[:-2] if blocks is not None else None
        block_reader = BlockReader(copy=True, accept=accepted, views=config.result_buffers == "view")
        self._build_task_state(queue_slots, blocks, block_reader, admit_child)
        self._build_around_it(queue_slots, blocks, block_reader, admit)
        pool.on_arrival = self._wake
        self.thread = threading.Thread(target=self._run, name=f"orch-supervisor-{config.name}", daemon=True)

    def _build_task_state(
        self,
        queue_slots: QueueSlots,
        blocks: BlockWriter | None,
        block_reader: BlockReader,
        admit_child: AdmitChild | None,
    ) -> None:
        """The collaborators that hold tasks and workers, each built on those before it."""
        config, tasks, timers = self._config, self._tasks, self._timers
        self._capacity = Capacity(config)
        self._graph = TaskGraph()
        self.results = Results(config, tasks, self._graph, timers, self._journaling)
        self._line = Line(timers, tasks)
        self._fleet = Fleet(config, self._pool, self._selector, timers, self._announce, tasks, self._line)
        self._conversation = Conversation(
            config,
            tasks,
            self._bus,
            self._capacity,
            self._fleet,
            blocks,
            block_reader,
            admit_child,
            self._accept,
        )
        self._lifecycle = Lifecycle(
            config,
            tasks,
            queue_slots,
            timers,
            line=self._line,
            fleet=self._fleet,
            capacity=self._capacity,
            graph=self._graph,
            results=self.results,
            announce=self._announce,
            journaling=self._journaling,
            conversation=self._conversation,
        )

    def _build_around_it(
        self,
        queue_slots: QueueSlots,
        blocks: BlockWriter | None,
        block_reader: BlockReader,
        admit: Admit | None,
    ) -> None:
        """The collaborators that move tasks through that state: dispatch, messages, schedules,
        shutdown."""
        tasks, timers, lifecycle, fleet = self._tasks, self._timers, self._lifecycle, self._fleet
        self.init_guard = InitGuard()
        pace = Pace()
        self._reports = Reports(
            tasks, lifecycle, fleet, self._capacity, self._announce, block_reader, self.init_guard, pace
        )
        self._dispatch = Dispatcher(
            self._config,
            tasks,
            queue_slots,
            self._pool,
            blocks,
            line=self._line,
            fleet=fleet,
            capacity=self._capacity,
            lifecycle=lifecycle,
            init_guard=self.init_guard,
            pace=pace,
        )
        self._inbox = Inbox(fleet, self._message_handlers())
        host = TaskScheduleHost(
            tasks,
            timers,
            admit,
            lifecycle=lifecycle,
            fleet=fleet,
            announce=self._announce,
            journaling=self._journaling,
        )
        self.schedules = ScheduleRunner(host, clocks)
        self._shutdown = Shutdown(
            tasks, timers, lifecycle=lifecycle, fleet=fleet, schedule_host=host, journaling=self._journaling
        )

    def _message_handlers(self) -> Handlers:
        """Who handles each message a worker sends."""
        reports = self._reports
        return {
            protocol.TaskDone: reports.on_reply,
            protocol.TaskFailed: reports.on_reply,
            protocol.TaskStarted: self._dispatch.on_started,
            protocol.TaskProgress: reports.on_progress,
            protocol.TaskPartial: reports.on_partial,
            protocol.Hello: self._fleet.on_hello,
            protocol.Revoked: self._dispatch.on_revoked,
            protocol.Publish: self._conversation.on_publish,
            protocol.Call: self._conversation.on_call,
            protocol.Waiting: self._on_waiting,
            protocol.Received: self._conversation.on_received,
            protocol.Usage: reports.on_usage,
            protocol.Log: reports.on_log,
        }

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

    def _wake(self) -> None:
        """New capacity arrived (from another thread): take it in, so idle_timeout applies to it."""
        with contextlib.suppress(OrchestratorClosedError):
            self.post(self._fleet.take_arrivals)

    # ----------------------------------------------------------------- the loop

    def _run(self) -> None:
        try:
            self._fleet.replenish()
            self._fleet.take_arrivals()
            journal_due: float | None = None
            while not self._finished():
                self._dispatch.dispatch()
                timeout = self._timers.time_to_next(time.monotonic())
                if journal_due is not None:
                    timeout = journal_due if timeout is None else min(timeout, journal_due)
                self._commands.expect_wakeup()
                if self._commands.pending:
                    timeout = 0
                self._handle_ready(self._selector.select(clamp_wait(timeout)))
                self._fire_due_timers()
                journal_due = self._flush_journal()
        except BaseException as exc:  # noqa: BLE001 - any fault of ours: reported, never data loss
            self._fail_loudly(exc)
        finally:
            self._close_down()

    def _finished(self) -> bool:
        counts = self._lifecycle.counts
        return (
            self._fleet.closing
            and not self._fleet.workers
            and not self._commands.pending
            and counts[TaskStatus.QUEUED] == 0
            and counts[TaskStatus.RUNNING] == 0
        )

    def _handle_ready(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        """Messages first, then deaths (a worker that sent its result and exited did not crash),
        then the commands other threads posted."""
        deaths = []
        woken = False
        for key, _ in ready:
            if key.data is None:
                woken = True
                continue
            worker, what = key.data
            if what == "pipe":
                self._inbox.drain(worker)
            else:
                deaths.append(worker)
        for worker in deaths:
            if worker.worker_id in self._fleet.workers:
                self._on_worker_exit(worker)
        for command in self._commands.take(woken):
            self._execute(command)

    def _execute(self, item: Callable[[], None] | TaskRecord) -> None:
        if isinstance(item, TaskRecord):
            try:
                self._accept(item)
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

    def _flush_journal(self) -> float | None:
        """Group-commit this wake-up; once results moved into SQLite, older ones may leave memory.
        When the next flush is due (None: nothing waits to be flushed)."""
        journal = self._journaling.journal
        if journal is None:
            return None
        due = journal.flush(wait=False)
        if journal.moved_at != self._journal_moved_at:
            self._journal_moved_at = journal.moved_at
            self.results.evict()
        return due

    def _contain(self, exc: Exception, doing: str, about: TaskRecord | WorkerHandle | None) -> None:
        """A fault while handling one task or one worker ends that task (or kills that worker), not
        the supervisor. A fault about neither is the supervisor's own: it is raised again, and ends
        the loop loudly."""
        if about is None:
            raise exc
        logger.error("internal error while %s: %s", doing, exc, exc_info=exc)
        if isinstance(about, WorkerHandle):
            self._inbox.expel(about, exc)
        elif about.result is None:
            self._lifecycle.fail(about, "interrupted", f"the orchestrator failed while {doing}: {exc!r}")

    def _fail_loudly(self, exc: BaseException) -> None:
        """A fault of ours escaped the loop: say so everywhere, and lose nothing that was accepted.

        With a journal, open tasks stay open there (queued, or running at their attempt) for the
        next process to recover, exactly as after a host crash; only memory learns they ended.
        """
        self.failure = f"{type(exc).__name__}: {exc}"
        journal = self._journaling.stop()
        logger.critical(
            "orchestrator %r: the supervisor failed (%s); its workers are killed and its open tasks "
            "end here%s",
            self._config.name,
            self.failure,
            ", and stay open in the journal for the next process" if journal is not None else "",
            exc_info=exc,
        )
        if journal is not None:
            try:
                journal.flush(wait=False)  # this wake-up's changes, into the intake log; no disk wait
            except Exception:
                logger.exception("the journal could not take the last changes before the failure")

    def _close_down(self) -> None:
        """The loop ended (normally or not): no worker, command or open task may be left behind."""
        for command in self._commands.shut():
            try:
                self._execute(command)
            except Exception:
                logger.exception("command left at shutdown failed")
        self._fleet.close()
        self._shutdown.end_open_tasks(self.failure)
        if self._journaling.journal is not None:
            self._journaling.journal.flush(wait=False)  # the rest moves at close, on the caller's thread
        unlink_by_prefix(block_prefix(self._pool.block_namespace)[:-2])
        self._selector.close()
        self._commands.close()
        self._pool.close()
        self._bus.close(wait=False)

    # ----------------------------------------------------------------- steps named in the tables

    def _accept(self, record: TaskRecord) -> None:
        self._lifecycle.accept(record)

    def _on_waiting(self, worker: WorkerHandle, msg: protocol.Waiting) -> None:
        for record in self._conversation.on_waiting(worker, msg):
            self._dispatch.revoke(record)  # it would wait behind a task that waits: run it elsewhere

    def _on_worker_exit(self, worker: WorkerHandle) -> None:
        """A worker's process ended: read its last words, fail its tasks, replace it if needed."""
        self._inbox.drain(worker, until_empty=True)
        end = self._fleet.bury(worker)
        self._reports.on_death(worker, end)
        self._announce.worker_exited(worker, end.reason, end.exitcode)
        self._fleet.replenish()

    # ----------------------------------------------------------------- for the facade (its thread)

    @property
    def broker(self) -> Broker:
        """Topics and their subscribers."""
        return self._conversation.broker

    def adopt_final(self, records: list[TaskRecord]) -> None:
        """Take in tasks recovered already final: back in their groups and plans, and in line for
        eviction like any other result."""
        for record in records:
            self._graph.join(record)
            self._graph.resolve(record)
        self.results.adopt(records)

    def cancel(self, record: TaskRecord, message: str = "cancelled") -> bool:
        """Cancel a queued or running task; False if it is already final."""
        return self._lifecycle.cancel(record, message)

    def publish(self, topic: str, data: Any) -> None:
        """The host publishes (``data`` already round-tripped through msgpack)."""
        self._conversation.publish(topic, data)

    def begin_shutdown(self, cancel_pending: bool, deadline: float | None, keep_queued: bool = False) -> None:
        """Take no new work; cancel the queue if asked; at ``deadline``, cancel and kill the rest
        (``keep_queued``: leave every open task in the journal for the next process)."""
        self._shutdown.begin(cancel_pending, deadline, keep_queued)

    def status(self) -> OrchestratorStatus:
        """Counts of workers and tasks, as of now."""
        states = [w.state for w in self._fleet.workers.values()]
        counts = self._lifecycle.counts
        return OrchestratorStatus(
            workers=len(states),
            busy=states.count("busy"),
            idle=states.count("idle"),
            queued=counts[TaskStatus.QUEUED],
            running=counts[TaskStatus.RUNNING],
            completed=counts[TaskStatus.COMPLETED],
            failed=counts[TaskStatus.ERROR],
            cancelled=counts[TaskStatus.CANCELLED],
            max_workers=self._config.max_workers,
            task_queue_size=self._config.task_queue_size,
            uptime_s=time.monotonic() - self._started,
            type_limits=self._capacity.limits(),
        )

    def metrics_state(self) -> tuple[list[WorkerReading], dict[str, int]]:
        """For a scrape, from any thread: (type, state, pid if local) of every worker, and the
        parallelism each task type is allowed now."""
        task_types = self._config.task_types()
        return self.call(lambda: (self._fleet.readings(), self._capacity.allowed(task_types)))

    def worker_rows(self) -> list[dict[str, Any]]:
        """The fields of every worker (without RSS, which the caller measures off this thread)."""
        return self._fleet.rows()
