"""`Fleet`: the worker processes, from spawn to burial, and what the supervisor reads of them."""

from __future__ import annotations

import contextlib
import itertools
import logging
import selectors
import signal
import time
from typing import Any, Final, NamedTuple

import psutil

from orchestrator.backends.base import ProcessPool, WorkerHandle
from orchestrator.config import OrchestratorConfig
from orchestrator.limits import process_tree, signal_processes
from orchestrator.logs import task_extra
from orchestrator.metrics import WorkerReading
from orchestrator.scheduler import Timers
from orchestrator.supervisor.announce import Announcer
from orchestrator.supervisor.line import Line
from orchestrator.supervisor.record import TaskRecord, prefetched
from workers import protocol
from workers.shm import block_prefix, unlink_by_prefix
from workers.values import utc_moment

logger = logging.getLogger(__name__)

# A worker told to exit gets this long before it is killed.
STOP_TIMEOUT: Final = 3.0
# Between the SIGTERM and the SIGKILL of a worker whose handler ignored a stop request.
TERMINATE_GRACE: Final = 0.25
# Workers that die before saying Hello this many times in a row stop the pool from respawning
# on its own (min_workers, fixed pools); each task still gets its own attempt and error.
MAX_START_FAILURES: Final = 3


class WorkerExit(NamedTuple):
    """How a reaped worker ended."""

    reason: str
    exitcode: int | None
    # It died before it said Hello.
    never_started: bool


