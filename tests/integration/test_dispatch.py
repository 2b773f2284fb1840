"""Dispatch with real worker processes: priorities, type caps, scaling, idle exit, fixed pools."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from orchestrator import TaskStatus
from tests.conftest import DEADLOCK_TIMEOUT, Recorder, Release


def test_tasks_run_by_priority_then_fifo(make_orch, release: Release, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1)
    orch.on("task_started", recorder)
    blocker = orch.submit_task({"type": "blocker", "config": release.config})
    recorder.wait_for(lambda events: len(events) == 1)
    priorities = [*range(11), 5, 5]
    random.Random(7).shuffle(priorities)
    ids = {
        orch.submit_task({"type": "blocker", "priority": p, "config": release.config}): p for p in priorities
    }
    # A round trip: every submit is accepted, and a lower task prefetched before the higher ones
    # came has been asked back while the worker still runs the blocker.
    orch.get_status()
    release.open()
    for task_id in ids:
        assert orch.wait(task_id, DEADLOCK_TIMEOUT).success
    recorder.wait_for(lambda events: len(events) == 1 + len(ids))
    started = [e.task_id for e in recorder.events[1:]]
    assert [ids[t] for t in started] == sorted(priorities, reverse=True)
    fives = [t for t in ids if ids[t] == 5]
    assert [t for t in started if ids[t] == 5] == fives, "FIFO within a priority"
    assert orch.wait(blocker, DEADLOCK_TIMEOUT).success


def test_type_cap_holds_its_type_without_blocking_others(
    make_orch, release: Release, recorder: Recorder
) -> None:
    orch = make_orch(max_workers=3, worker_type_limits={"blocker": 1})
    orch.on("task_started", recorder)
    first = orch.submit_task({"type": "blocker", "priority": 9, "config": release.config})
    second = orch.submit_task({"type": "blocker", "priority": 9, "config": release.config})
    other = orch.submit_task({"type": "echo", "priority": 1, "config": {"x": 1}})
    assert orch.wait(other, DEADLOCK_TIMEOUT).success, "a capped type must not block other types"
    recorder.wait_for(lambda events: first in [e.task_id for e in events])
    statuses = {orch.get_task_status(first), orch.get_task_status(second)}
    assert statuses == {TaskStatus.RUNNING, TaskStatus.QUEUED}
    release.open()
    assert orch.wait(first, DEADLOCK_TIMEOUT).success
    assert orch.wait(second, DEADLOCK_TIMEOUT).success


def test_scales_up_to_max_workers_and_no_further(make_orch, release: Release, recorder: Recorder) -> None:
    orch = make_orch(max_workers=3)
    orch.on("task_started", recorder)
    orch.on("worker_spawned", recorder)
    ids = [orch.submit_task({"type": "blocker", "config": release.config}) for _ in range(6)]
    recorder.wait_for(lambda events: sum(e.event == "task_started" for e in events) == 3)
    status = orch.get_status()
    assert (status.workers, status.running, status.queued) == (3, 3, 3)
    assert len(orch.get_workers()) == 3
    release.open()
    for task_id in ids:
        assert orch.wait(task_id, DEADLOCK_TIMEOUT).success
    assert recorder.names().count("worker_spawned") == 3


def test_idle_worker_exits_after_idle_timeout(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=2, idle_timeout=0.5)
    orch.on("worker_exited", recorder)
    result = orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT)
    recorder.wait_for(lambda events: len(events) == 1)
    exited = recorder.events[0]
    assert (exited.reason, exited.pid, exited.type) == ("idle", result.data["pid"], "echo")
    assert orch.get_workers() == []


def test_min_workers_stay_when_idle(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=3, min_workers=1, idle_timeout=0.3)
    orch.on("worker_exited", recorder)
    orch.on("worker_spawned", recorder)
    ids = [orch.submit_task({"type": "sleep", "config": {"seconds": 0.3}}) for _ in range(3)]
    for task_id in ids:
        orch.wait(task_id, DEADLOCK_TIMEOUT)
    spawned = recorder.names().count("worker_spawned")
    recorder.wait_for(lambda events: sum(e.event == "worker_exited" for e in events) == spawned - 1)
    assert len(orch.get_workers()) == 1


def test_fixed_pool_keeps_its_workers(make_orch) -> None:
    orch = make_orch(max_workers=2, enable_auto_scaling=False, idle_timeout=0.2)
    workers = orch.get_workers()
    assert len(workers) == 2
    assert all(w.type is None for w in workers), "a fixed pool starts untyped workers"
    pids = {w.pid for w in workers}
    results = [orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT) for _ in range(4)]
    assert {r.data["pid"] for r in results} <= pids
    time.sleep(0.6)  # proving an absence: three idle timeouts pass and nobody exits
    assert {w.pid for w in orch.get_workers()} == pids


def test_fixed_pool_replaces_a_retired_worker_with_an_untyped_one(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1, enable_auto_scaling=False)
    orch.on("worker_exited", recorder)
    first = orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT)
    second = orch.wait(orch.submit_task({"type": "steps"}), DEADLOCK_TIMEOUT)
    assert second.success
    assert second.worker_pid != first.worker_pid, "a worker never switches type"
    assert recorder.names() == ["worker_exited"]
    assert recorder.events[0].reason == "retired"
    assert len(orch.get_workers()) == 1


def test_a_full_pool_retires_an_idle_worker_for_another_type(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1)
    orch.on("worker_exited", recorder)
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success
    assert orch.wait(orch.submit_task({"type": "steps"}), DEADLOCK_TIMEOUT).success
    recorder.wait_for(lambda events: len(events) == 1)
    assert (recorder.events[0].reason, recorder.events[0].type) == ("retired", "echo")


def test_a_worker_is_reused_for_its_type(make_orch) -> None:
    orch = make_orch(max_workers=2)
    pids = {orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).data["pid"] for _ in range(5)}
    assert len(pids) == 1


def test_recycling_after_max_tasks_per_worker(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1, max_tasks_per_worker=2)
    orch.on("worker_exited", recorder)
    results = [orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT) for _ in range(6)]
    assert all(r.success for r in results)
    pids = [r.data["pid"] for r in results]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]
    recorder.wait_for(lambda events: len(events) >= 2)
    assert {e.reason for e in recorder.events} == {"recycled"}


def test_a_worker_sent_tasks_at_once_runs_no_more_than_max_tasks_per_worker(make_orch) -> None:
    # Short tasks are queued deep in a busy worker: never past the tasks it may still run.
    orch = make_orch(max_workers=1, max_tasks_per_worker=3)
    for _ in range(3):  # its pace: short tasks
        orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT)
    ids = [orch.submit_task({"type": "echo", "config": {"i": i}}) for i in range(12)]
    pids = [orch.wait(task_id, DEADLOCK_TIMEOUT).data["pid"] for task_id in ids]
    assert sorted(Counter(pids).values()) == [3, 3, 3, 3]


def test_short_tasks_are_queued_deep_in_a_busy_worker(make_orch, tmp_path) -> None:
    orch = make_orch(max_workers=1)
    quick, held = Release(tmp_path / "quick"), Release(tmp_path / "held")
    quick.open()
    for _ in range(10):  # its pace: blockers return at once
        orch.wait(orch.submit_task({"type": "blocker", "config": quick.config}), DEADLOCK_TIMEOUT)
    ids = [orch.submit_task({"type": "blocker", "config": held.config}) for _ in range(21)]
    orch.get_status()  # a round trip: they have been dispatched
    assert orch.get_workers()[0].current_tasks == ids, "all 21 in the worker, in order"
    held.open()
    assert all(orch.wait(task_id, DEADLOCK_TIMEOUT).success for task_id in ids)


def test_long_tasks_are_held_one_ahead(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1)
    orch.on("task_started", recorder)
    orch.wait(orch.submit_task({"type": "sleep", "config": {"seconds": 0.05}}), DEADLOCK_TIMEOUT)
    ids = [orch.submit_task({"type": "sleep"}) for _ in range(4)]
    recorder.wait_for(lambda events: ids[0] in [e.task_id for e in events])
    orch.get_status()
    assert orch.get_workers()[0].current_tasks == ids[:2]
    for task_id in ids:
        orch.cancel(task_id)
    assert all(orch.wait(task_id, DEADLOCK_TIMEOUT).status is TaskStatus.CANCELLED for task_id in ids)


def test_short_tasks_with_large_configs_are_not_queued_deep(make_orch, tmp_path) -> None:
    # A worker reads its pipe only between tasks: queued configs beyond the pipe's 64 KiB would
    # block the supervisor's write (no status, no timeout) until the running task ended.
    orch = make_orch(max_workers=1, task_queue_size=100)
    quick, held = Release(tmp_path / "quick"), Release(tmp_path / "held")
    quick.open()
    for _ in range(10):
        orch.wait(orch.submit_task({"type": "blocker", "config": quick.config}), DEADLOCK_TIMEOUT)
    large = {**held.config, "padding": "x" * 30_000}
    ids = [orch.submit_task({"type": "blocker", "config": large}) for _ in range(40)]
    orch.get_status()  # answered: the supervisor did not block on the worker's pipe
    assert orch.get_workers()[0].current_tasks == ids[:2]
    held.open()
    assert all(orch.wait(task_id, DEADLOCK_TIMEOUT).success for task_id in ids)


def _one_worker_running_a_blocker(make_orch, release: Release, recorder: Recorder) -> tuple[Any, str]:
    """An orchestrator of one worker (prefetch=1) running a blocker, and that task's id."""
    orch = make_orch(max_workers=1, prefetch=1)
    orch.on("task_started", recorder)
    running = orch.submit_task({"type": "blocker", "config": release.config})
    recorder.wait_for(lambda events: len(events) == 1)
    return orch, running


