"""Streamed partial results, results in completion order, and async workers running many tasks."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator import TaskResult, TaskStatus
from tests.conftest import DEADLOCK_TIMEOUT, Recorder, Release, subscribe_all


def test_stream_yields_partials_in_order_then_the_result(make_orch) -> None:
    orch = make_orch()
    task_id = orch.submit_task({"type": "partials", "config": {"n": 50}})
    items = list(orch.stream(task_id))
    *partials, final = items
    assert partials == [{"i": i} for i in range(50)]
    assert isinstance(final, TaskResult)
    assert final.data == 50


def test_a_late_stream_replays_and_keeps_the_newest_thousand(make_orch) -> None:
    orch = make_orch()
    task_id = orch.submit_task({"type": "partials", "config": {"n": 1500}})
    orch.wait(task_id, DEADLOCK_TIMEOUT)
    *partials, final = orch.stream(task_id)
    assert partials == [{"i": i} for i in range(500, 1500)]
    assert final.data == 1500


def test_stream_async(make_orch) -> None:
    orch = make_orch()

    async def main() -> list[object]:
        task_id = orch.submit_task({"type": "partials", "config": {"n": 10}})
        return [item async for item in orch.stream_async(task_id)]

    *partials, final = asyncio.run(main())
    assert partials == [{"i": i} for i in range(10)]
    assert final.status is TaskStatus.COMPLETED


def test_stream_of_a_failed_task_ends_with_its_error(make_orch) -> None:
    orch = make_orch()
    (final,) = list(orch.stream(orch.submit_task({"type": "fail"})))
    assert final.error.kind == "exception"


def test_as_completed_yields_in_completion_order(make_orch, release: Release) -> None:
    orch = make_orch(max_workers=3)
    done_first = orch.submit_task({"type": "echo", "config": {"n": 1}})
    orch.wait(done_first, DEADLOCK_TIMEOUT)
    slow = orch.submit_task({"type": "blocker", "config": release.config})
    quick = orch.submit_task({"type": "echo", "config": {"n": 2}})
    results = orch.as_completed([slow, quick, done_first], timeout=DEADLOCK_TIMEOUT)
    assert next(results).task_id == done_first, "tasks already final come first"
    assert next(results).task_id == quick
    release.open()
    assert next(results).task_id == slow
    with pytest.raises(StopIteration):
        next(results)


def test_as_completed_timeout_covers_the_whole_iteration(make_orch, release: Release) -> None:
    orch = make_orch(max_workers=2)
    quick = orch.submit_task({"type": "echo"})
    stuck = orch.submit_task({"type": "blocker", "config": release.config})
    results = orch.as_completed([quick, stuck], timeout=1.0)
    assert next(results).task_id == quick
    with pytest.raises(TimeoutError, match="1 of 2 tasks"):
        next(results)
    release.open()


def test_as_completed_async(make_orch) -> None:
    orch = make_orch(max_workers=2)

    async def main() -> list[str]:
        ids = [orch.submit_task({"type": "async_sleep", "config": {"seconds": s}}) for s in (0.6, 0.0, 0.3)]
        order = [r.task_id async for r in orch.as_completed_async(ids, timeout=DEADLOCK_TIMEOUT)]
        return [ids.index(t) for t in order]

    assert asyncio.run(main()) == [1, 2, 0]


def test_async_worker_runs_many_tasks_at_once(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=2, worker_concurrency={"async_sleep": 25}, task_queue_size=100)
    subscribe_all(orch, recorder)
    assert orch.wait(
        orch.submit_task({"type": "async_sleep", "config": {"seconds": 0}}), DEADLOCK_TIMEOUT
    ).success
    ids = [orch.submit_task({"type": "async_sleep", "config": {"seconds": 1}}) for _ in range(50)]
    results = [orch.wait(task_id, DEADLOCK_TIMEOUT) for task_id in ids]
    assert all(r.success for r in results)
    recorder.wait_for(lambda events: sum(e.event == "task_completed" for e in events) == 51)
    running: dict[int, int] = {}
    most = 0
    for event in recorder.events:
        if event.event == "task_started":
            running[event.pid] = running.get(event.pid, 0) + 1
            most = max(most, running[event.pid])
        elif event.event == "task_completed":
            running[event.result.worker_pid] -= 1
    assert most == 25
    assert len({r.worker_pid for r in results}) == 2


def test_cancel_one_task_of_an_async_worker_leaves_the_others(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1, worker_concurrency={"async_sleep": 5})
    orch.on("task_started", recorder)
    warm = orch.submit_task({"type": "async_sleep", "config": {"seconds": 0}})
    orch.wait(warm, DEADLOCK_TIMEOUT)
    ids = [orch.submit_task({"type": "async_sleep", "config": {"seconds": 0.5}}) for _ in range(3)]
    victim = orch.submit_task({"type": "async_sleep", "config": {"seconds": 60}, "timeout": 0.3})
    cancelled = orch.submit_task({"type": "async_sleep", "config": {"seconds": 60}})
    recorder.wait_for(lambda events: len(events) == 6)
    assert orch.cancel(cancelled)
    assert orch.wait(cancelled, DEADLOCK_TIMEOUT).status is TaskStatus.CANCELLED
    assert orch.wait(victim, DEADLOCK_TIMEOUT).error.kind == "timeout"
    results = [orch.wait(t, DEADLOCK_TIMEOUT) for t in ids]
    assert all(r.success for r in results)
    assert len({r.worker_pid for r in [*results, orch.get_result(victim)]}) == 1


def test_a_stuck_async_task_takes_its_worker_and_its_neighbours(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1, worker_concurrency={"async_blocking": 4}, timeout_grace=0.3)
    orch.on("task_started", recorder)
    neighbour = orch.submit_task({"type": "async_blocking", "config": {"await": 60}})
    recorder.wait_for(lambda events: len(events) == 1)
    stuck = orch.submit_task({"type": "async_blocking", "config": {"block": 60}, "timeout": 0.3})
    assert orch.wait(stuck, DEADLOCK_TIMEOUT).error.kind == "timeout"
    crashed = orch.wait(neighbour, DEADLOCK_TIMEOUT)
    assert crashed.error.kind == "worker_crashed"
    after = orch.wait(orch.submit_task({"type": "async_blocking"}), DEADLOCK_TIMEOUT)
    assert after.success
    assert after.worker_pid != crashed.worker_pid, "the blocked worker was killed and replaced"
