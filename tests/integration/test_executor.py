"""The orchestrator as a concurrent.futures executor: functions as tasks, pickled as the stdlib pickles."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import multiprocessing
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from pathlib import Path
from typing import Any

import numpy
import pytest

from orchestrator import (
    InvalidTaskError,
    ParallelOrchestrator,
    ProcessPoolExecutor,
    TaskFailedError,
    TaskFuture,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerInitError,
)
from tests.conftest import DEADLOCK_TIMEOUT
from tests.helpers import functions


@pytest.fixture
def executor(no_leaks: None) -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(max_workers=2) as pool:
        yield pool


def _wait_for(path: Path) -> None:
    """Block until a worker creates ``path`` (the function says it got there)."""
    _until(path.exists)


# ----------------------------------------------------------------- the drop-in


def test_submit_and_map_give_results_in_order(executor: ProcessPoolExecutor) -> None:
    future = executor.submit(functions.add, 2, y=3)
    assert isinstance(future, TaskFuture)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(DEADLOCK_TIMEOUT) == 5
    assert future.task_id is not None
    assert future.done()
    assert not future.cancelled()
    assert list(executor.map(functions.square, range(20))) == [x * x for x in range(20)]
    assert list(executor.map(functions.add, range(25), range(25), chunksize=4)) == [2 * x for x in range(25)]
    assert list(executor.map(functions.square, [])) == []


def test_futures_work_with_wait_and_as_completed(executor: ProcessPoolExecutor) -> None:
    futures = [executor.submit(functions.square, x) for x in range(8)]
    done, pending = concurrent.futures.wait(futures, timeout=DEADLOCK_TIMEOUT)
    assert not pending
    assert len(done) == 8
    finished = concurrent.futures.as_completed(futures, timeout=DEADLOCK_TIMEOUT)
    assert sorted(f.result() for f in finished) == [x * x for x in range(8)]


def test_done_callbacks_run_on_the_event_thread_never_the_supervisors(
    executor: ProcessPoolExecutor, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    seen: list[str] = []
    called = threading.Event()
    with_callback = executor.submit(functions.wait_for_file, str(release))
    with_callback.add_done_callback(lambda f: (seen.append(threading.current_thread().name), called.set()))
    without = executor.submit(functions.wait_for_file, str(release))
    concurrently = concurrent.futures.as_completed([without], timeout=DEADLOCK_TIMEOUT)
    release.touch()
    assert next(concurrently).result() > 0  # taken on the supervisor's thread: no callback to run
    assert with_callback.result(DEADLOCK_TIMEOUT) > 0
    assert called.wait(DEADLOCK_TIMEOUT)
    assert seen[0].startswith("orch-events")


def test_the_functions_own_exception_comes_back_with_the_worker_traceback(
    executor: ProcessPoolExecutor,
) -> None:
    future = executor.submit(functions.raise_value_error, "no such file")
    with pytest.raises(ValueError, match="no such file") as caught:
        future.result(DEADLOCK_TIMEOUT)
    cause = caught.value.__cause__
    assert type(cause) is _RemoteTraceback  # the stdlib's own class
    assert "raise_value_error" in str(cause)
    assert "ValueError: no such file" in str(cause)
    assert executor.orchestrator.get_result(future.task_id or "").error.exception_type == "ValueError"  # type: ignore[union-attr]


def test_an_exception_that_cannot_be_rebuilt_still_says_what_was_raised(
    executor: ProcessPoolExecutor,
) -> None:
    future = executor.submit(functions.raise_unrebuildable)
    with pytest.raises(TaskFailedError, match=r"NeedsTwoArguments: one two.*could not be rebuilt"):
        future.result(DEADLOCK_TIMEOUT)


def test_a_crash_fails_one_future_and_the_pool_goes_on(executor: ProcessPoolExecutor) -> None:
    crashed = executor.submit(functions.exit_hard, 7)
    with pytest.raises(WorkerCrashedError) as caught:
        crashed.result(DEADLOCK_TIMEOUT)
    assert isinstance(caught.value, BrokenProcessPool)
    assert caught.value.exitcode == 7
    assert "EXIT(7)" in str(caught.value)
    assert executor.submit(functions.square, 9).result(DEADLOCK_TIMEOUT) == 81


# What pickle raises for a local object (3.11: AttributeError; later: PicklingError).
_UNPICKLABLE = (pickle.PicklingError, AttributeError)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda ex: ex.submit(lambda: 1), _UNPICKLABLE),
        (lambda ex: ex.submit(functions.square, lambda: 1), _UNPICKLABLE),
        (lambda ex: ex.submit(functions.return_unpicklable), _UNPICKLABLE),
    ],
    ids=["lambda", "unpicklable-argument", "unpicklable-result"],
)
def test_what_cannot_be_pickled_fails_its_future_only(
    executor: ProcessPoolExecutor,
    call: Callable[[Any], TaskFuture[Any]],
    error: tuple[type[Exception], ...],
) -> None:
    with pytest.raises(error):
        call(executor).result(DEADLOCK_TIMEOUT)
    assert executor.submit(functions.square, 4).result(DEADLOCK_TIMEOUT) == 16


def test_bad_calls_are_refused_as_the_stdlib_refuses_them(executor: ProcessPoolExecutor) -> None:
    with pytest.raises(TypeError):
        executor.submit()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        executor.submit(fn=functions.square)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="not callable"):
        executor.submit(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(functions.square, range(3), chunksize=0)
    with pytest.raises(InvalidTaskError, match="priority"):
        executor.options(priority=11)
    with pytest.raises(InvalidTaskError, match="timeout"):
        executor.options(timeout=-1)
    with pytest.raises(TypeError, match="config"):
        executor.options(config={})
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        ProcessPoolExecutor(max_workers=0)


def test_submit_after_shutdown_raises_runtime_error(no_leaks: None) -> None:
    pool = ProcessPoolExecutor(max_workers=1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(functions.square, 2)


def test_shutdown_with_cancel_futures_cancels_what_has_not_started(no_leaks: None, tmp_path: Path) -> None:
    release = tmp_path / "release"
    pool = ProcessPoolExecutor(max_workers=1, prefetch=0)
    running = pool.submit(functions.wait_for_file, str(release))
    queued = [pool.submit(functions.square, x) for x in range(5)]
    _started(running)
    release.touch()
    pool.shutdown(wait=True, cancel_futures=True)
    assert running.result() > 0
    assert all(f.cancelled() for f in queued)


def _started(future: TaskFuture[Any]) -> None:
    """Block until the future's task started (it turns running on the event thread)."""
    _until(lambda: future.running() or future.done())


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLOCK_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


