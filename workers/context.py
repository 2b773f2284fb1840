"""What a handler sees: `TaskContext`, its task's inputs and its ways to report and talk."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from workers import protocol
from workers.errors import stop_exception
from workers.messaging import AsyncSubscription, Link, Subscription, _refuse_in_event_loop
from workers.values import ChildResult


def _check_amount(name: str, value: Any) -> None:
    """A progress figure as the host accepts it: a finite number >= 0."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"progress: {name} must be a number, not {type(value).__name__}")
    if not 0 <= value < math.inf:
        raise ValueError(f"progress: {name} must be a finite number >= 0, not {value!r}")


def _ids(task_ids: list[str]) -> list[str]:
    if isinstance(task_ids, str) or not all(isinstance(task_id, str) for task_id in task_ids):
        raise TypeError(f"task_ids must be a list of task id strings, not {task_ids!r}")
    return list(task_ids)


class TaskContext:
    """The handler's view of its task: inputs, progress reporting, partial results, cancellation."""

    __slots__ = (
        "_link",
        "_pack",
        "_send",
        "_stop_reason",
        "attempt",
        "config",
        "deps",
        "description",
        "group",
        "task_id",
        "type",
    )

    def __init__(
        self,
        task_id: str,
        task_type: str,
        description: str,
        config: dict[str, Any],
        deps: dict[str, Any],
        attempt: int,
        send: Callable[[protocol.Message], None],
        pack: Callable[[Any], bytes] = protocol.pack_payload,
        group: str | None = None,
        link: Link | None = None,
    ) -> None:
        self.task_id = task_id
        self.group = group
        self._link = link
        self.type = task_type
        self.description = description
        self.config = config
        self.deps = deps
        self.attempt = attempt
        self._send = send
        self._pack = pack
        self._stop_reason: str | None = None

    def progress(self, completed: float, total: float | None = None, message: str = "") -> None:
        """Report progress: ``completed`` units of ``total`` (None when unknown), with a message."""
        _check_amount("completed", completed)
        if total is not None:
            _check_amount("total", total)
        self._send(protocol.TaskProgress(self.task_id, completed, total, str(message)))

    def emit(self, data: Any) -> None:
        """Stream a partial result to the host (event ``task_partial``); raise if not msgpack-able."""
        self._send(protocol.TaskPartial(self.task_id, self._pack(data)))

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger for this task (``task.<type>``). Any logger works in a handler: each record
        at ``worker_log_level`` or above reaches the host's ``orchestrator.task`` logger with the
        task's id; this one also carries ``task_id`` and ``task_type`` inside the worker."""
        extra = {"task_id": self.task_id, "task_type": self.type}
        return logging.LoggerAdapter(logging.getLogger(f"task.{self.type}"), extra)

    @property
    def cancelled(self) -> bool:
        """True once the host asked this task to stop (cancel or timeout)."""
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        """``"cancelled"`` or ``"timeout"`` once a stop was requested, else None."""
        return self._stop_reason

    def request_stop(self, reason: str) -> None:
        """Mark the task as asked to stop; called by the worker runtime when the host asks."""
        self._stop_reason = reason

    def check_cancelled(self) -> None:
        """Raise `TaskCancelled` (or `TaskTimeout`) if a stop was requested; else return."""
        if self._stop_reason is not None:
            raise stop_exception(self._stop_reason)

    # ----------------------------------------------------------------- topics

    def publish(self, topic: str, data: Any) -> None:
        """Publish ``data`` on ``topic`` to every subscription open when the host handles it.

        This task's publishes are handled in the order made, and all before its result is final.
        Raises `TypeError` (nothing sent) when ``data`` is not msgpack-serialisable.
        """
        self._linked().publish(self.task_id, topic, data)

    def subscribe(self, topic: str) -> Subscription:
        """Receive what is published on ``topic`` from now until `close` or the end of this task."""
        return Subscription(self._linked(), self.task_id, topic)

    def subscribe_async(self, topic: str) -> AsyncSubscription:
        """`subscribe` for async handlers: ``await sub.receive()``, ``async for msg in sub``."""
        return AsyncSubscription(self._linked(), self.task_id, topic)

    # ----------------------------------------------------------------- sub-tasks

    def submit(self, spec: dict[str, Any], *, detached: bool = False) -> str:
        """Submit a task from this one and return its id; it runs by its own spec's priority.

        An attached child (the default) is cancelled if this task's attempt ends in anything but
        success; a ``detached`` one lives on regardless.

        Raises:
            UnknownTaskTypeError: no handler for the spec's type.
            ValueError: the spec does not validate (the message names the field).
            QueueFullError: the host's queue is full; nothing was queued.
            TypeError: the spec is not msgpack-serialisable.
        """
        if not isinstance(spec, dict):
            raise TypeError(f"a task spec is a dict, not {type(spec).__name__}")
        try:
            protocol.check_payload(spec, "spec")
        except protocol.PayloadError as exc:
            raise TypeError(str(exc)) from None
        task_id: str = self._linked().call(
            self.task_id, "submit", {"spec": spec, "detached": bool(detached)}, waits=False
        )
        return task_id

    def wait(self, task_ids: list[str], timeout: float | None = None) -> list[ChildResult]:
        """One result per id, in the order given, once all are final.

        While it waits, this task lends its worker slot to other work. Raises `TimeoutError` if
        they are not all final within ``timeout`` (they go on) and `KeyError` for an unknown id.
        """
        _refuse_in_event_loop("wait", "await wait_async")
        ids = _ids(task_ids)
        found = self._linked().call(self.task_id, "wait", {"ids": ids, "any": False}, timeout)
        return [ChildResult.from_wire(fields) for fields in found]

    def as_completed(self, task_ids: list[str], timeout: float | None = None) -> Iterator[ChildResult]:
        """The results as the tasks end, in completion order; ``timeout`` covers the whole run."""
        _refuse_in_event_loop("as_completed", "as_completed_async")
        remaining = list(dict.fromkeys(_ids(task_ids)))
        deadline = None if timeout is None else time.monotonic() + timeout
        while remaining:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            found = self._linked().call(self.task_id, "wait", {"ids": remaining, "any": True}, left)
            for fields in found:
                remaining.remove(fields["task_id"])
                yield ChildResult.from_wire(fields)

    async def wait_async(self, task_ids: list[str], timeout: float | None = None) -> list[ChildResult]:
        """`wait` for async handlers."""
        ids = _ids(task_ids)
        found = await self._linked().call_async(self.task_id, "wait", {"ids": ids, "any": False}, timeout)
        return [ChildResult.from_wire(fields) for fields in found]

    async def as_completed_async(
        self, task_ids: list[str], timeout: float | None = None
    ) -> AsyncIterator[ChildResult]:
        """`as_completed` for async handlers: ``async for result in ctx.as_completed_async(ids)``."""
        remaining = list(dict.fromkeys(_ids(task_ids)))
        deadline = None if timeout is None else time.monotonic() + timeout
        while remaining:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            args = {"ids": remaining, "any": True}
            for fields in await self._linked().call_async(self.task_id, "wait", args, left):
                remaining.remove(fields["task_id"])
                yield ChildResult.from_wire(fields)

    def _linked(self) -> Link:
        if self._link is None:
            raise RuntimeError("this context is not connected to an orchestrator")
        return self._link

    def __repr__(self) -> str:
        return f"<TaskContext {self.task_id} type={self.type!r} attempt={self.attempt}>"


# The task an asyncio task of an async worker runs (each asyncio task has its own copy).
_task_of_coroutine: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "orchestrator_task", default=None
)
# The one task a sync worker runs, seen from every thread of the process (a thread the function
# started included: threads do not inherit context variables).
_task_of_process: TaskContext | None = None


def current_context() -> TaskContext | None:
    """The context of the task whose code calls this, or None outside a task.

    For code that is not handed a context: a function run by an executor, or a library a handler
    calls. It gives ``progress``, ``emit``, ``cancelled`` and ``check_cancelled``.
    """
    return _task_of_coroutine.get() or _task_of_process


@contextlib.contextmanager
def current_task(ctx: TaskContext, process_wide: bool) -> Iterator[None]:
    """Make ``ctx`` what `current_context` returns while the block runs: for the whole process
    (a sync worker) or for the running asyncio task only (an async worker)."""
    global _task_of_process
    if process_wide:
        _task_of_process = ctx
        try:
            yield
        finally:
            _task_of_process = None
        return
    token = _task_of_coroutine.set(ctx)
    try:
        yield
    finally:
        _task_of_coroutine.reset(token)
