"""Prometheus metrics of one orchestrator, served on ``/metrics`` (the optional ``[metrics]`` extra).

Counters, histograms and the task gauges are updated by the supervisor as tasks move, through
label children cached per type, so a task costs a few dictionary lookups. The worker gauges
(count by state, RSS) and the adaptive limits are read when Prometheus scrapes, so an idle
orchestrator costs nothing between scrapes. Every label is a task type, a priority, an error
kind or a worker state: bounded sets, never task or worker ids, which grow without end.
Each orchestrator has its own registry, so several in one process never collide.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from typing import TYPE_CHECKING, Any, Final

from orchestrator.errors import OrchestratorError
from orchestrator.limits import tree_rss

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

# Task run times span milliseconds (no-op handlers) to hours (research, learning).
DURATION_BUCKETS: Final = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30, 60, 300, 900, 3600)
# Queue waits are sub-millisecond on an idle pool and minutes behind a deep queue.
WAIT_BUCKETS: Final = (0.0005, 0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600)
_PRIORITIES: Final = tuple(str(priority) for priority in range(11))
WORKER_STATES: Final = ("starting", "idle", "busy", "waiting", "stopping")
# The label value of workers that have not run a task yet, so they have no type.
UNTYPED: Final = "none"

# What a scrape reads from the supervisor: (type, state, pid or None when remote) per worker, and
# the parallelism each task type is allowed now.
WorkerReading = tuple[str | None, str, int | None]
ReadState = Callable[[], tuple[list[WorkerReading], dict[str, int]]]


class _Children(dict[tuple[str, ...], Any]):
    """A metric's label children, created once per label values and then found by a dict lookup."""

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self._metric = metric

    def __missing__(self, key: tuple[str, ...]) -> Any:
        child = self[key] = self._metric.labels(*key)
        return child


