"""`Dispatcher`: ready tasks to workers. Choosing the worker, building the RunTask, sending tasks
ahead (prefetch) and asking them back (revoke)."""

from __future__ import annotations

from typing import Any, Final

from orchestrator.backends.base import ProcessPool, WorkerHandle
from orchestrator.config import OrchestratorConfig
from orchestrator.models import TaskStatus
from orchestrator.plans import PlanError, substitute
from orchestrator.scheduler import QueueSlots, Timers
from orchestrator.supervisor.capacity import Capacity
from orchestrator.supervisor.fleet import Fleet
from orchestrator.supervisor.init_guard import InitGuard
from orchestrator.supervisor.lifecycle import Lifecycle
from orchestrator.supervisor.line import Line
from orchestrator.supervisor.pace import MAX_DEPTH, Pace
from orchestrator.supervisor.record import TaskRecord, active_record
from orchestrator.trust import Refused, vetted_config
from workers import protocol
from workers.shm import BlockWriter

_EMPTY_DEPS: Final = protocol.pack_payload(None)
# Queued configs a worker may hold, at most (half a pipe's default 64 KiB), and what a RunTask
# adds to its config (ids, names, the handler's path).
_PREFETCH_BYTES: Final = 32 * 1024
_RUN_TASK_BYTES: Final = 200