def test_a_task_with_a_config_larger_than_a_pipe_waits_for_a_free_worker(
    make_orch, release: Release, recorder: Recorder
) -> None:
    orch, running = _one_worker_running_a_blocker(make_orch, release, recorder)
    large = orch.submit_task({"type": "blocker", "config": {**release.config, "padding": "x" * 200_000}})
    orch.get_status()  # answered: the supervisor did not block on the busy worker's pipe
    assert orch.get_workers()[0].current_tasks == [running]
    release.open()
    assert orch.wait(large, DEADLOCK_TIMEOUT).success


def test_a_task_of_unknown_length_takes_an_idle_workers_room_rather_than_queue_behind_one(
    make_orch, release: Release, recorder: Recorder
) -> None:
    orch = make_orch(max_workers=2)
    orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT)  # an echo worker, now idle
    orch.on("task_started", recorder)
    ids = [orch.submit_task({"type": "blocker", "config": release.config})]
    recorder.wait_for(lambda events: len(events) == 1)
    ids.append(orch.submit_task({"type": "blocker", "config": release.config}))
    # The idle echo worker retires, and a second blocker worker runs the second task meanwhile.
    recorder.wait_for(lambda events: {e.task_id for e in events} == set(ids))
    assert len({e.pid for e in recorder.events}) == 2
    release.open()
    assert all(orch.wait(task_id, DEADLOCK_TIMEOUT).success for task_id in ids)


