"""`Readings`: what an orchestrator reports of itself: status, workers, and the snapshot that
``orch status`` and hosts show."""

from __future__ import annotations

import os
from typing import Any

import psutil

from orchestrator.assembly import Assembly
from orchestrator.config import OrchestratorConfig
from orchestrator.limits import CpuMeter
from orchestrator.lookup import TaskLookup
from orchestrator.models import OrchestratorStatus, WorkerInfo


class Readings:
    """Reads a started orchestrator's state through its supervisor (an unstarted one reports
    zeros); each read is one call on the supervisor's thread, RSS and CPU measured off it."""

    def __init__(self, config: OrchestratorConfig, lookup: TaskLookup, assembly: Assembly) -> None:
        self._config = config
        self._lookup = lookup
        self._assembly = assembly
        self._cpu_meter = CpuMeter()

    def status(self, state: str) -> OrchestratorStatus:
        """Counts of workers and tasks; ``state`` is the facade's (``failed`` overrides it)."""
        supervisor = self._assembly.supervisor
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
                max_workers=self._config.max_workers,
                task_queue_size=self._config.task_queue_size,
                uptime_s=0.0,
                state=state,
            )
        status = supervisor.call(supervisor.status)
        if supervisor.failure is not None:
            return status.model_copy(update={"state": "failed", "failure": supervisor.failure})
        return status if state == "running" else status.model_copy(update={"state": state})

    def workers(self) -> list[WorkerInfo]:
        """Every worker process, with its RSS when it runs on this machine."""
        supervisor = self._assembly.supervisor
        if supervisor is None:
            return []
        infos = []
        for row in supervisor.call(supervisor.worker_rows):
            local = row.pop("local")
            infos.append(WorkerInfo(**row, rss_bytes=_rss(row["pid"]) if local else None))
        return infos

    def snapshot(self, state: str, metrics_url: str | None) -> dict[str, Any]:
        """See `ParallelOrchestrator.snapshot`."""
        status = self.status(state)
        workers = []
        for worker in self.workers():
            row = worker.model_dump(mode="json")
            row["cpu_percent"] = self._cpu_meter.percent(worker.pid) if worker.rss_bytes is not None else None
            progress = self._lookup.progress_of(worker.current_task)
            row["progress"] = progress.model_dump(mode="json") if progress else None
            workers.append(row)
        supervisor = self._assembly.supervisor if state == "running" else None
        tasks_per_s = supervisor.call(supervisor.results.tasks_per_second) if supervisor else 0.0
        schedules = supervisor.call(supervisor.schedules.infos) if supervisor else []
        return {
            "name": self._config.name,
            "pid": os.getpid(),
            "uptime_s": status.uptime_s,
            "tasks_per_s": tasks_per_s,
            "status": status.model_dump(mode="json"),
            "workers": workers,
            "schedules": [info.model_dump(mode="json") for info in schedules],
            "dask_workers": self._assembly.cluster_nodes() if supervisor else [],
            "metrics_url": metrics_url,
        }


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None
