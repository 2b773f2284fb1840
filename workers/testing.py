"""Test a handler without an orchestrator: `FakeContext` and `run_handler`.

Nothing here starts a process or a thread. A handler under test gets a `FakeContext`, which is a
`TaskContext` that records what the handler reported instead of sending it; `run_handler` runs a
handler on one and packs its config and result as a worker does, so a value that could not travel
fails here with the message the orchestrator would report. For tests that need the real thing
(workers, timeouts, crashes), the pytest plugin's ``orch`` fixture gives an orchestrator.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from workers import protocol
from workers.context import TaskContext, current_task
from workers.failures import failure
from workers.registry import resolve_handler
from workers.values import ChildResult, TaskError

__all__ = ["FakeContext", "HandlerFailed", "HandlerRun", "run_handler"]

# What a canned child answers: a value, or a function of the child's spec that returns one
# (raising makes the child fail, as its handler raising would).
ChildAnswer = Any

_NOT_HERE: Final = (
    "ctx.{call} needs a running orchestrator, and a FakeContext runs outside any worker; {hint}"
)


class HandlerFailed(Exception):
    """The attempt would have failed in a worker for a reason of the orchestrator's, not one the
    handler raised: its handler does not resolve, or a value it returns or emits cannot travel.

    ``error`` is the `TaskError` the orchestrator would report (``kind`` and ``message`` as there).
    """

    def __init__(self, error: TaskError) -> None:
        super().__init__(f"{error.kind}: {error.message}")
        self.error = error


class FakeContext(TaskContext):
    """A `TaskContext` for tests: it records what the handler does and answers what it asks.

    ``progress_reports`` holds ``(completed, total, message)`` tuples, ``partials`` what `emit`
    sent and ``published`` ``(topic, data)`` pairs, each after the msgpack round trip the host
    would see. `cancel` asks the task to stop, so `check_cancelled` raises `TaskCancelled` as in a
    worker. ``children`` answers `submit` and `wait`: a map from a task type to the data its
    tasks complete with, or to a function of the submitted spec returning that data (if it raises,
    the child fails with ``kind="exception"``); ``submitted`` lists the specs in order. Without
    ``children``, `submit`, `wait` and `subscribe` raise RuntimeError saying why.
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        *,
        deps: dict[str, Any] | None = None,
        task_id: str = "test-1",
        type: str = "test",  # noqa: A002 - the name TaskContext gives the task's type
        attempt: int = 1,
        description: str = "",
        group: str | None = None,
        children: Mapping[str, ChildAnswer] | None = None,
    ) -> None:
        config, deps = dict(config or {}), dict(deps or {})
        super().__init__(task_id, type, description, config, deps, attempt, self._record, group=group)
        self.progress_reports: list[tuple[float, float | None, str]] = []
        self.partials: list[Any] = []
        self.published: list[tuple[str, Any]] = []
        self.submitted: list[dict[str, Any]] = []
        self._children = children
        self._answers: dict[str, ChildResult] = {}
        self._ids = itertools.count(1)

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the task to stop, as the host's cancel (``"cancelled"``) or timeout (``"timeout"``)."""
        self.request_stop(reason)

    def _record(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.TaskProgress):
            self.progress_reports.append((message.completed, message.total, message.message))
        elif isinstance(message, protocol.TaskPartial):
            self.partials.append(protocol.unpack_payload(message.data))

    def publish(self, topic: str, data: Any) -> None:
        """Record ``(topic, data)``; TypeError (nothing recorded) if ``data`` could not travel."""
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"a topic is a non-empty string, not {topic!r}")
        self.published.append((topic, protocol.unpack_payload(_pack(data, "data"))))

    def subscribe(self, topic: str) -> Any:
        """Not available outside a worker: raises RuntimeError."""
        raise RuntimeError(_NOT_HERE.format(call="subscribe", hint="test it with the orch fixture"))

    subscribe_async = subscribe

    def submit(self, spec: dict[str, Any], *, detached: bool = False) -> str:
        """Record ``spec`` and answer it from ``children``; the child's made-up id."""
        if not isinstance(spec, dict):
            raise TypeError(f"a task spec is a dict, not {type(spec).__name__}")
        _pack(spec, "spec")
        answers = self._canned("submit")
        task_type = str(spec.get("type"))
        if task_type not in answers:
            raise KeyError(f"FakeContext(children=...) has no answer for a task of type {task_type!r}")
        child_id = f"{self.task_id}.child-{next(self._ids)}"
        self.submitted.append(spec)
        self._answers[child_id] = _answer(child_id, self.task_id, answers[task_type], spec)
        return child_id

    def wait(self, task_ids: list[str], timeout: float | None = None) -> list[ChildResult]:
        """The canned results of children this context made, in the order given."""
        self._canned("wait")
        if isinstance(task_ids, str):
            raise TypeError(f"task_ids must be a list of task id strings, not {task_ids!r}")
        unknown = [task_id for task_id in task_ids if task_id not in self._answers]
        if unknown:
            raise KeyError(f"no task {unknown[0]!r} was submitted from this context")
        return [self._answers[task_id] for task_id in task_ids]

    def as_completed(self, task_ids: list[str], timeout: float | None = None) -> Iterator[ChildResult]:
        """The canned results, in the order given (each is final already)."""
        return iter(self.wait(list(dict.fromkeys(task_ids)), timeout))

    async def wait_async(self, task_ids: list[str], timeout: float | None = None) -> list[ChildResult]:
        """`wait` for async handlers."""
        return self.wait(task_ids, timeout)

    async def as_completed_async(
        self, task_ids: list[str], timeout: float | None = None
    ) -> AsyncIterator[ChildResult]:
        """`as_completed` for async handlers."""
        for result in self.as_completed(task_ids, timeout):
            yield result

    def _canned(self, call: str) -> Mapping[str, ChildAnswer]:
        if self._children is None:
            hint = "give FakeContext(children={task_type: data or function of the spec}) to answer it"
            raise RuntimeError(_NOT_HERE.format(call=call, hint=hint))
        return self._children

    def __repr__(self) -> str:
        return f"<FakeContext {self.task_id} type={self.type!r} attempt={self.attempt}>"