class Metrics:
    """The instruments, the scrape-time collector and the HTTP server of one orchestrator."""

    def __init__(self, name: str, backend: str, task_types: list[str]) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise OrchestratorError(
                "metrics_port needs the prometheus-client package: "
                "pip install 'parallel-orchestrator[metrics]'"
            ) from exc
        self._task_types = task_types
        self._read_state: ReadState | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.registry = registry = prom.CollectorRegistry()
        # Collected first: reading the supervisor's state waits for the commands posted before the
        # scrape, so a scrape after submit_task returned counts that task.
        registry.register(_ScrapeCollector(self))
        prom.Info("orchestrator", "This orchestrator's name, backend and version.", registry=registry).info(
            {"name": name, "backend": backend, "version": _version()}
        )

        self._define_counters(prom, registry)
        self._define_distributions(prom, registry)

    def _define_counters(self, prom: Any, registry: Any) -> None:
        def counter(metric: str, doc: str, *labels: str) -> _Children:
            return _Children(prom.Counter(metric, doc, labels, registry=registry))

        self.submitted = counter("orchestrator_tasks_submitted", "Tasks accepted.", "type")
        self.completed = counter("orchestrator_tasks_completed", "Tasks that succeeded.", "type")
        self.failed = counter(
            "orchestrator_tasks_failed", "Tasks that ended in error, by kind.", "type", "kind"
        )
        self.cancelled = counter("orchestrator_tasks_cancelled", "Tasks cancelled.", "type")
        self.retries = counter(
            "orchestrator_task_retries", "Attempts that failed and were retried, by kind.", "type", "kind"
        )
        self.timeouts = counter("orchestrator_task_timeouts", "Attempts that ran past their timeout.", "type")
        self.crashes = counter(
            "orchestrator_worker_crashes",
            "Worker processes that died unasked (by the type they ran).",
            "type",
        )
        self.memory_kills = counter(
            "orchestrator_memory_limit_kills",
            "Workers killed past max_memory_mb (by the type they ran).",
            "type",
        )
        self.spawned = prom.Counter(
            "orchestrator_workers_spawned", "Worker processes started.", registry=registry
        )

    def _define_distributions(self, prom: Any, registry: Any) -> None:
        self.duration = _Children(
            prom.Histogram(
                "orchestrator_task_duration_seconds",
                "Run time of finished tasks' last attempt, by final status.",
                ("type", "status"),
                buckets=DURATION_BUCKETS,
                registry=registry,
            )
        )
        self.queue_wait = _Children(
            prom.Histogram(
                "orchestrator_task_queue_wait_seconds",
                "Time from ready to run (dependencies and delays excluded), per attempt.",
                ("type",),
                buckets=WAIT_BUCKETS,
                registry=registry,
            )
        )
        self.queued = _Children(
            prom.Gauge(
                "orchestrator_tasks_queued", "Tasks queued now.", ("type", "priority"), registry=registry
            )
        )
        self.running = _Children(
            prom.Gauge(
                "orchestrator_tasks_running", "Tasks running now.", ("type", "priority"), registry=registry
            )
        )

    # ----------------------------------------------------------------- the supervisor's reports

    def task_queued(self, task_type: str, priority: int) -> None:
        """A task was accepted (a recovered one too: counts start again with each process)."""
        self.submitted[(task_type,)].inc()
        self.queued[task_type, _PRIORITIES[priority]].inc()

    def task_started(self, task_type: str, priority: int, waited: float) -> None:
        """An attempt started after ``waited`` seconds ready in the queue."""
        self.queued[task_type, _PRIORITIES[priority]].dec()
        self.running[task_type, _PRIORITIES[priority]].inc()
        self.queue_wait[(task_type,)].observe(waited)

    def attempt_failed(self, task_type: str, kind: str) -> None:
        """An attempt ended without a result (retried or not)."""
        if kind == "timeout":
            self.timeouts[(task_type,)].inc()

    def task_requeued(self, task_type: str, priority: int, was_running: bool, kind: str) -> None:
        """A failed attempt is retried: the task is queued again."""
        self._open(was_running)[task_type, _PRIORITIES[priority]].dec()
        self.queued[task_type, _PRIORITIES[priority]].inc()
        self.retries[task_type, kind].inc()

    def task_finished(
        self,
        task_type: str,
        priority: int,
        was_running: bool,
        status: str,
        kind: str | None,
        duration: float | None,
    ) -> None:
        """A task reached its final ``status``; ``kind`` is the error kind of a failure."""
        self._open(was_running)[task_type, _PRIORITIES[priority]].dec()
        if status == "completed":
            self.completed[(task_type,)].inc()
        elif status == "cancelled":
            self.cancelled[(task_type,)].inc()
        else:
            self.failed[task_type, kind or "error"].inc()
        if duration is not None:
            self.duration[task_type, status].observe(duration)

    def _open(self, running: bool) -> _Children:
        return self.running if running else self.queued

    def worker_spawned(self) -> None:
        """A worker process started."""
        self.spawned.inc()

    def worker_crashed(self, task_type: str | None) -> None:
        """A worker process died unasked."""
        self.crashes[(task_type or UNTYPED,)].inc()

    def memory_limit_kill(self, task_type: str | None) -> None:
        """A worker went past max_memory_mb: its tasks fail now and it is killed."""
        self.memory_kills[(task_type or UNTYPED,)].inc()

    # ----------------------------------------------------------------- serving

    def watch(self, read_state: ReadState) -> None:
        """Read worker states and adaptive limits through ``read_state`` at each scrape."""
        self._read_state = read_state

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on ``host:port`` (port 0: one the OS picks) on a daemon thread.

        Raises:
            OrchestratorError: the address cannot be bound (the port is in use, the host is not
                an address of this machine).
        """
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise OrchestratorError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                "choose another metrics_port (0 lets the OS pick a free one)"
            ) from exc

    @property
    def url(self) -> str | None:
        """Where ``/metrics`` is served, once `serve` bound it."""
        if self._server is None:
            return None
        address, port = self._server.server_address[:2]
        host = address.decode() if isinstance(address, bytes) else address
        return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def collect_workers(self) -> Iterator[Metric]:
        """The scrape-time families: workers by type and state, their RSS, the adaptive limits."""
        if self._read_state is None:
            return
        workers, limits = self._read_state()
        types = [*self._task_types, UNTYPED]
        counts = {(t, s): 0 for t in types for s in WORKER_STATES}
        rss = dict.fromkeys(types, 0)
        for task_type, state, pid in workers:
            label = task_type or UNTYPED
            counts[label, state] = counts.get((label, state), 0) + 1
            if pid is not None:
                rss[label] = rss.get(label, 0) + (tree_rss(pid) or 0)
        yield _gauge(
            "orchestrator_workers",
            "Worker processes now, by type and state.",
            ("type", "state"),
            counts.items(),
        )
        yield _gauge(
            "orchestrator_worker_rss_bytes",
            "Resident memory of this machine's workers and their children, by type.",
            ("type",),
            (((label,), total) for label, total in rss.items()),
        )
        yield _gauge(
            "orchestrator_parallelism_limit",
            "Tasks of a type allowed to run at once now (lowered after a rate limit, then regained).",
            ("type",),
            (((task_type,), limit) for task_type, limit in limits.items()),
        )


def _gauge(
    name: str, doc: str, labels: tuple[str, ...], samples: Iterable[tuple[tuple[str, ...], float]]
) -> Metric:
    """A gauge family read at scrape time, one sample per label values."""
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in samples:
        family.add_metric(label_values, value)
    return family


def _version() -> str:
    try:
        return metadata.version("parallel-orchestrator")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class _ScrapeCollector:
    """Hands a scrape the families read at that moment (a registry calls ``collect``)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect_workers()
