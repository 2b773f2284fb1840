"""`Conversation`: tasks that talk. Publish and subscribe, sub-tasks, waits on other tasks, and the
slot a task lends to other work while it waits."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from orchestrator.backends.base import WorkerHandle
from orchestrator.config import OrchestratorConfig
from orchestrator.errors import OrchestratorError
from orchestrator.events import EventBus
from orchestrator.logs import task_extra
from orchestrator.messaging import Broker
from orchestrator.models import TaskResult, TaskStatus, result_wire
from orchestrator.supervisor.capacity import Capacity
from orchestrator.supervisor.fleet import Fleet
from orchestrator.supervisor.record import TaskRecord, active_record, add_waiter, prefetched
from workers import protocol
from workers.shm import BlockReader, BlockWriter

logger = logging.getLogger(__name__)

_EPOCH: Final = datetime.fromtimestamp(0, tz=UTC)

# What a handler's call may fail with, sent back to it as the call's error.
_CALL_ERRORS: Final = (protocol.PayloadError, ValueError, KeyError, TypeError)

AdmitChild = Callable[[dict[str, Any], TaskRecord, bool], TaskRecord]


@dataclass(eq=False)
class _ChildWait:
    """A task blocked in ``ctx.wait`` or ``ctx.as_completed`` (``any_of``) on other tasks."""

    worker: WorkerHandle
    call_id: int
    ids: list[str]
    any_of: bool
    answered: bool = False


class Conversation:
    """Answers what running tasks ask of the host, and owns the waits they are blocked in."""

    def __init__(
        self,
        config: OrchestratorConfig,
        tasks: dict[str, TaskRecord],
        bus: EventBus,
        capacity: Capacity,
        fleet: Fleet,
        blocks: BlockWriter | None,
        block_reader: BlockReader,
        admit_child: AdmitChild | None,
        accept: Callable[[TaskRecord], None],
    ) -> None:
        self._tasks = tasks
        self._capacity = capacity
        self._fleet = fleet
        self._block_reader = block_reader
        self._admit_child = admit_child
        self._accept = accept
        self.broker = Broker(bus, blocks, config.max_pending_messages)
        self._child_waits: dict[str, list[_ChildWait]] = {}
        self._calls: dict[str, Callable[[WorkerHandle, int, TaskRecord, Any], None]] = {
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "submit": self._submit_child,
            "wait": self._wait_for_children,
            "forget": self._forget_wait,
        }

    def publish(self, topic: str, data: Any) -> None:
        """The host publishes (``data`` already round-tripped through msgpack)."""
        self.broker.publish(topic, data, None)

    def on_publish(self, worker: WorkerHandle, msg: protocol.Publish) -> None:
        """A task published: its subscribers hear of it (a late task's message is dropped)."""
        record = active_record(self._tasks, worker, msg.task_id)
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

    def on_received(self, worker: WorkerHandle, msg: protocol.Received) -> None:
        """A task took a message it was sent: the broker may send the next."""
        self.broker.received(worker, msg.sub_id, msg.message_id)

    def on_call(self, worker: WorkerHandle, msg: protocol.Call) -> None:
        """A task asks the host for something (``ctx.submit``, ``ctx.wait``, ``ctx.subscribe``...)."""
        record = active_record(self._tasks, worker, msg.task_id)
        if record is None:
            return  # the task ended meanwhile; its worker stopped waiting for an answer
        try:
            args = protocol.unpack_payload(msg.args)
            call = self._calls.get(msg.op)
            if call is None:
                raise ValueError(f"unknown request {msg.op!r}")
            call(worker, msg.call_id, record, args)
        except _CALL_ERRORS as exc:
            self._reply(worker, msg.call_id, error=exc)

    def _subscribe(self, worker: WorkerHandle, call_id: int, record: TaskRecord, args: Any) -> None:
        sub_id, topic = args
        self.broker.subscribe_worker(worker, record.task_id, sub_id, topic)
        self._reply(worker, call_id, self.broker.limit)

    def _unsubscribe(self, worker: WorkerHandle, call_id: int, record: TaskRecord, args: Any) -> None:
        self.broker.unsubscribe_worker(record.task_id, args)

    def _submit_child(self, worker: WorkerHandle, call_id: int, parent: TaskRecord, args: Any) -> None:
        spec, detached = args["spec"], args["detached"]
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
        self._accept(child)
        self._reply(worker, call_id, child.task_id)

    def _wait_for_children(self, worker: WorkerHandle, call_id: int, waiter: TaskRecord, args: Any) -> None:
        ids: list[str] = args["ids"]
        unknown = [task_id for task_id in ids if task_id not in self._tasks]
        if unknown:
            raise KeyError(f"unknown task id {unknown[0]!r} (never issued, or its result was evicted)")
        wait = _ChildWait(worker, call_id, ids, args["any"])
        if not self._answer_if_ready(wait):
            self._child_waits.setdefault(waiter.task_id, []).append(wait)
            for task_id in ids:
                add_waiter(self._tasks[task_id], functools.partial(self._on_child_final, wait))

    def _forget_wait(self, worker: WorkerHandle, call_id: int, waiter: TaskRecord, args: Any) -> None:
        waits = self._child_waits.get(waiter.task_id, [])
        self._child_waits[waiter.task_id] = [w for w in waits if w.call_id != args]

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
        self._reply(wait.worker, wait.call_id, [result_wire(r.result) for r in final if r.result is not None])
        return True

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

    def end_attempt(self, task_id: str) -> None:
        """The task's attempt is over: its subscriptions close and its waits go unanswered."""
        self.broker.end_task(task_id)
        for wait in self._child_waits.pop(task_id, ()):
            wait.answered = True

    # ----------------------------------------------------------------- lent slots

    def on_waiting(self, worker: WorkerHandle, msg: protocol.Waiting) -> list[TaskRecord]:
        """A task blocks in a wait (its slot is lent to other work, within max_waiting_tasks) or
        goes on (it takes the slot back). Returns the tasks prefetched behind it on a worker that
        now runs nothing else: they must be taken back, to run elsewhere."""
        record = active_record(self._tasks, worker, msg.task_id)
        if record is None or record.status is not TaskStatus.RUNNING:
            return []
        if not msg.waiting:
            if record.lent:
                self.reclaim(record)
            return []
        if record.lent or not self._capacity.lend(record.spec.type):
            return []  # beyond max_waiting_tasks a waiting task keeps its slot
        record.lent = True
        worker.lent += 1
        if worker.lent == len(worker.tasks):
            worker.state = "waiting"
        if not worker.lent_out:
            return []
        return [queued for queued in self._fleet.open_records(worker) if prefetched(queued)]

    def reclaim(self, record: TaskRecord) -> None:
        """A waiting task goes on: it takes its slot back, even above the limits (they regrow)."""
        worker = record.worker
        assert worker is not None
        record.lent = False
        worker.lent -= 1
        self._capacity.take_back(record.spec.type)
        if worker.state == "waiting":
            worker.state = "busy"
