"""`Waits`: how callers wait for results (``wait``, ``stream``, ``as_completed``), blocking or in
asyncio, written once over one notifier.

A notifier is a mailbox the supervisor's thread drops results (or wake-ups) into and a caller
takes them out of: `ThreadMailbox` blocks the caller's thread, `LoopMailbox` suspends its
coroutine. Each way of waiting is a small class of steps shared by both; the sync and async
methods only loop over those steps and take from their mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from orchestrator.durations import caller_timeout
from orchestrator.errors import OrchestratorClosedError
from orchestrator.lookup import StreamCursor, TaskLookup
from orchestrator.models import TaskResult
from orchestrator.supervisor import Supervisor, TaskRecord, add_waiter

T = TypeVar("T")


class _Empty(Exception):
    """Nothing came within the time given."""


class ThreadMailbox(Generic[T]):
    """Filled from any thread, emptied by a blocking caller."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[T] = queue.SimpleQueue()
        self.put = self._items.put

    def get(self, timeout: float | None) -> T:
        """The next item; `_Empty` after ``timeout`` seconds (None: no limit)."""
        try:
            return self._items.get(timeout=timeout)
        except queue.Empty:
            raise _Empty from None

    def clear(self) -> None:
        """Drop whatever is in the box now."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._items.get_nowait()


class LoopMailbox(Generic[T]):
    """Filled from any thread, emptied by a coroutine on the running event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue[T] = asyncio.Queue()

    def put(self, item: T) -> None:
        """Drop ``item`` in from any thread (a closed loop has nobody left to tell)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)

    async def get(self, timeout: float | None) -> T:
        """The next item; `_Empty` after ``timeout`` seconds (None: no limit)."""
        try:
            return await asyncio.wait_for(self._items.get(), timeout)
        except TimeoutError:
            raise _Empty from None

    def clear(self) -> None:
        """Drop whatever is in the box now."""
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                self._items.get_nowait()


class _Deadline:
    """A caller's timeout for a whole wait, as the time left at each step."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        limit = caller_timeout(timeout)
        self._end = None if limit is None else time.monotonic() + limit

    def left(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - time.monotonic())


class _Completion:
    """The steps of ``as_completed``: results arrive in the mailbox as tasks become final."""

    def __init__(self, waits: Waits, task_ids: Iterable[str], timeout: float | None) -> None:
        self.deadline = _Deadline(timeout)
        self.records = [waits.lookup.find(task_id) for task_id in dict.fromkeys(task_ids)]

    def not_final(self, done: int) -> TimeoutError:
        total = len(self.records)
        return TimeoutError(f"{total - done} of {total} tasks not final after {self.deadline.timeout} s")


class _Stream:
    """The steps of ``stream``: partials kept so far, then live ones, then the final result; the
    supervisor drops a wake-up in the mailbox whenever the task has something new."""

    def __init__(self, waits: Waits, task_id: str, wake: Callable[[None], None]) -> None:
        self.record = waits.lookup.find(task_id)
        self._supervisor = waits.supervisor()
        self._wake = lambda: wake(None)
        self._supervisor.call(lambda: self._supervisor.results.watch(self.record, self._wake))
        self._cursor = StreamCursor(self.record)

    def take(self) -> tuple[list[Any], TaskResult | None]:
        """What is new since the last take: partials' data, and the final result if it came."""
        items, result = self._cursor.take()
        return [data for _, data in items], result

    def close(self) -> None:
        supervisor, record, wake = self._supervisor, self.record, self._wake
        with contextlib.suppress(OrchestratorClosedError):  # it has exited: nothing is watched
            supervisor.post(lambda: supervisor.results.stop_watching(record, wake))