@dataclass(frozen=True)
class HandlerRun:
    """What `run_handler` saw: the handler's ``result`` as the host would receive it, and the
    `FakeContext` it ran with (its progress reports, partials, publishes and submits)."""

    result: Any
    context: FakeContext


def run_handler(
    handler: Callable[..., Any] | str,
    config: dict[str, Any] | None = None,
    **context_fields: Any,
) -> HandlerRun:
    """Run ``handler`` (a callable or ``"module:function"``, sync or async) once on a `FakeContext`.

    ``config`` and the result travel through the msgpack packing a worker uses; a handler's own
    exception (`TaskCancelled` included) propagates unchanged. ``context_fields`` are
    `FakeContext` keywords (``deps``, ``task_id``, ``type``, ``children``...); ``context=`` passes
    a context of the test's own instead.

    Raises:
        HandlerFailed: what the orchestrator would report instead of running the handler or taking
            its result: the path does not resolve (kind ``exception``, the worker's message) or
            the result cannot travel (kind ``serialization``).
        ValueError: ``config`` cannot travel (the message the orchestrator gives at submit).
    """
    ctx: FakeContext = context_fields.pop("context", None) or FakeContext(**context_fields)
    if config is not None:
        try:
            ctx.config = protocol.unpack_payload(protocol.pack_payload(config))
        except protocol.PayloadError as exc:
            raise ValueError(f"config is {exc}") from exc
    function = _resolve(handler, ctx.task_id)
    if inspect.iscoroutinefunction(function):
        with current_task(ctx, process_wide=False):
            result = asyncio.run(function(ctx))
    else:
        with current_task(ctx, process_wide=True):
            result = function(ctx)
    try:
        return HandlerRun(protocol.unpack_payload(protocol.pack_payload(result)), ctx)
    except protocol.PayloadError as exc:
        reported = failure(ctx.task_id, "serialization", exc, prefix="the handler's result is ")
        raise HandlerFailed(_error_of(reported)) from exc


def _resolve(handler: Callable[..., Any] | str, task_id: str) -> Callable[..., Any]:
    if not isinstance(handler, str):
        if not callable(handler):
            raise TypeError(f"a handler is a callable or 'module:function', not {type(handler).__name__}")
        return handler
    try:
        return resolve_handler(handler)
    except Exception as exc:
        raise HandlerFailed(
            _error_of(failure(task_id, "exception", exc, prefix=f"handler {handler!r}: "))
        ) from exc


def _error_of(reported: protocol.TaskFailed) -> TaskError:
    return TaskError(reported.kind, reported.message, reported.traceback, reported.exception_type)


def _pack(value: Any, where: str = "data") -> bytes:
    """``value`` packed as a worker packs it; TypeError naming what cannot travel."""
    try:
        return protocol.pack_payload(value)
    except protocol.PayloadError as exc:
        raise TypeError(f"{where} is {exc}") from None


def _answer(child_id: str, parent: str, answer: ChildAnswer, spec: dict[str, Any]) -> ChildResult:
    """The final result a canned child reports."""
    try:
        data = answer(spec) if callable(answer) else answer
        data = protocol.unpack_payload(_pack(data))
    except Exception as exc:  # noqa: BLE001 - the child fails, as its handler raising would
        reported = failure(child_id, "exception", exc)
        return _child(child_id, parent, None, _error_of(reported))
    return _child(child_id, parent, data, None)


def _child(child_id: str, parent: str, data: Any, error: TaskError | None) -> ChildResult:
    return ChildResult(
        task_id=child_id,
        status="completed" if error is None else "failed",
        success=error is None,
        data=data,
        error=error,
        attempts=1,
        worker_pid=None,
        started_at=None,
        finished_at=None,
        duration_s=0.0,
        parent=parent,
    )
