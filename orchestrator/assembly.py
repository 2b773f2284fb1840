"""`Assembly`: the parts a started orchestrator runs, started in one order and closed in the other.

Start: the metrics endpoint (a port in use fails before any worker starts), the control socket,
the process pool, the journal's recovery, the supervisor with its recovered tasks, the event
thread. Close, once the supervisor's thread has ended: the event thread, the control socket, the
metrics endpoint, the journal. A start that fails part-way closes what it had started.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, Literal

from orchestrator.admission import Admission
from orchestrator.backends.base import ProcessPool
from orchestrator.backends.local import WorkerPool
from orchestrator.config import OrchestratorConfig
from orchestrator.control import Controlled, ControlServer
from orchestrator.errors import OrchestratorClosedError, OrchestratorError
from orchestrator.events import EventBus
from orchestrator.journal import Journal
from orchestrator.lookup import TaskIds, TaskLookup
from orchestrator.metrics import Metrics
from orchestrator.recovery import Recovery
from orchestrator.supervisor import Supervisor, TaskRecord
from workers.calls import Initializer
from workers.shm import BlockWriter, block_prefix, unlink_by_prefix

logger = logging.getLogger("orchestrator")

State = Literal["created", "running", "closing", "closed"]

# Orchestrators still running at interpreter exit are shut down first (see `Assembly.at_exit`).
_live: Final[weakref.WeakSet[Assembly]] = weakref.WeakSet()


class Assembly:
    """Owns whether one orchestrator runs (``state``), and its journal, metrics endpoint, control
    socket and supervisor (None until started), and the ids of the tasks it recovered."""

    def __init__(
        self,
        config: OrchestratorConfig,
        tasks: dict[str, TaskRecord],
        ids: TaskIds,
        lookup: TaskLookup,
        admission: Admission,
        bus: EventBus,
        blocks: BlockWriter | None,
        block_namespace: str,
    ) -> None:
        self._config = config
        self.name = config.name
        self._tasks = tasks
        self._ids = ids
        self._lookup = lookup
        self._admission = admission
        self._bus = bus
        self._blocks = blocks
        self._block_namespace = block_namespace
        self.state: State = "created"
        self._lock = threading.Lock()
        self.journal: Journal | None = None
        self.metrics: Metrics | None = None
        self.control: ControlServer | None = None
        self.supervisor: Supervisor | None = None
        self.recovered: list[str] = []
        # Executor initializers made before start: every local worker gets them as it starts.
        self._initializers: dict[str, Initializer] = {}
        # On Dask: the cluster's workers (address, threads, resources, our tasks there).
        self.cluster_nodes: Callable[[], list[dict[str, Any]]] = list

    def start(self, controlled: Controlled) -> bool:
        """Start every part once; whether this call started them (False: running already).
        On a failure, nothing started stays held."""
        with self._lock:
            if self.state == "running":
                return False
            if self.state != "created":
                raise OrchestratorClosedError("this orchestrator was shut down; create a new one")
            self.supervisor = self._start_parts(controlled)
            self.state = "running"
            _live.add(self)
        logger.info("orchestrator %r started (max_workers=%d)", self._config.name, self._config.max_workers)
        return True

    def inherit(self, initializer: Initializer) -> str | None:
        """The name under which every worker will hold ``initializer`` from its start, or None
        once started (or on Dask): then it must travel pickled with each call."""
        with self._lock:
            if self.state != "created" or self._config.backend != "local":
                return None
            name = f"initializer-{len(self._initializers) + 1}"
            self._initializers[name] = initializer
            return name

    def shut_down(self, cancel_pending: bool, timeout: float | None, keep_queued: bool) -> bool:
        """Ask the supervisor to shut down (see `ParallelOrchestrator.shutdown`); False when
        there was nothing to shut down (never started: now closed)."""
        with self._lock:
            if self.state == "created":
                self.state = "closed"
                return False
            if self.state == "running":
                self.state = "closing"
        supervisor = self.supervisor
        assert supervisor is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        with contextlib.suppress(OrchestratorClosedError):  # an earlier shutdown already finished
            supervisor.post(lambda: supervisor.begin_shutdown(cancel_pending, deadline, keep_queued))
        return True

    def finish_shutdown(self) -> None:
        """Wait for the supervisor's thread to end, then stop callbacks, the control socket,
        /metrics and the journal."""
        assert self.supervisor is not None
        self.supervisor.thread.join()
        self._bus.close()
        self._close_serving()
        if self.journal is not None:
            self.journal.close()
        self.state = "closed"
        _live.discard(self)

    def at_exit(self) -> None:
        """An exit without `shutdown` (an unhandled exception, most often): with a journal, the open
        tasks stay in it for the next process, as after a crash; without one they are cancelled."""
        if self.state == "closing" and self.supervisor is not None:
            self.finish_shutdown()
        if self.state != "running":
            return
        if self.journal is not None:
            logger.warning(
                "orchestrator %r still running at exit: its open tasks stay in the journal %s for the "
                "next process (call shutdown() first to run or cancel them)",
                self._config.name,
                self.journal.path,
            )
            self.shut_down(cancel_pending=False, timeout=None, keep_queued=True)
        else:
            logger.warning(
                "orchestrator %r still running at exit: cancelling its tasks (call shutdown() first)",
                self._config.name,
            )
            self.shut_down(cancel_pending=True, timeout=0, keep_queued=False)
        self.finish_shutdown()

    def _start_parts(self, controlled: Controlled) -> Supervisor:
        config = self._config
        self.journal = Journal(config.journal_path) if config.journal_path else None
        pool: ProcessPool | None = None
        try:
            self.metrics = self._serve_metrics()
            if config.control_socket:
                self.control = ControlServer(controlled, self._lookup)
                self.control.start()
            pool, supervisor_config = self._start_pool()
            recovery = self._recovery()
            recovered, final = self._recover(recovery) if recovery is not None else ([], [])
        except BaseException:
            self._undo_start(pool)
            raise
        supervisor = self.supervisor = self._supervisor(supervisor_config, pool)
        if recovery is not None:
            supervisor.schedules.restore(recovery.schedules())
        self._bus.start()
        supervisor.thread.start()
        if recovered or final:
            supervisor.post(lambda: supervisor.adopt_final(final))
            supervisor.accept(recovered)
        return supervisor

    def _supervisor(self, config: OrchestratorConfig, pool: ProcessPool) -> Supervisor:
        admission = self._admission
        supervisor = Supervisor(
            config,
            self._tasks,
            admission.queue_slots,
            self._bus,
            pool,
            self._blocks,
            self.journal,
            admission.admit_scheduled,
            admission.admit_child,
            self.metrics,
        )
        if self.metrics is not None:
            self.metrics.watch(supervisor.metrics_state)
        return supervisor

    def _undo_start(self, pool: ProcessPool | None) -> None:
        """A start that failed part-way stops what it started, so that a retry finds nothing held
        (the journal's lock, the control socket's name, the metrics port, helper processes)."""
        self._close_serving()
        self.control = self.metrics = None
        if pool is not None:
            pool.close()
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        self._tasks.clear()
        self.recovered.clear()
        unlink_by_prefix(block_prefix(self._block_namespace)[:-2])  # blocks of recovered configs

    def _close_serving(self) -> None:
        if self.control is not None:
            self.control.close()
        if self.metrics is not None:
            self.metrics.close()

    def _serve_metrics(self) -> Metrics | None:
        """Bind /metrics first, so a port in use fails before any worker starts."""
        config = self._config
        if config.metrics_port is None:
            return None
        metrics = Metrics(config.name, config.backend, sorted(config.task_types()))
        metrics.serve(config.metrics_host, config.metrics_port)
        return metrics

    def _start_pool(self) -> tuple[ProcessPool, OrchestratorConfig]:
        """The local process pool, or one on a Dask cluster sized by the cluster's threads."""
        config = self._config
        if config.backend == "local":
            private = (self.journal.lock_fd,) if self.journal is not None else ()
            pool = WorkerPool(
                config.start_method,
                config.shm_threshold,
                self._block_namespace,
                private,
                config.max_memory_mb,
                self._initializers,
                config.worker_log_level,
            )
            return pool, config
        from orchestrator.backends.dask import DaskPool

        dask_pool = DaskPool(config, sorted(config.task_types()), self._block_namespace)
        self._admission.offered_types = dask_pool.offered_types
        self.cluster_nodes = dask_pool.nodes
        threads = dask_pool.capacity()
        # A local cluster sizes itself by max_workers; a remote one by its threads, and keeps no
        # idle process beyond idle_timeout.
        local = config.dask_address is None
        floor = min(config.min_workers, threads) if local else 0
        scaling = config.enable_auto_scaling or not local
        update = {"max_workers": threads, "min_workers": floor, "enable_auto_scaling": scaling}
        return dask_pool, config.model_copy(update=update)

    def _recovery(self) -> Recovery | None:
        if self.journal is None:
            return None
        return Recovery(self.journal, self._tasks, self._admission.handlers, self._blocks)

    def _recover(self, recovery: Recovery) -> tuple[list[TaskRecord], list[TaskRecord]]:
        """Rebuild every journaled task; evicted results are read back from the journal from now on."""
        recovered = recovery.tasks()
        self.recovered = recovered.reopened
        self._ids.continue_after(recovered.highest_seq)
        self._lookup.from_journal = recovery.evicted
        return recovered.to_run, recovered.final


@atexit.register
def _shut_down_at_exit() -> None:
    for assembly in list(_live):
        try:
            assembly.at_exit()
        except OrchestratorError:
            logger.exception("shutting down orchestrator %r at exit failed", assembly.name)
