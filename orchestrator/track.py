"""`track`: a batch's results in completion order, with a progress bar for the person watching."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from orchestrator.executor import TaskFuture
from orchestrator.models import TaskError, TaskProgressEvent, TaskResult, TaskStatus

if TYPE_CHECKING:
    from orchestrator.core import ParallelOrchestrator


def track(
    orch: ParallelOrchestrator,
    tasks: Iterable[str | TaskFuture[Any]],
    *,
    description: str = "",
    transient: bool = False,
) -> Iterator[TaskResult]:
    """Yield the tasks' results in the order they end, while a progress bar on stderr shows how
    many are done of how many, how many failed, the throughput, and the latest ``ctx.progress``
    of each running task that reports one. Without a terminal it draws nothing and still yields.

    ``tasks`` holds task ids and/or an executor's `TaskFuture`s; a future's result carries the
    function's value as ``data`` (a future whose submit failed yields a failed result with an
    empty ``task_id``). ``transient`` clears the bar once done.

    Raises:
        TaskNotFoundError: an unknown id (before anything is drawn or yielded).
        TypeError: an item that is neither an id nor a `TaskFuture`.
    """
    ids, futures, unqueued = _sort_out(tasks)
    for task_id in ids:
        orch.get_task_status(task_id)  # an unknown id raises here, before anything is drawn
    console = Console(stderr=True)
    if not console.is_terminal:
        yield from unqueued
        yield from _with_values(orch.as_completed(ids), futures)
        return
    with _Board(console, description or "tasks", len(ids) + len(unqueued), transient) as board:
        unsubscribe = orch.on("task_progress", board.progress_of(set(ids)))
        try:
            for result in (*unqueued, *_with_values(orch.as_completed(ids), futures)):
                board.finished(result)
                yield result
        finally:
            unsubscribe()


def _sort_out(
    tasks: Iterable[str | TaskFuture[Any]],
) -> tuple[list[str], dict[str, TaskFuture[Any]], list[TaskResult]]:
    """The ids to follow, the futures by id, and the results of futures that never became tasks."""
    ids: list[str] = []
    futures: dict[str, TaskFuture[Any]] = {}
    unqueued: list[TaskResult] = []
    for item in tasks:
        if isinstance(item, str):
            ids.append(item)
        elif isinstance(item, TaskFuture):
            if item.task_id is None:
                unqueued.append(_never_queued(item))
            else:
                ids.append(item.task_id)
                futures[item.task_id] = item
        else:
            raise TypeError(f"track() takes task ids and TaskFutures, not {type(item).__name__}")
    return list(dict.fromkeys(ids)), futures, unqueued


def _never_queued(future: TaskFuture[Any]) -> TaskResult:
    exc = future.exception(0) if future.done() else None
    message = f"{type(exc).__name__}: {exc}" if exc is not None else "the submit did not queue a task"
    error = TaskError(kind="serialization", message=message, exception_type=type(exc).__name__)
    return TaskResult(task_id="", status=TaskStatus.ERROR, success=False, error=error)


def _with_values(results: Iterator[TaskResult], futures: dict[str, TaskFuture[Any]]) -> Iterator[TaskResult]:
    """Each result, with its future's value as ``data`` when it came from an executor."""
    for result in results:
        future = futures.get(result.task_id)
        if future is not None and result.success:
            # The future's outcome is set on the event thread, a moment after the task's.
            result = result.model_copy(update={"data": future.result()})
        yield result


class _Board:
    """The rich progress display: one bar for the batch, one row per task that reports progress."""

    def __init__(self, console: Console, description: str, total: int, transient: bool) -> None:
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            transient=transient,
        )
        self._batch = self._bar.add_task(description, total=total, failed="", rate="")
        self._rows: dict[str, TaskID] = {}
        self._ended: set[str] = set()
        self._lock = threading.Lock()
        self._done = 0
        self._failed = 0
        self._started = time.monotonic()

    def __enter__(self) -> Self:
        self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()

    def progress_of(self, ids: set[str]) -> Any:
        """The ``task_progress`` listener that keeps each running task's row."""

        def on_progress(event: TaskProgressEvent) -> None:
            if event.task_id not in ids:
                return
            progress = event.progress
            label = f"  {event.task_id} {progress.message}".rstrip()
            with self._lock:
                if event.task_id in self._ended:  # a report that came after the result
                    return
                row = self._rows.get(event.task_id)
                if row is None:
                    row = self._rows[event.task_id] = self._bar.add_task(label, failed="", rate="")
                self._bar.update(row, description=label, completed=progress.completed, total=progress.total)

        return on_progress

    def finished(self, result: TaskResult) -> None:
        """A task ended: its row goes, and the batch bar advances."""
        with self._lock:
            self._ended.add(result.task_id)
            row = self._rows.pop(result.task_id, None)
            if row is not None:
                self._bar.remove_task(row)
            self._done += 1
            self._failed += not result.success
            rate = self._done / max(time.monotonic() - self._started, 1e-9)
            failed = f"[red]{self._failed} failed" if self._failed else ""
            self._bar.update(self._batch, advance=1, failed=failed, rate=f"{rate:,.1f}/s")