class Fleet:
    """Spawns workers, makes them idle, retires, kills and buries them; owns ``workers``.

    Every worker's pipe and sentinel are registered in the supervisor's selector from spawn to
    burial; the selector hands them back as ``(worker, "pipe")`` and ``(worker, "exit")``.
    """

    def __init__(
        self,
        config: OrchestratorConfig,
        pool: ProcessPool,
        selector: selectors.BaseSelector,
        timers: Timers,
        announce: Announcer,
        tasks: dict[str, TaskRecord],
        line: Line,
    ) -> None:
        self._config = config
        self._pool = pool
        self._selector = selector
        self._timers = timers
        self._announce = announce
        self._tasks = tasks
        self._line = line
        self.workers: dict[int, WorkerHandle] = {}
        # Shutting down: no new worker, and each one exits once nothing is left to dispatch.
        self.closing = False
        self._next_worker_id = 1
        self._start_failures = 0

    # ----------------------------------------------------------------- growing

    def spawn(self, task_type: str | None = None, waiting: bool = True) -> WorkerHandle | None:
        """Start a worker (typed by its first task); None when the pool has no process free."""
        worker = self._pool.spawn(self._next_worker_id, task_type, waiting)
        if worker is None:
            return None  # no process free on a node that offers the type (Dask backend)
        self._next_worker_id += 1
        self.workers[worker.worker_id] = worker
        self._selector.register(worker.conn.fileno(), selectors.EVENT_READ, (worker, "pipe"))
        self._selector.register(worker.sentinel, selectors.EVENT_READ, (worker, "exit"))
        deadline = time.monotonic() + self._config.worker_start_timeout
        worker.timer = self._timers.schedule(deadline, self._on_start_timeout, worker)
        self._announce.worker_spawned(worker)
        return worker

    def take_arrivals(self) -> None:
        """Take in processes a remote pool's nodes started on their own, up to max_workers."""
        while (
            not self.closing
            and self.working() < self._config.max_workers
            and self.spawn(waiting=False) is not None
        ):
            pass

    def replenish(self) -> None:
        """Keep min_workers (all max_workers in a fixed pool) processes, untyped until used."""
        floor = self._config.max_workers if not self._config.enable_auto_scaling else self._config.min_workers
        while (
            not self.closing
            and sum(w.exit_reason is None for w in self.workers.values()) < floor
            and self._start_failures < MAX_START_FAILURES
            and self.spawn() is not None
        ):
            pass

    def working(self) -> int:
        """Workers that count toward max_workers (not those whose only task waits)."""
        return sum(not w.lent_out for w in self.workers.values())

    def on_hello(self, worker: WorkerHandle, msg: protocol.Hello) -> None:
        """The worker started: send what waited for it, or make it idle."""
        self._start_failures = 0
        if worker.state != "starting":
            return
        Timers.cancel(worker.timer)  # its start deadline
        if worker.pending:
            worker.state = "busy"
            for pending in worker.pending:
                worker.send(pending)
            worker.pending.clear()
        else:
            self.make_idle(worker)

    def _on_start_timeout(self, worker: WorkerHandle) -> None:
        """A worker that never said Hello (stuck in an import, or on a lock inherited by a fork) is
        killed; the tasks it was given go back in line without using up an attempt."""
        if worker.state != "starting" or worker.worker_id not in self.workers:
            return
        logger.warning(
            "worker %d (pid %s) did not start within worker_start_timeout=%g s; killing it",
            worker.worker_id,
            worker.pid,
            self._config.worker_start_timeout,
        )
        self.kill(worker, "start_timeout")

    # ----------------------------------------------------------------- between tasks

    def task_over(self, worker: WorkerHandle, task_id: str) -> None:
        """One of the worker's tasks is over; with none left, recycle it or make it idle."""
        del worker.tasks[task_id]
        worker.tasks_completed += 1
        worker.last_active = time.time()
        limit = self._config.max_tasks_per_worker
        if limit is not None and worker.tasks_completed >= limit:
            worker.slots = worker.prefetch = 0
            if not worker.tasks:
                self.retire(worker, "recycled")
        elif not worker.tasks and worker.exit_reason is None:
            self.make_idle(worker)

    def make_idle(self, worker: WorkerHandle) -> None:
        """The worker has no task: it waits for one, or exits if it is not needed."""
        Timers.cancel(worker.timer)
        worker.state = "idle"
        working = [w for w in self.workers.values() if w.exit_reason is None and not w.lent_out]
        if len(working) > self._config.max_workers:
            self.retire(worker, "surplus")  # spawned while another waited; that one goes on now
        elif self.closing:
            self.retire_unneeded()
        elif self._config.enable_auto_scaling:
            worker.timer = self._timers.schedule(
                time.monotonic() + self._config.idle_timeout, self._on_idle_timeout, worker
            )

    def _on_idle_timeout(self, worker: WorkerHandle) -> None:
        busy_or_gone = worker.state != "idle" or worker.worker_id not in self.workers
        staying = sum(w.exit_reason is None for w in self.workers.values())
        if busy_or_gone or staying <= self._config.min_workers:
            return
        self.retire(worker, "idle")

    def make_room(self) -> bool:
        """Retire the least recently used idle worker of some type, one at a time; True while a
        worker retires for room (its slot goes to the next task that needs one)."""
        if any(w.exit_reason == "retired" for w in self.workers.values()):
            return True
        idle = [w for w in self.workers.values() if w.state == "idle" and w.type is not None]
        if not idle:
            return False
        self.retire(min(idle, key=lambda w: w.last_active), "retired")
        return True

    def stop_growing(self) -> None:
        """Shutting down: no new worker, and each one exits once nothing is left to dispatch."""
        self.closing = True

    def retire_unneeded(self) -> None:
        """While closing, once nothing is left to dispatch, every worker without a task exits."""
        if not self.closing or self._line:
            return
        for worker in list(self.workers.values()):
            if worker.state in ("idle", "starting") and not worker.tasks:
                self.retire(worker, "shutdown")

    # ----------------------------------------------------------------- ending

    def retire(self, worker: WorkerHandle, reason: str) -> None:
        """Ask a worker without a task to exit; it is killed if it has not after STOP_TIMEOUT."""
        Timers.cancel(worker.timer)
        worker.state = "stopping"
        worker.exit_reason = reason
        worker.send(protocol.Shutdown())
        worker.timer = self._timers.schedule(time.monotonic() + STOP_TIMEOUT, self.kill, worker, reason)
        logger.debug("retiring worker %d (%s)", worker.worker_id, reason)

    def kill(self, worker: WorkerHandle, reason: str) -> None:
        """SIGKILL the worker (its death is then seen, and handled, like any other)."""
        if worker.worker_id not in self.workers:
            return
        worker.state = "stopping"
        worker.exit_reason = reason
        self._pool.kill(worker)
        logger.debug("killed worker %d (%s)", worker.worker_id, reason)

    def kill_if_still_running(self, worker: WorkerHandle, task_id: str, reason: str) -> None:
        """The handler outlived its stop request: SIGTERM its worker's tree, SIGKILL it shortly after."""
        if task_id not in worker.tasks or worker.worker_id not in self.workers or worker.state == "stopping":
            return
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
        self._timers.schedule(time.monotonic() + TERMINATE_GRACE, self._kill_leftovers, worker, reason, tree)

    def _kill_leftovers(self, worker: WorkerHandle, reason: str, tree: list[psutil.Process]) -> None:
        """SIGKILL what is left of the tree a SIGTERM went to, whether or not the worker died of it."""
        signal_processes(tree, signal.SIGKILL)
        self.kill(worker, reason)

    def connection_lost(self, worker: WorkerHandle) -> None:
        """Nothing more can be read from the worker's pipe (a remote process's death shows here)."""
        self._stop_selecting(worker.conn.fileno())
        self._pool.connection_lost(worker)

    def bury(self, worker: WorkerHandle) -> WorkerExit:
        """A worker's process ended (its last words were read): forget it and what it held."""
        worker.process.join()
        Timers.cancel(worker.timer)
        self.workers.pop(worker.worker_id, None)
        self._stop_selecting(worker.conn.fileno())
        self._stop_selecting(worker.sentinel)
        self._pool.forget(worker)
        unlink_by_prefix(block_prefix(self._pool.block_namespace, worker.worker_id))
        never_started = worker.state == "starting"
        if never_started:
            self._start_failures += 1
        reason = worker.exit_reason or "crashed"
        if reason == "crashed":
            self._announce.crashed(worker)  # counted before its tasks' results go out
        return WorkerExit(reason, worker.process.exitcode, never_started)

    def close(self) -> None:
        """Kill every worker left, and wait for each (the loop has ended)."""
        for worker in list(self.workers.values()):
            self._pool.kill(worker)
            worker.process.join(STOP_TIMEOUT)
            self._pool.forget(worker)
        self.workers.clear()

    def _stop_selecting(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    # ----------------------------------------------------------------- reading

    def busy(self) -> list[WorkerHandle]:
        """The workers that run a task now."""
        return [w for w in self.workers.values() if w.state == "busy"]

    def open_records(self, worker: WorkerHandle) -> list[TaskRecord]:
        """The not yet final tasks that this worker still runs for us."""
        records = (self._tasks.get(task_id) for task_id in worker.tasks)
        return [r for r in records if r is not None and r.result is None and r.worker is worker]

    def held_behind(self, worker: WorkerHandle) -> list[TaskRecord]:
        """The tasks a worker holds queued behind the one it runs: prefetched, not started. A
        task just sent to a worker that had none is not among them: it starts at once."""
        running = max(1, worker.slots)
        if len(worker.tasks) <= running:
            return []
        held = []
        for task_id in itertools.islice(worker.tasks, running, None):
            record = self._tasks.get(task_id)
            if record is not None and record.worker is worker and prefetched(record):
                held.append(record)
        return held

    def readings(self) -> list[WorkerReading]:
        """(type, state, pid if local) of every worker, for a metrics scrape."""
        return [(w.type, w.state, w.pid if w.local else None) for w in self.workers.values()]

    def rows(self) -> list[dict[str, Any]]:
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
                "started_at": utc_moment(w.started_at),
                "last_active": utc_moment(w.last_active),
            }
            for w in self.workers.values()
        ]