class Waits:
    """Blocking and asyncio waits on tasks' results, for the facade."""

    def __init__(self, lookup: TaskLookup, supervisor: Callable[[], Supervisor]) -> None:
        self.lookup = lookup
        self.supervisor = supervisor

    def wait(self, task_id: str, timeout: float | None) -> TaskResult:
        """Block until the task is final; its result."""
        record = self.lookup.find(task_id)
        if record.result is not None:
            return record.result
        mailbox: ThreadMailbox[TaskResult] = ThreadMailbox()
        try:
            return _ask_by_mail(record, mailbox) or mailbox.get(caller_timeout(timeout))
        except _Empty:
            raise _not_final(record, timeout) from None

    async def wait_async(self, task_id: str, timeout: float | None) -> TaskResult:
        """Await the task's result without blocking the event loop."""
        record = self.lookup.find(task_id)
        if record.result is not None:
            return record.result
        mailbox: LoopMailbox[TaskResult] = LoopMailbox()
        try:
            return _ask_by_mail(record, mailbox) or await mailbox.get(caller_timeout(timeout))
        except _Empty:
            raise _not_final(record, timeout) from None

    def stream(self, task_id: str) -> Iterator[Any]:
        """Each partial result, then the final `TaskResult`."""
        mailbox: ThreadMailbox[None] = ThreadMailbox()
        stream = _Stream(self, task_id, mailbox.put)
        try:
            while True:
                items, result = stream.take()
                yield from items
                if result is not None:
                    yield result
                    return
                mailbox.get(None)
                mailbox.clear()  # one look takes in every change so far
        finally:
            stream.close()

    async def stream_async(self, task_id: str) -> AsyncIterator[Any]:
        """`stream` for asyncio."""
        mailbox: LoopMailbox[None] = LoopMailbox()
        stream = _Stream(self, task_id, mailbox.put)
        try:
            while True:
                items, result = stream.take()
                for item in items:
                    yield item
                if result is not None:
                    yield result
                    return
                await mailbox.get(None)
                mailbox.clear()  # one look takes in every change so far
        finally:
            stream.close()

    def as_completed(self, task_ids: Iterable[str], timeout: float | None) -> Iterator[TaskResult]:
        """The tasks' results in the order they became final."""
        completion = _Completion(self, task_ids, timeout)
        mailbox: ThreadMailbox[TaskResult] = ThreadMailbox()
        self.notify_when_final(completion.records, mailbox.put)
        for done in range(len(completion.records)):
            try:
                yield mailbox.get(completion.deadline.left())
            except _Empty:
                raise completion.not_final(done) from None

    async def as_completed_async(
        self, task_ids: Iterable[str], timeout: float | None
    ) -> AsyncIterator[TaskResult]:
        """`as_completed` for asyncio."""
        completion = _Completion(self, task_ids, timeout)
        mailbox: LoopMailbox[TaskResult] = LoopMailbox()
        self.notify_when_final(completion.records, mailbox.put)
        for done in range(len(completion.records)):
            try:
                yield await mailbox.get(completion.deadline.left())
            except _Empty:
                raise completion.not_final(done) from None

    def notify_when_final(self, records: list[TaskRecord], notify: Callable[[TaskResult], None]) -> None:
        """Call ``notify`` (on the supervisor's thread) with each task's result once it is final,
        exactly once each, those final already included."""
        supervisor = self.supervisor()
        try:
            supervisor.post(lambda: supervisor.results.add_waiters(records, notify))
        except OrchestratorClosedError:  # it has exited: every task is final
            supervisor.results.add_waiters(records, notify)


def _not_final(record: TaskRecord, timeout: float | None) -> TimeoutError:
    return TimeoutError(f"task {record.task_id} is not final after {timeout} s (status {record.status})")


def _ask_by_mail(
    record: TaskRecord, mailbox: ThreadMailbox[TaskResult] | LoopMailbox[TaskResult]
) -> TaskResult | None:
    """Have the result mailed once the task is final; the result itself if it is final already.

    No round trip to the supervisor: it sets ``result`` before it calls the waiters, so either it
    finds this mailbox in the list or the second look here sees the result.
    """
    add_waiter(record, mailbox.put)
    return record.result
