"""`ParallelOrchestrator`: the object a host embeds. Thread-safe; every method returns quickly."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from orchestrator.admission import Admission
from orchestrator.assembly import Assembly, State
from orchestrator.config import OrchestratorConfig, TaskSpec, merged_config
from orchestrator.durations import caller_timeout
from orchestrator.errors import OrchestratorClosedError
from orchestrator.events import EventBus
from orchestrator.executor import CallPort, TaskExecutor, initializer_for
from orchestrator.journal import Journal
from orchestrator.logs import enable_logging
from orchestrator.lookup import TaskIds, TaskLookup
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
from orchestrator.plan_handle import PlanHandle
from orchestrator.readings import Readings
from orchestrator.scheduling import HostSchedules
from orchestrator.supervisor import Supervisor, TaskRecord
from orchestrator.topics import HostTopics
from orchestrator.waiting import Waits
from workers.shm import BlockWriter, block_prefix

logger = logging.getLogger("orchestrator")

T = TypeVar("T")


class ParallelOrchestrator:
    """Runs typed tasks on a pool of worker processes, by priority, and reports back.

    Create it with an `OrchestratorConfig` (or keyword overrides), use it as a context manager
    or call `initialize` and `shutdown`, and submit tasks from any thread: `submit_task` returns
    an id at once and never waits for a worker. Results come back through `wait`,
    `wait_async`, `get_result`, per-task callbacks, or events subscribed with `on`.
    """

    def __init__(self, config: OrchestratorConfig | None = None, **overrides: Any) -> None:
        self.config = merged_config(config, overrides)
        self._tasks: dict[str, TaskRecord] = {}
        self._ids = TaskIds()
        self._lookup = TaskLookup(self.config, self._tasks, self._ids)
        self._plan_seq = itertools.count(1)
        # Shared memory does not reach other machines: on Dask every payload travels inline.
        threshold = self.config.shm_threshold if self.config.backend == "local" else None
        self._block_namespace = f"{os.getpid()}{self._ids.instance}"
        self._blocks = BlockWriter(block_prefix(self._block_namespace), threshold) if threshold else None
        self._bus = EventBus(self.config.name)
        self._admission = Admission(
            self.config,
            self._tasks,
            self._ids,
            self._lookup,
            self._blocks,
            self._running_supervisor,
            self._journal_now,
        )
        self._waits = Waits(self._lookup, self._running_supervisor)
        self._calls = CallPort(self._admission, self._running_supervisor)
        self._topics = HostTopics(self._running_supervisor)
        self._schedules = HostSchedules(self._admission, self._running_supervisor, self._journal_now)
        self._assembly = Assembly(
            self.config,
            self._tasks,
            self._ids,
            self._lookup,
            self._admission,
            self._bus,
            self._blocks,
            self._block_namespace,
        )
        self._readings = Readings(self.config, self._lookup, self._assembly)
        if self.config.enable_logging:
            enable_logging(self.config.log_format)

    # ----------------------------------------------------------------- lifecycle

    def initialize(self) -> None:
        """Start the supervisor and ``min_workers`` workers; idempotent.

        Raises:
            OrchestratorError: after `shutdown`, or when called while a worker process imports
                the host's main script (the script lacks ``if __name__ == "__main__":``).
        """
        self._assembly.start(self)

    @property
    def control_socket_path(self) -> Path | None:
        """Where this orchestrator's control socket listens while it serves one (``control_socket``)."""
        control = self._assembly.control
        return None if control is None else control.path

    @property
    def metrics_url(self) -> str | None:
        """The URL of this orchestrator's Prometheus endpoint while it serves one (``metrics_port``)."""
        metrics = self._assembly.metrics
        return None if metrics is None else metrics.url

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
        if not self._assembly.shut_down(cancel_pending, caller_timeout(timeout), keep_queued):
            return
        if wait:
            self._assembly.finish_shutdown()
        else:
            threading.Thread(target=self._assembly.finish_shutdown, name="orch-shutdown", daemon=True).start()

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
        return self._admission.submit(spec, run_at, delay, (on_progress, on_complete, on_error))

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
        handle = PlanHandle(self, f"plan-{next(self._plan_seq)}", self._admission.submit_plan_tasks)
        handle.add(plan)
        return handle

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
        options = (every, cron, tz, start_at, end_at, max_runs, jitter, overlap, catch_up)
        return self._schedules.add(spec, name, *options)

    def unschedule(self, name: str) -> None:
        """Stop the schedule before returning; tasks it already fired go on."""
        self._schedules.run(lambda runner: runner.remove(name))

    def pause_schedule(self, name: str) -> None:
        """Stop firing ``name`` until `resume_schedule`."""
        self._schedules.run(lambda runner: runner.pause(name))

    def resume_schedule(self, name: str) -> None:
        """Fire ``name`` again from its next slot; slots missed while paused are not fired."""
        self._schedules.run(lambda runner: runner.resume(name))

    def schedules(self) -> list[ScheduleInfo]:
        """Every schedule, by name."""
        return self._schedules.run(lambda runner: runner.infos())

    def recovered_tasks(self) -> list[str]:
        """Ids of the tasks that were queued or running when the journal's last host died
        (those that ended ``interrupted`` included), in submission order."""
        return list(self._assembly.recovered)

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
        return self._waits.wait(task_id, timeout)

    async def wait_async(self, task_id: str, timeout: float | None = None) -> TaskResult:
        """Await the task's final result without blocking the event loop.

        Raises:
            TimeoutError: the task is not final after ``timeout`` seconds (it keeps running).
            TaskNotFoundError: unknown id.
        """
        return await self._waits.wait_async(task_id, timeout)

    def stream(self, task_id: str) -> Iterator[Any]:
        """Yield each partial result of the task in emit order, then its final `TaskResult`.

        A stream opened at any time replays the partials kept so far (the newest 1,000 per
        task, of every attempt) before the live ones. It stops after the final result.
        """
        return self._waits.stream(task_id)

    async def stream_async(self, task_id: str) -> AsyncIterator[Any]:
        """`stream` for asyncio: ``async for item in orch.stream_async(task_id)``."""
        async for item in self._waits.stream_async(task_id):
            yield item

    def as_completed(self, task_ids: Iterable[str], timeout: float | None = None) -> Iterator[TaskResult]:
        """Yield the tasks' results in the order they became final (those already final first).

        Raises:
            TimeoutError: ``timeout`` seconds (for the whole iteration) passed first.
            TaskNotFoundError: an unknown id (raised before anything is yielded).
        """
        return self._waits.as_completed(task_ids, timeout)

    async def as_completed_async(
        self, task_ids: Iterable[str], timeout: float | None = None
    ) -> AsyncIterator[TaskResult]:
        """`as_completed` for asyncio: ``async for result in orch.as_completed_async(ids)``."""
        async for result in self._waits.as_completed_async(task_ids, timeout):
            yield result

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

    def executor(
        self,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        **task_defaults: Any,
    ) -> TaskExecutor:
        """A `concurrent.futures.Executor` whose functions run as tasks on this orchestrator.

        ``task_defaults`` are `TaskSpec` fields every task takes (``priority``, ``timeout``,
        ``retries``, ``retry_on_exception``, ``group``...); ``executor.options(...)`` changes
        them. ``initializer(*initargs)`` runs once in each worker process before its first
        function from this executor. Made before `initialize`, every worker gets them as it
        starts, as the stdlib's pool does, so ``initargs`` may hold a multiprocessing Queue, Lock
        or Value; made later, they travel pickled. Shutting the executor down leaves the
        orchestrator running.

        Raises:
            InvalidTaskError: a default that does not validate (the message names the field).
            TypeError: ``initializer`` is not callable.
            Exception: after `initialize`, the error pickling ``initargs`` raised.
        """
        init = initializer_for(self._assembly.inherit, initializer, initargs)
        return TaskExecutor(self._calls, task_defaults, init)

    def register_handler(self, name: str, handler: str) -> None:
        """Add the task type ``name``, run by ``handler`` (``"module:function"``), from now on:
        `submit_task`, ``ctx.submit``, the control socket and ``orch submit`` know it.

        It also lets every type whose worker initializer kept failing try again.

        Raises:
            ValueError: a malformed name or path, the reserved ``call``, or a name already taken.
        """
        self._admission.register(name, handler)
        supervisor = self._supervisor
        if supervisor is not None:
            with contextlib.suppress(OrchestratorClosedError):
                supervisor.post(supervisor.init_guard.reset)

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
        return self._readings.workers()

    def snapshot(self) -> dict[str, Any]:
        """Everything ``orch status --json`` shows of this orchestrator, as one JSON-ready dict.

        Keys: ``name``, ``pid``, ``uptime_s``, ``tasks_per_s`` (last minute), ``status`` (the
        fields of `get_status`), ``workers`` (those of `get_workers`, with ``cpu_percent`` since
        the previous snapshot and the current task's ``progress``), ``schedules`` and
        ``dask_workers``, and ``metrics_url`` (None without ``metrics_port``). For hosts that
        render their own view ("what are you doing?").
        """
        return self._readings.snapshot(self._state, self.metrics_url)

    def get_status(self) -> OrchestratorStatus:
        """A snapshot of the pool, the queue and the task counts."""
        return self._readings.status(self._state)

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
        self._topics.publish(topic, data)

    def subscribe(self, topic: str, callback: Callable[[Message], object]) -> Callable[[], None]:
        """Call ``callback(Message)`` on the event thread for each message published on ``topic``
        from now on; returns a function that unsubscribes. The subscription buffers at most
        ``max_pending_messages`` undelivered messages, dropping the oldest (``Message.dropped``).
        """
        return self._topics.subscribe(topic, callback)

    def _journal_now(self) -> Journal | None:
        return self._assembly.journal

    @property
    def _state(self) -> State:
        return self._assembly.state

    @property
    def _supervisor(self) -> Supervisor | None:
        """Set once, when started; read without a lock from any thread."""
        return self._assembly.supervisor

    def _running_supervisor(self) -> Supervisor:
        if self._supervisor is None:
            self._ensure_running()
        assert self._supervisor is not None
        return self._supervisor