# ----------------------------------------------------------------- what the stdlib cannot


def test_cancel_stops_a_running_function_and_its_worker_is_reused(no_leaks: None, tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=1) as pool:
        first_pid = pool.submit(functions.pid).result(DEADLOCK_TIMEOUT)
        started, stopped = tmp_path / "started", tmp_path / "stopped"
        future = pool.submit(functions.wait_until_stopped, str(started), str(stopped))
        _wait_for(started)
        assert future.cancel() is True
        assert future.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(DEADLOCK_TIMEOUT)
        _wait_for(stopped)
        assert pool.submit(functions.pid).result(DEADLOCK_TIMEOUT) == first_pid


def test_asyncio_cancelling_run_in_executor_stops_the_work(no_leaks: None, tmp_path: Path) -> None:
    started, stopped = tmp_path / "started", tmp_path / "stopped"

    async def main(pool: ProcessPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        awaited = loop.run_in_executor(pool, functions.wait_until_stopped, str(started), str(stopped))
        await loop.run_in_executor(None, _wait_for, started)
        awaited.cancel()
        with pytest.raises(asyncio.CancelledError):
            await awaited
        await loop.run_in_executor(None, _wait_for, stopped)
        assert await loop.run_in_executor(pool, functions.square, 5) == 25

    with ProcessPoolExecutor(max_workers=1) as pool:
        first_pid = pool.submit(functions.pid).result(DEADLOCK_TIMEOUT)
        asyncio.run(main(pool))
        assert pool.submit(functions.pid).result(DEADLOCK_TIMEOUT) == first_pid


def test_options_priority_orders_queued_functions(no_leaks: None, tmp_path: Path) -> None:
    release = tmp_path / "release"
    with ProcessPoolExecutor(max_workers=1, prefetch=0) as pool:
        orch = pool.orchestrator
        blocking = pool.submit(functions.wait_for_file, str(release))
        _started(blocking)
        low = [pool.options(priority=1).submit(functions.square, x) for x in range(3)]
        high = [pool.options(priority=9).submit(functions.square, x) for x in range(3)]
        release.touch()
        concurrent.futures.wait([*low, *high], timeout=DEADLOCK_TIMEOUT)
        began = {f: orch.get_result(f.task_id or "").started_at for f in [*low, *high]}  # type: ignore[union-attr]
        assert max(began[f] for f in high) < min(began[f] for f in low)  # type: ignore[type-var]


def test_a_timeout_from_options_raises_task_timeout_error(
    executor: ProcessPoolExecutor, tmp_path: Path
) -> None:
    future = executor.options(timeout=0.2).submit(functions.wait_for_file, str(tmp_path / "never"))
    with pytest.raises(TaskTimeoutError) as caught:
        future.result(DEADLOCK_TIMEOUT)
    assert isinstance(caught.value, TimeoutError)


def test_progress_reported_through_current_context(executor: ProcessPoolExecutor, tmp_path: Path) -> None:
    release = tmp_path / "release"
    future = executor.submit(functions.report_progress, 4, str(release))
    _until(lambda: future.progress is not None)
    assert future.progress is not None
    assert (future.progress.completed, future.progress.total, future.progress.message) == (4, 8, "halfway")
    assert future.running()
    release.touch()
    assert future.result(DEADLOCK_TIMEOUT) == 4
    assert executor.submit(functions.context_of_task).result(DEADLOCK_TIMEOUT) is not None
    assert functions.context_of_task() is None


def test_large_arrays_travel_both_ways_writable(executor: ProcessPoolExecutor) -> None:
    data = numpy.arange(200_000, dtype=numpy.float64)  # 1.6 MB: shared memory, out of band
    doubled = executor.submit(functions.double_in_place, data).result(DEADLOCK_TIMEOUT)
    assert numpy.array_equal(doubled, data * 2)
    assert doubled.flags.writeable
    doubled[0] = -1.0


def test_map_over_many_items_keeps_a_bounded_number_in_flight(no_leaks: None) -> None:
    count = 100_000
    with ProcessPoolExecutor(max_workers=2, task_queue_size=100, max_results_in_memory=1000) as pool:
        orch = pool.orchestrator
        most_open = 0
        for index, value in enumerate(pool.map(functions.square, range(count), chunksize=10)):
            assert value == index * index
            if index % 5000 == 0:
                status = orch.get_status()
                most_open = max(most_open, status.queued + status.running)
        assert most_open <= 100
        assert len(orch._tasks) <= 1000 + 100


def test_map_with_one_item_per_task_never_overfills_the_queue(no_leaks: None) -> None:
    with ProcessPoolExecutor(max_workers=2, task_queue_size=10) as pool:
        assert list(pool.map(functions.square, range(2000))) == [x * x for x in range(2000)]
        assert sum(1 for _ in pool.map(functions.square, range(50), buffersize=3)) == 50


def test_closing_a_map_early_cancels_what_has_not_run(no_leaks: None, tmp_path: Path) -> None:
    release = tmp_path / "release"
    with ProcessPoolExecutor(max_workers=1, prefetch=0) as pool:
        paths = [str(release)] + [str(tmp_path / "never")] * 5
        results = pool.map(functions.wait_for_file, paths)
        release.touch()
        assert next(results) > 0
        results.close()  # type: ignore[attr-defined]
        status = pool.orchestrator.get_status()
        assert status.cancelled == 5 or status.cancelled + status.running >= 5


# ----------------------------------------------------------------- initializers


def test_the_initializer_runs_once_in_each_worker_before_its_functions(no_leaks: None) -> None:
    with ProcessPoolExecutor(
        max_workers=1, initializer=functions.remember_init, initargs=("model", 3)
    ) as pool:
        assert pool.submit(functions.initialized).result(DEADLOCK_TIMEOUT) == ("model", 3)
        assert pool.submit(functions.initialized).result(DEADLOCK_TIMEOUT) == ("model", 3)


def test_a_failing_initializer_breaks_the_executor(no_leaks: None) -> None:
    with ProcessPoolExecutor(max_workers=1, initializer=functions.failing_init) as pool:
        futures = [pool.submit(functions.square, x) for x in range(3)]
        for future in futures:
            with pytest.raises(WorkerInitError, match="the model file is missing") as caught:
                future.result(DEADLOCK_TIMEOUT)
            assert isinstance(caught.value, BrokenProcessPool)
        with pytest.raises(WorkerInitError, match="broken"):
            pool.submit(functions.square, 1)


INHERITED_QUEUE_SCRIPT = """
import multiprocessing, sys
from orchestrator import ProcessPoolExecutor
from tests.helpers.functions import put_on_inherited_queue, put_pid_on
if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[1])
    queue = context.Queue()
    with ProcessPoolExecutor(1, context, put_pid_on, (queue,)) as pool:
        worker = pool.submit(put_on_inherited_queue, "hello").result(30)
    print(queue.get(timeout=30) == worker, queue.get(timeout=30))
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_initargs_may_hold_objects_that_pass_only_by_inheritance(
    method: str, tmp_path: Path, no_leaks: None
) -> None:
    # In a process of its own, as a user's script: the queue's semaphores start the resource
    # tracker, which lives as long as the interpreter that made them.
    assert _run_script(tmp_path, INHERITED_QUEUE_SCRIPT, method) == "True hello"


def test_an_executor_made_after_start_says_how_to_pass_inherited_objects(
    make_orch: Callable[..., ParallelOrchestrator],
) -> None:
    orch = make_orch(max_workers=1)
    lock = multiprocessing.get_context("fork").Lock()
    with pytest.raises(RuntimeError, match="inheritance") as caught:
        orch.executor(initializer=functions.put_pid_on, initargs=(lock,))
    assert "before initialize()" in "".join(caught.value.__notes__)
    with pytest.raises(TypeError, match="initializer must be callable"):
        orch.executor(initializer=3)  # type: ignore[arg-type]


# ----------------------------------------------------------------- memory and exit


def test_values_taken_from_map_are_not_kept_by_the_orchestrator(no_leaks: None) -> None:
    with ProcessPoolExecutor(max_workers=1) as pool:
        orch = pool.orchestrator
        values = [weakref.ref(value) for value in pool.map(functions.payload, range(5))]
    gc.collect()
    assert [value() for value in values] == [None] * 5
    assert orch.get_status().completed == 5  # while the records (and get_result) stay


EXIT_SCRIPT = """
import atexit
from orchestrator import ProcessPoolExecutor
from tests.helpers.functions import square

@atexit.register
def submit_too_late():
    try:
        pool.submit(square, 1)
    except RuntimeError as exc:
        print(exc)

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1)
    pool.submit(square, 7).add_done_callback(lambda f: print(f.result(), flush=True))