def test_submit_never_waits_for_workers(make_orch, release: Release) -> None:
    orch = make_orch(max_workers=2, task_queue_size=2000)
    ids = [orch.submit_task({"type": "blocker", "config": release.config}) for _ in range(2)]
    # Every submit returns while both workers stay blocked (one that waited would hang the test).
    ids += [orch.submit_task({"type": "echo", "config": {"i": i}}) for i in range(1000)]
    assert all(orch.get_task_status(task_id) is TaskStatus.QUEUED for task_id in ids[2:])
    release.open()
    for task_id in ids:
        assert orch.wait(task_id, DEADLOCK_TIMEOUT).success


def test_a_prefetched_task_moves_to_a_worker_that_frees_up(make_orch, tmp_path, recorder: Recorder) -> None:
    orch = make_orch(max_workers=2, prefetch=1)
    orch.on("task_started", recorder)
    long_one = Release(tmp_path / "long")
    short_one = Release(tmp_path / "short")
    slow = orch.submit_task({"type": "blocker", "config": long_one.config})
    quick = orch.submit_task({"type": "blocker", "config": short_one.config})
    recorder.wait_for(lambda events: len(events) == 2)
    follower = orch.submit_task({"type": "blocker", "config": short_one.config})
    short_one.open()
    assert orch.wait(quick, DEADLOCK_TIMEOUT).success
    assert orch.wait(follower, DEADLOCK_TIMEOUT).success, "it did not wait behind the long task"
    assert orch.get_task_status(slow) is TaskStatus.RUNNING
    long_one.open()
    assert orch.wait(slow, DEADLOCK_TIMEOUT).success