class Dispatcher:
    """Sends ready tasks, best first, to workers that may run them; owns whether any worker
    prefetches (then an idle worker, or a better task, may take a task back from one)."""

    def __init__(
        self,
        config: OrchestratorConfig,
        tasks: dict[str, TaskRecord],
        queue_slots: QueueSlots,
        pool: ProcessPool,
        blocks: BlockWriter | None,
        *,
        line: Line,
        fleet: Fleet,
        capacity: Capacity,
        lifecycle: Lifecycle,
        init_guard: InitGuard,
        pace: Pace,
    ) -> None:
        self._config = config
        self._pace = pace
        self._init_guard = init_guard
        self._tasks = tasks
        self._queue_slots = queue_slots
        self._pool = pool
        self._blocks = blocks
        self._line = line
        self._fleet = fleet
        self._capacity = capacity
        self._lifecycle = lifecycle
        self._prefetching = False

    def dispatch(self) -> None:
        """Send every ready task that has a worker and room in its type's cap, best first; the
        tasks that go to one worker leave together, in one write."""
        if not self._line:
            if self._prefetching:
                self._revoke_prefetched()
            return
        outbox: dict[WorkerHandle, list[protocol.RunTask]] = {}
        try:
            stalled = self._assign_ready(outbox)
        finally:
            for worker, tasks in outbox.items():
                worker.send_tasks(tasks)
        if stalled:
            return
        if not self._line:
            self._revoke_prefetched()
        self._fleet.retire_unneeded()

    def _assign_ready(self, outbox: dict[WorkerHandle, list[protocol.RunTask]]) -> bool:
        """Give each ready task a worker, best first, until the line is empty (False) or what is
        left may not run now (True)."""
        blocked: set[str] = set()

        def may_run(task_type: str) -> bool:
            if task_type in blocked:
                return False
            return self._capacity.has_room(task_type) or self._init_guard.broken(task_type) is not None

        while self._line:
            best = self._line.peek_best(may_run)
            if best is None:
                return True
            task_type, task_id = best
            broken = self._init_guard.broken(task_type)
            if broken is not None:  # no worker of its type can start: it fails without one
                self._lifecycle.fail(self._line.pop(task_type), "worker_init", broken)
                continue
            worker = self._worker_for(self._tasks[task_id])
            if worker is None:
                blocked.add(task_type)
                self._revoke_outranked(self._tasks[task_id])
                continue
            record = self._line.pop(task_type)
            message = self._run_message(record)
            if message is not None:
                self._assign(record, worker, message, outbox)
        return False

    def on_started(self, worker: WorkerHandle, msg: protocol.TaskStarted) -> None:
        """A task started: the first start also tells whether the worker runs tasks side by side."""
        worker.concurrent = msg.concurrent
        if msg.concurrent:
            worker.slots = self._config.worker_concurrency.get(worker.type or "", 1)
        else:
            prefetch = self._config.prefetch
            worker.prefetch = MAX_DEPTH if prefetch == "auto" else prefetch
            self._prefetching = prefetch != 0
        record = active_record(self._tasks, worker, msg.task_id)
        if record is not None and record.status is TaskStatus.QUEUED:
            self._lifecycle.begin(worker, record)

    def _run_message(self, record: TaskRecord) -> protocol.RunTask | None:
        """The RunTask for this attempt: dependencies' results, references substituted.

        None when a reference cannot be resolved (the task has then failed).
        """
        spec = record.spec
        config, deps = record.packed_config, _EMPTY_DEPS
        substituted: dict[str, Any] | None = None
        if record.dep_ids:
            results, errors = self._dependency_outcomes(record)
            deps = protocol.pack_payload([results, errors], self._blocks, _blocks_of(record))
            if record.plan_refs:
                try:
                    substituted = _substituted_config(record, results, errors)
                    config = protocol.pack_payload(substituted, self._blocks, _blocks_of(record))
                except (PlanError, protocol.PayloadError) as exc:
                    self._lifecycle.fail(record, "dependency_failed", str(exc))
                    return None
        try:
            vetted = vetted_config(
                record.handler, spec.config if substituted is None else substituted, self._config
            )
            if vetted is not None:
                config = protocol.pack_payload(vetted, self._blocks, _blocks_of(record))
        except Refused as exc:
            self._lifecycle.fail(record, "exception", str(exc), exception_type="PermissionError")
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
            init=self._config.worker_init_of(spec.type),
        )

    def _dependency_outcomes(self, record: TaskRecord) -> tuple[dict[str, Any], dict[str, Any]]:
        """The data of each dependency that succeeded, and the error of each that did not."""
        results: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for dep_id in record.dep_ids:
            outcome = self._tasks[dep_id].result
            assert outcome is not None
            if outcome.success:
                results[dep_id] = outcome.data
            else:
                errors[dep_id] = outcome.error.model_dump() if outcome.error else {}
        return results, errors

    def _worker_for(self, record: TaskRecord) -> WorkerHandle | None:
        """Where the task goes: a worker of its type that starts it at once (the most recently
        active), an untyped one, a new one, then the least loaded one of its type that can hold it
        queued (prefetch: short tasks first; others only when no idle worker of another type can
        retire to make room); else none."""
        # One pass over the pool, on every dispatch: it runs per task.
        pool = self._pool
        task_type = record.spec.type
        depth = self._prefetch_depth(record)
        limit = self._config.max_tasks_per_worker
        typed = untyped = ahead = None
        working = 0
        for w in self._fleet.workers.values():
            working += not w.lent_out
            if limit is not None and w.tasks_completed + len(w.tasks) >= limit:
                continue  # it holds the last tasks it may run before it is recycled
            if w.type == task_type:
                if (typed is None or w.last_active > typed.last_active) and w.has_room():
                    typed = w if pool.may_run(w, task_type) else typed
                if (ahead is None or len(w.tasks) < len(ahead.tasks)) and w.can_prefetch(depth):
                    ahead = w
            elif w.type is None and (untyped is None or w.last_active > untyped.last_active) and w.has_room():
                untyped = w if pool.may_run(w, task_type) else untyped
        if typed is not None or untyped is not None:
            return typed or untyped
        if working < self._config.max_workers:
            spawned = self._fleet.spawn(task_type)
            if spawned is not None:
                return spawned
        if ahead is not None and depth > 1:
            return ahead  # a short task starts sooner queued behind one than on a new worker
        # A task that may run long (or of unknown length) is not queued behind a running one
        # while a worker of another type idles: that one retires, and a new one takes the task.
        return None if self._fleet.make_room() else ahead

    def _prefetch_depth(self, record: TaskRecord) -> int:
        """How many tasks like this one a busy worker may hold queued: the configured number, or
        what the type's pace calls for; either way no more than `_PREFETCH_BYTES` of configs (a
        larger one waits for a free worker), since a worker reads its pipe only between tasks and
        a full pipe would block the supervisor's write until the worker's running task ended."""
        prefetch = self._config.prefetch
        depth = self._pace.depth(record.spec.type) if prefetch == "auto" else prefetch
        return min(depth, _PREFETCH_BYTES // (len(record.packed_config) + _RUN_TASK_BYTES))

    def _assign(
        self,
        record: TaskRecord,
        worker: WorkerHandle,
        msg: protocol.RunTask,
        outbox: dict[WorkerHandle, list[protocol.RunTask]],
    ) -> None:
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
            outbox.setdefault(worker, []).append(msg)
            if len(worker.tasks) == 1:
                self._lifecycle.start_head(worker)

    # ----------------------------------------------------------------- taking tasks back

    def _revoke_prefetched(self) -> None:
        """An idle worker must not watch a task wait behind a long one elsewhere: ask for it back."""
        workers = self._fleet.workers.values()
        idle = [w for w in workers if w.state == "idle" and w.exit_reason is None]
        for worker in idle:
            for other in workers:
                if other is worker or (worker.type is not None and other.type != worker.type):
                    continue
                record = next(iter(self._fleet.held_behind(other)), None)
                if record is not None:
                    self.revoke(record)
                    break

    def _revoke_outranked(self, waiting: TaskRecord) -> None:
        """A task waits for a worker while one of lower priority sits prefetched: take that back."""
        if not self._prefetching:
            return
        outranked = [
            record
            for worker in self._fleet.workers.values()
            if worker.type == waiting.spec.type
            for record in self._fleet.held_behind(worker)
            if record.spec.priority < waiting.spec.priority
        ]
        if outranked:
            self.revoke(min(outranked, key=lambda r: (r.spec.priority, -r.seq)))

    def revoke(self, record: TaskRecord) -> None:
        """Ask the worker that holds a prefetched task to give it back (it answers `Revoked`, or
        `TaskStarted` when it had taken it already)."""
        worker = record.worker
        assert worker is not None
        record.revoking = True
        worker.send(protocol.Revoke(record.task_id, worker.tasks[record.task_id]))

    def on_revoked(self, worker: WorkerHandle, msg: protocol.Revoked) -> None:
        """The worker gave a task back: it goes back in line."""
        record = active_record(self._tasks, worker, msg.task_id)
        if record is not None and not record.revoking:
            # A task given back that was never asked back would run again, and again.
            raise protocol.ProtocolError(f"Revoked {msg.task_id!r}, which the host did not ask back")
        self._lifecycle.take_back(worker, msg.task_id)


def _substituted_config(record: TaskRecord, results: dict[str, Any], errors: dict[str, Any]) -> Any:
    refs = record.plan_refs or {}

    def lookup(plan_id: str) -> Any:
        task_id = refs[plan_id]
        return results[task_id] if task_id in results else errors.get(task_id)

    return substitute(record.spec.config, lookup)


def _blocks_of(record: TaskRecord) -> list[str]:
    """The list the names of the task's blocks go to (made on first use)."""
    if record.blocks is None:
        record.blocks = []
    return record.blocks