"""


def test_work_submitted_finishes_before_the_interpreter_exits(tmp_path: Path, no_leaks: None) -> None:
    # As the stdlib's: the pending call runs, and a submit from a later exit hook is refused.
    assert _run_script(tmp_path, EXIT_SCRIPT).splitlines() == [
        "49",
        "cannot schedule new futures after shutdown",
    ]


def _run_script(folder: Path, source: str, *args: str) -> str:
    """What a script run by a fresh interpreter printed (it must exit cleanly)."""
    script = folder / "script.py"
    script.write_text(source)
    root = Path(__file__).parents[2]
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=DEADLOCK_TIMEOUT,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# ----------------------------------------------------------------- an executor over an orchestrator


def test_an_orchestrator_executor_shuts_down_alone(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    orch = make_orch(max_workers=2)
    with orch.executor(priority=7) as executor:
        assert executor.submit(functions.square, 6).result(DEADLOCK_TIMEOUT) == 36
    with pytest.raises(RuntimeError):
        executor.submit(functions.square, 1)
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success
    assert orch.executor().submit(functions.square, 2).result(DEADLOCK_TIMEOUT) == 4


def test_the_task_api_cannot_submit_calls(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    orch = make_orch(max_workers=1)
    with pytest.raises(InvalidTaskError, match="reserved"):
        orch.submit_task({"type": "call", "config": {"call": b"", "buffers": []}})


def test_executor_tasks_are_tasks_with_a_name_and_no_journal_row(
    make_orch: Callable[..., ParallelOrchestrator], tmp_path: Path
) -> None:
    journal = tmp_path / "journal.db"
    orch = make_orch(max_workers=1, journal_path=str(journal))
    executor = orch.executor()
    future = executor.submit(functions.square, 3)
    assert future.result(DEADLOCK_TIMEOUT) == 9
    result = orch.wait(future.task_id or "", DEADLOCK_TIMEOUT)
    assert result.success
    assert result.data is None  # the value is the future's alone
    summaries = orch._lookup.summaries(None, "call", 10)
    assert summaries[0]["description"] == "tests.helpers.functions.square"
    orch.shutdown()
    with sqlite3.connect(journal) as db:
        assert db.execute("select count(*) from tasks").fetchone()[0] == 0


def test_raise_for_error_maps_failures(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    orch = make_orch(max_workers=1)
    ok = orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT)
    ok.raise_for_error()
    crashed = orch.wait(orch.submit_task({"type": "exit_hard"}), DEADLOCK_TIMEOUT)
    with pytest.raises(WorkerCrashedError) as caught:
        crashed.raise_for_error()
    assert caught.value.result is crashed
    assert caught.value.exitcode == crashed.error.exitcode  # type: ignore[union-attr]
    failed = orch.wait(orch.submit_task({"type": "fail"}), DEADLOCK_TIMEOUT)
    with pytest.raises(TaskFailedError, match="exception"):
        failed.raise_for_error()
    task_id = orch.submit_task({"type": "sleep", "config": {"seconds": 30}})
    orch.cancel(task_id)
    with pytest.raises(concurrent.futures.CancelledError):
        orch.wait(task_id, DEADLOCK_TIMEOUT).raise_for_error()