def test_a_prefetched_task_survives_its_workers_crash(
    make_orch, release: Release, recorder: Recorder
) -> None:
    orch, doomed = _one_worker_running_a_blocker(make_orch, release, recorder)
    waiting = orch.submit_task({"type": "blocker", "config": release.config})
    orch.get_status()  # a round trip: the second task is now prefetched by the busy worker
    import os
    import signal

    os.kill(recorder.events[0].pid, signal.SIGKILL)
    assert orch.wait(doomed, DEADLOCK_TIMEOUT).error.kind == "worker_crashed"
    release.open()
    result = orch.wait(waiting, DEADLOCK_TIMEOUT)
    assert result.success
    assert result.attempts == 1, "a task that never started is not charged an attempt"


def test_prefetch_zero_sends_one_task_at_a_time(make_orch, release: Release, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1, prefetch=0)
    orch.on("task_started", recorder)
    first = orch.submit_task({"type": "blocker", "config": release.config})
    recorder.wait_for(lambda events: len(events) == 1)
    second = orch.submit_task({"type": "blocker", "config": release.config})
    assert orch.cancel(second)
    assert orch.get_workers()[0].current_tasks == [first]
    release.open()
    assert orch.wait(first, DEADLOCK_TIMEOUT).success


def test_prefetches_taken_back_under_churn_keep_every_count(make_orch, recorder: Recorder) -> None:
    # Short tasks at mixed priorities: a higher one arriving takes lower prefetched ones back, and
    # some of those Revokes reach a worker that has just taken the task (it answers that it
    # started). A probe counted about 30 Revokes per run here, a third of them too late.
    orch = make_orch(max_workers=2, prefetch=1, task_queue_size=1000)
    orch.on("task_started", recorder)
    rng = random.Random(7)
    ids: list[str] = []
    for n in range(400):
        spec = {"type": "sleep", "priority": rng.randint(0, 10), "config": {"seconds": rng.random() / 500}}
        ids.append(orch.submit_task(spec))
        if n >= 3:  # about four tasks in flight: two running, and some of them prefetched
            orch.wait(ids[n - 3], DEADLOCK_TIMEOUT)
    results = [orch.wait(task_id, DEADLOCK_TIMEOUT) for task_id in ids]
    assert all(r.success and r.attempts == 1 for r in results)
    recorder.wait_for(lambda events: len(events) == len(ids))
    assert sorted(e.task_id for e in recorder.events) == sorted(ids), "each task starts exactly once"
    status = orch.get_status()
    assert (status.queued, status.running, status.completed) == (0, 0, len(ids))
