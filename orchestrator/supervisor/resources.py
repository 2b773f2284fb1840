"""Memory and CPU limits: measuring busy workers and judging what they use.

Every ``resource_check_interval`` while a worker is busy, a local worker is measured here (the RSS
of its process tree, its CPU time); a worker on a Dask node is asked to measure itself, and its
answer (`protocol.Usage`) is judged the same way when it arrives. The verdict is the supervisor's
to carry out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.backends.base import WorkerHandle
from orchestrator.config import OrchestratorConfig
from orchestrator.limits import cpu_seconds, tree_rss
from orchestrator.scheduler import Timer, Timers
from orchestrator.supervisor.record import TaskRecord
from workers import protocol


@dataclass(frozen=True, slots=True)
class Overuse:
    """What a worker's usage calls for."""

    # Over max_memory_mb: every running task fails memory_limit, and the worker is killed.
    memory: str | None = None
    # Over max_cpu_seconds: these tasks stop as timeouts, each with its message.
    cpu: list[tuple[TaskRecord, str]] = field(default_factory=list)


class ResourceLimits:
    """The periodic check of busy workers against max_memory_mb and max_cpu_seconds."""

    def __init__(
        self,
        config: OrchestratorConfig,
        timers: Timers,
        busy_workers: Callable[[], list[WorkerHandle]],
        judge: Callable[[WorkerHandle, int | None, float | None], None],
    ) -> None:
        self._config = config
        self._timers = timers
        self._busy_workers = busy_workers
        self._judge = judge
        self._timer: Timer | None = None
        self._limited = config.max_memory_mb is not None or config.max_cpu_seconds is not None

    def watch(self) -> None:
        """Check again in ``resource_check_interval`` seconds (when limits are set)."""
        if self._limited and self._timer is None:
            self._timer = self._timers.schedule(
                time.monotonic() + self._config.resource_check_interval, self._check
            )

    def cpu_at_start(self, worker: WorkerHandle) -> float | None:
        """The CPU time a task's count starts from, when its CPU is limited and measurable here."""
        if self._config.max_cpu_seconds is not None and worker.slots == 1 and worker.node is None:
            return cpu_seconds(worker.pid)
        return None

    def overuse(
        self, worker: WorkerHandle, running: list[TaskRecord], rss: int | None, cpu: float | None
    ) -> Overuse:
        """Judge a worker's measured RSS and CPU time (None: not measured)."""
        memory_limit = self._config.max_memory_mb
        if memory_limit is not None and rss is not None and rss > memory_limit * 2**20:
            used = rss / 2**20
            return Overuse(
                f"worker pid {worker.pid} used {used:.0f} MiB, over max_memory_mb={memory_limit:g}"
            )
        cpu_limit = self._config.max_cpu_seconds
        if cpu_limit is None or cpu is None or worker.slots != 1:
            return Overuse()
        # A task's CPU time is its worker's, counted from its start: only for one-task workers.
        stopped = []
        for record in running:
            if record.cpu_at_start is None:
                record.cpu_at_start = cpu  # a Dask node's first report: counted from there
            elif (spent := cpu - record.cpu_at_start) > cpu_limit:
                message = f"the task used {spent:.1f} s of CPU time, over max_cpu_seconds={cpu_limit:g}"
                stopped.append((record, message))
        return Overuse(cpu=stopped)

    def _check(self) -> None:
        self._timer = None
        busy = self._busy_workers()
        for worker in busy:
            if worker.node is not None:
                worker.send(protocol.Measure())
                continue
            rss = tree_rss(worker.pid) if self._config.max_memory_mb is not None else None
            cpu = cpu_seconds(worker.pid) if self._config.max_cpu_seconds is not None else None
            self._judge(worker, rss, cpu)
        if busy:
            self.watch()
