"""Results, callbacks, events, waiting and shutdown, with real worker processes."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from orchestrator import OrchestratorError, TaskNotFoundError, TaskStatus
from orchestrator.errors import OrchestratorClosedError
from tests.conftest import DEADLOCK_TIMEOUT, Recorder, Release, subscribe_all


def test_result_of_a_completed_task(make_orch) -> None:
    orch = make_orch()
    task_id = orch.submit_task({"type": "echo", "config": {"a": [1, 2], "b": {"c": None}}})
    result = orch.wait(task_id, DEADLOCK_TIMEOUT)
    assert result.status is TaskStatus.COMPLETED
    assert result.success
    assert result.error is None
    assert result.data["config"] == {"a": [1, 2], "b": {"c": None}}
    assert result.attempts == 1
    assert result.worker_pid == result.data["pid"]
    assert result.started_at <= result.finished_at
    assert result.duration_s >= 0
    assert orch.get_result(task_id) == result
    assert orch.get_task_status(task_id) is TaskStatus.COMPLETED


def test_events_arrive_in_order_for_each_task(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=2)
    subscribe_all(orch, recorder)
    ids = [orch.submit_task({"type": "steps", "config": {"n": 5}}) for _ in range(6)]
    for task_id in ids:
        orch.wait(task_id, DEADLOCK_TIMEOUT)
    recorder.wait_for(lambda events: sum(e.event == "task_completed" for e in events) == 6)
    for task_id in ids:
        names = recorder.names(task_id)
        assert names[:2] == ["task_queued", "task_started"]
        assert names[-1] == "task_completed"
        assert set(names[2:-1]) <= {"task_progress"}
        progress = [
            e.progress.completed
            for e in recorder.events
            if e.event == "task_progress" and e.task_id == task_id
        ]
        assert progress == sorted(progress)
        assert progress[-1] == 5


def test_per_task_callbacks(make_orch) -> None:
    orch = make_orch()
    seen: list[object] = []
    done = threading.Event()
    failed: list[object] = []
    task_id = orch.submit_task(
        {"type": "steps", "config": {"n": 3}},
        on_progress=seen.append,
        on_complete=lambda result: (seen.append(result), done.set()),
        on_error=failed.append,
    )
    assert done.wait(DEADLOCK_TIMEOUT)
    *progress, final = seen
    assert final.task_id == task_id
    assert final.data == 3
    assert progress
    assert progress[-1].completed == 3
    assert progress[-1].total == 3
    assert progress[-1].message == "step 3"
    assert failed == []


def test_on_error_receives_failures(make_orch) -> None:
    orch = make_orch()
    got: list[object] = []
    done = threading.Event()
    orch.submit_task(
        {"type": "fail", "config": {"message": "nope"}}, on_error=lambda r: (got.append(r), done.set())
    )
    assert done.wait(DEADLOCK_TIMEOUT)
    (result,) = got
    assert result.status is TaskStatus.ERROR
    assert not result.success
    assert result.error.kind == "exception"
    assert result.error.exception_type == "ValueError"
    assert result.error.message == "nope"
    assert "ValueError: nope" in result.error.traceback


def test_partial_results_are_events_in_order(make_orch, recorder: Recorder) -> None:
    orch = make_orch()
    orch.on("task_partial", recorder)
    task_id = orch.submit_task({"type": "partials", "config": {"n": 20}})
    assert orch.wait(task_id, DEADLOCK_TIMEOUT).data == 20
    recorder.wait_for(lambda events: len(events) == 20)
    assert [e.data for e in recorder.events] == [{"i": i} for i in range(20)]
    assert [e.index for e in recorder.events] == list(range(20))


def test_wait_async(make_orch) -> None:
    orch = make_orch()

    async def main() -> list[object]:
        ids = [orch.submit_task({"type": "async_echo", "config": {"i": i}}) for i in range(5)]
        return await asyncio.gather(*(orch.wait_async(t, DEADLOCK_TIMEOUT) for t in ids))

    results = asyncio.run(main())
    assert [r.data for r in results] == [{"i": i} for i in range(5)]


def test_wait_times_out_while_the_task_goes_on(make_orch, release: Release) -> None:
    orch = make_orch()
    task_id = orch.submit_task({"type": "blocker", "config": release.config})
    with pytest.raises(TimeoutError, match="not final"):
        orch.wait(task_id, timeout=0.05)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await orch.wait_async(task_id, timeout=0.05)

    asyncio.run(main())
    release.open()
    assert orch.wait(task_id, DEADLOCK_TIMEOUT).success


def test_every_thread_waiting_on_a_task_gets_its_result(make_orch, release: Release) -> None:
    orch = make_orch()
    task_id = orch.submit_task({"type": "blocker", "config": release.config})
    waiting = threading.Barrier(9)
    results = []

    def wait() -> None:
        waiting.wait(DEADLOCK_TIMEOUT)
        results.append(orch.wait(task_id, DEADLOCK_TIMEOUT))

    threads = [threading.Thread(target=wait) for _ in range(8)]
    for thread in threads:
        thread.start()
    waiting.wait(DEADLOCK_TIMEOUT)
    release.open()  # some wait from before the end, some are still arriving as it ends
    for thread in threads:
        thread.join(DEADLOCK_TIMEOUT)
    assert len(results) == 8
    assert all(result.success and result.task_id == task_id for result in results)
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


def test_slow_callback_does_not_delay_dispatch(make_orch) -> None:
    orch = make_orch(max_workers=1)
    orch.on("task_completed", lambda event: time.sleep(1.0))
    first = orch.submit_task({"type": "echo"})
    second = orch.submit_task({"type": "echo"})
    a = orch.wait(first, DEADLOCK_TIMEOUT)
    b = orch.wait(second, DEADLOCK_TIMEOUT)
    gap = (b.started_at - a.finished_at).total_seconds()
    assert gap < 0.5, f"the second task started {gap:.3f} s after the first ended"


def test_a_raising_callback_is_logged_and_changes_nothing(
    make_orch, caplog: pytest.LogCaptureFixture
) -> None:
    orch = make_orch()
    done = threading.Event()

    def broken(event: object) -> None:
        raise RuntimeError("callback bug")

    orch.on("task_completed", broken)
    orch.on("task_completed", lambda event: done.set())
    task_id = orch.submit_task({"type": "echo"}, on_complete=broken)
    assert orch.wait(task_id, DEADLOCK_TIMEOUT).success
    assert done.wait(DEADLOCK_TIMEOUT)
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success
    assert "callback bug" in caplog.text


def test_unsubscribe(make_orch, recorder: Recorder) -> None:
    orch = make_orch()
    unsubscribe = orch.on("task_completed", recorder)
    orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT)
    recorder.wait_for(lambda events: len(events) == 1)
    unsubscribe()
    done = threading.Event()
    orch.on("task_completed", lambda event: done.set())
    orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT)
    assert done.wait(DEADLOCK_TIMEOUT)
    assert len(recorder.events) == 1


def test_shutdown_waits_for_running_tasks(make_orch, recorder: Recorder) -> None:
    orch = make_orch()
    orch.on("task_started", recorder)
    task_id = orch.submit_task({"type": "sleep", "config": {"seconds": 0.5}})
    recorder.wait_for(lambda events: len(events) == 1)
    orch.shutdown(wait=True)
    assert orch.get_result(task_id).status is TaskStatus.COMPLETED


def test_shutdown_runs_queued_tasks_unless_cancel_pending(make_orch) -> None:
    orch = make_orch(max_workers=1)
    ids = [orch.submit_task({"type": "echo", "config": {"i": i}}) for i in range(5)]
    orch.shutdown(wait=True)
    assert [orch.get_result(t).status for t in ids] == [TaskStatus.COMPLETED] * 5


def test_shutdown_cancel_pending_cancels_the_queue(make_orch, release: Release, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1)
    orch.on("task_started", recorder)
    cancelled = Recorder()
    orch.on("task_cancelled", cancelled)
    running = orch.submit_task({"type": "blocker", "config": release.config})
    recorder.wait_for(lambda events: len(events) == 1)
    queued = [orch.submit_task({"type": "blocker", "config": release.config}) for _ in range(3)]
    orch.shutdown(wait=False, cancel_pending=True)
    for task_id in queued:
        result = orch.wait(task_id, DEADLOCK_TIMEOUT)
        assert result.status is TaskStatus.CANCELLED
        assert result.error.kind == "cancelled"
    release.open()
    orch.shutdown(wait=True)
    assert orch.get_result(running).status is TaskStatus.COMPLETED
    assert sorted(e.task_id for e in cancelled.events) == sorted(queued)


def test_shutdown_timeout_cancels_and_kills_what_is_left(make_orch) -> None:
    orch = make_orch(max_workers=1)
    running = orch.submit_task({"type": "ignore_stop"})
    queued = orch.submit_task({"type": "ignore_stop"})
    started = time.monotonic()
    orch.shutdown(wait=True, timeout=0.5)
    assert time.monotonic() - started < 5
    assert orch.get_result(running).status is TaskStatus.CANCELLED
    assert orch.get_result(queued).status is TaskStatus.CANCELLED


def test_shutdown_is_idempotent_and_closes_submission(make_orch) -> None:
    orch = make_orch()
    orch.shutdown()
    orch.shutdown()
    orch.shutdown(wait=False)
    with pytest.raises(OrchestratorClosedError, match="shut down"):
        orch.submit_task({"type": "echo"})
    assert issubclass(OrchestratorClosedError, OrchestratorError)


def test_context_manager(no_leaks) -> None:
    from orchestrator import ParallelOrchestrator
    from tests.helpers.tasks import HANDLERS

    with ParallelOrchestrator(handlers=HANDLERS, max_workers=2) as orch:
        task_id = orch.submit_task({"type": "echo"})
        assert orch.wait(task_id, DEADLOCK_TIMEOUT).success
    assert orch.get_workers() == [] or all(w.state == "stopping" for w in orch.get_workers())
    with pytest.raises(OrchestratorError):
        orch.submit_task({"type": "echo"})


def test_unknown_ids_raise_task_not_found(make_orch) -> None:
    orch = make_orch()
    for call in (orch.get_task_status, orch.get_result, orch.wait, orch.cancel):
        with pytest.raises(TaskNotFoundError, match="no-such-id"):
            call("no-such-id")
    with pytest.raises(TaskNotFoundError):
        asyncio.run(orch.wait_async("no-such-id"))


def test_status_counts(make_orch) -> None:
    orch = make_orch(max_workers=3, task_queue_size=50)
    for task_type in ("echo", "echo", "echo", "fail"):
        orch.wait(orch.submit_task({"type": task_type}), DEADLOCK_TIMEOUT)
    status = orch.get_status()
    assert (status.completed, status.failed, status.cancelled, status.queued, status.running) == (
        3,
        1,
        0,
        0,
        0,
    )
    assert status.max_workers == 3
    assert status.task_queue_size == 50
    assert status.uptime_s > 0
    workers = orch.get_workers()
    assert sum(w.tasks_completed for w in workers) == 4
    assert all(w.rss_bytes and w.rss_bytes > 0 and w.state == "idle" for w in workers)


def test_shutdown_from_a_callback_does_not_deadlock(make_orch) -> None:
    orch = make_orch()
    finished = threading.Event()

    def stop(event: object) -> None:
        orch.shutdown(wait=True)
        finished.set()

    orch.on("task_completed", stop)
    orch.submit_task({"type": "echo"})
    assert finished.wait(DEADLOCK_TIMEOUT)
    assert orch.get_status().workers == 0


def test_submit_from_many_threads(make_orch) -> None:
    orch = make_orch(max_workers=2, task_queue_size=1000)
    ids: list[str] = []

    def submit_some() -> None:
        for i in range(100):
            ids.append(orch.submit_task({"type": "echo", "config": {"i": i}}))

    threads = [threading.Thread(target=submit_some) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 800
    assert all(orch.wait(t, DEADLOCK_TIMEOUT).success for t in ids)
