"""Dependencies, plans, groups and adaptive concurrency, with real worker processes."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import GroupNotFoundError, PlanError, TaskNotFoundError, TaskStatus
from tests.conftest import DEADLOCK_TIMEOUT, Recorder, Release


def task(name: str, *depends_on: str, **config) -> dict:
    return {"id": name, "type": "deps", "description": name, "depends_on": list(depends_on), "config": config}


def test_diamond_runs_in_order_with_deps(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=2)
    orch.on("task_started", recorder)
    handle = orch.submit_plan(
        [
            task("a", value=1),
            task("b", "a", value=2),
            task("c", "a", value=3),
            task("d", "b", "c", x="$b.value"),
        ]
    )
    results = handle.wait(DEADLOCK_TIMEOUT)
    ids = handle.ids
    assert all(r.success for r in results.values())
    assert results["d"].data["deps"] == {
        ids["b"]: results["b"].data,
        ids["c"]: results["c"].data,
    }
    assert results["d"].data["config"]["x"] == 2
    recorder.wait_for(lambda events: len(events) == 4)
    order = [e.task_id for e in recorder.events]
    assert order[0] == ids["a"]
    assert order[-1] == ids["d"]
    assert handle.status()["completed"] == 4


def test_independent_branches_run_at_once(make_orch) -> None:
    orch = make_orch(max_workers=2)
    warm = [orch.submit_task({"type": "deps", "config": {"sleep": 0}}) for _ in range(2)]
    for task_id in warm:
        orch.wait(task_id, DEADLOCK_TIMEOUT)
    started = time.monotonic()
    handle = orch.submit_plan(
        [
            task("root"),
            task("left", "root", sleep=1.0),
            task("right", "root", sleep=1.0),
            task("join", "left", "right"),
        ]
    )
    assert all(r.success for r in handle.wait(DEADLOCK_TIMEOUT).values())
    assert time.monotonic() - started < 1.8


def test_a_wide_graph(make_orch) -> None:
    orch = make_orch(max_workers=3, task_queue_size=200)
    plan = [task("src", value=5)] + [task(f"w{i}", "src", v="$src.value") for i in range(40)]
    plan.append(task("sink", *[f"w{i}" for i in range(40)]))
    results = orch.submit_plan(plan).wait(DEADLOCK_TIMEOUT)
    assert len(results["sink"].data["deps"]) == 40
    assert {results[f"w{i}"].data["config"]["v"] for i in range(40)} == {5}


def test_failure_propagates_transitively_unless_a_task_chooses_to_run(make_orch) -> None:
    orch = make_orch(max_workers=2)
    plan = [
        task("a", fail=True),
        task("b", "a"),
        task("c", "b"),
        {**task("d", "a"), "on_dependency_failure": "run"},
        task("e"),
    ]
    handle = orch.submit_plan(plan)
    results = handle.wait(DEADLOCK_TIMEOUT)
    ids = handle.ids
    assert results["a"].error.kind == "exception"
    assert results["b"].error.kind == "dependency_failed"
    assert ids["a"] in results["b"].error.message
    assert results["c"].error.kind == "dependency_failed"
    assert ids["b"] in results["c"].error.message
    assert results["b"].started_at is None, "a dependant of a failure never runs"
    assert results["d"].success
    assert results["d"].data["deps"][ids["a"]]["error"] == "exception"
    assert results["e"].success


def test_depends_on_by_task_id(make_orch, release: Release, recorder: Recorder) -> None:
    orch = make_orch(max_workers=2, task_queue_size=5)
    orch.on("task_started", recorder)
    first = orch.submit_task({"type": "blocker", "config": release.config})
    recorder.wait_for(lambda events: len(events) == 1)
    second = orch.submit_task({"type": "deps", "depends_on": [first], "config": {"value": 1}})
    with pytest.raises(TaskNotFoundError, match="nope"):
        orch.submit_task({"type": "deps", "depends_on": ["nope"]})
    assert orch.get_task_status(second) is TaskStatus.QUEUED
    assert orch.get_status().queued == 1, "the dependant waits, counted as queued"
    release.open()
    result = orch.wait(second, DEADLOCK_TIMEOUT)
    assert result.data["deps"][first]["released"] == first
    late = orch.submit_task({"type": "deps", "depends_on": [first]})
    assert orch.wait(late, DEADLOCK_TIMEOUT).success, "depending on a completed task is fine"


def test_cancelling_a_dependency_fails_its_dependants(make_orch, release: Release) -> None:
    orch = make_orch(max_workers=1)
    blocker = orch.submit_task({"type": "blocker", "config": release.config})
    dependant = orch.submit_task({"type": "deps", "depends_on": [blocker]})
    orch.cancel(blocker)
    result = orch.wait(dependant, DEADLOCK_TIMEOUT)
    assert result.error.kind == "dependency_failed"
    assert "cancelled" in result.error.message
    release.open()


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ([task("a", "c"), task("b", "a"), task("c", "b")], "cycle: a -> b -> c -> a"),
        ([task("a"), task("a")], "duplicate id 'a'"),
        ([task("a"), task("b", x="$a.value")], r"refers to \$a"),
        ([task("a"), {"id": "b", "type": "nope"}], "task 'b': unknown task type 'nope'"),
        ([task("a"), {"id": "b", "type": "deps", "priority": 99}], "task 'b'.*priority"),
    ],
)
def test_rejected_plans_queue_nothing(make_orch, plan: list, message: str) -> None:
    orch = make_orch()
    with pytest.raises(PlanError, match=message):
        orch.submit_plan(plan)
    status = orch.get_status()
    assert (status.queued, status.running, status.completed) == (0, 0, 0)


def test_a_plan_grows_while_it_runs(make_orch, release: Release, recorder: Recorder) -> None:
    orch = make_orch(max_workers=2)
    orch.on("plan_completed", recorder)
    handle = orch.submit_plan(
        [{"id": "gate", "type": "blocker", "config": release.config}, task("first", value=1)]
    )
    added = handle.add([task("second", "first", got="$first.value"), task("third", "gate", "second")])
    assert set(added) == {"second", "third"}
    with pytest.raises(PlanError, match="duplicate id 'first'"):
        handle.add([task("first")])
    assert orch.wait(handle.ids["second"], DEADLOCK_TIMEOUT).data["config"]["got"] == 1
    release.open()
    results = handle.wait(DEADLOCK_TIMEOUT)
    assert set(results) == {"gate", "first", "second", "third"}
    recorder.wait_for(lambda events: len(events) == 1)
    assert recorder.events[0].name == handle.plan_id
    assert recorder.events[0].counts["completed"] == 4


def test_cancel_a_plan(make_orch, release: Release) -> None:
    orch = make_orch(max_workers=1)
    handle = orch.submit_plan([{"id": "a", "type": "blocker", "config": release.config}, task("b", "a")])
    assert handle.cancel() == 1, "cancelling a fails b at once, so b needs no cancel"
    results = handle.wait(DEADLOCK_TIMEOUT)
    assert results["a"].status is TaskStatus.CANCELLED
    assert results["b"].error.kind == "dependency_failed"
    release.open()


def test_groups_late_joiners_and_fan_in(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=2)
    orch.on("group_completed", recorder)
    first = [orch.submit_task({"type": "deps", "group": "g", "config": {"value": i}}) for i in range(3)]
    failing = orch.submit_task({"type": "deps", "group": "g", "config": {"fail": True}})
    fan_in = orch.submit_task({"type": "deps", "depends_on_group": "g", "on_dependency_failure": "run"})
    late = orch.submit_task({"type": "deps", "group": "g", "config": {"value": 9}})
    result = orch.wait(fan_in, DEADLOCK_TIMEOUT)
    assert set(result.data["deps"]) == {*first, failing}, "the fan-in waits for the members at its submit"
    assert result.data["deps"][failing]["error"] == "exception"
    members = orch.wait_group("g", DEADLOCK_TIMEOUT)
    assert [r.task_id for r in members] == [*first, failing, late]
    group = orch.get_group("g")
    assert (group.total, group.counts["completed"], group.counts["error"]) == (5, 4, 1)
    recorder.wait_for(lambda events: len(events) >= 1)
    assert recorder.events[-1].name == "g"
    strict = orch.submit_task({"type": "deps", "depends_on_group": "g"})
    assert orch.wait(strict, DEADLOCK_TIMEOUT).error.kind == "dependency_failed"
    with pytest.raises(GroupNotFoundError, match="nope"):
        orch.get_group("nope")
    with pytest.raises(GroupNotFoundError):
        orch.submit_task({"type": "deps", "depends_on_group": "nope"})


def test_cancel_group(make_orch, release: Release) -> None:
    orch = make_orch(max_workers=1)
    ids = [orch.submit_task({"type": "blocker", "group": "slow", "config": release.config}) for _ in range(3)]
    assert orch.cancel_group("slow") == 3
    assert {orch.wait(t, DEADLOCK_TIMEOUT).status for t in ids} == {TaskStatus.CANCELLED}
    release.open()


def test_rate_limits_halve_parallelism_and_successes_restore_it(make_orch, tmp_path) -> None:
    orch = make_orch(max_workers=4, worker_type_limits={"throttled": 4})
    gate = str(tmp_path / "gate")
    spec = {"type": "throttled", "config": {"gate": gate, "retry_after": 0.01}, "retries": 2}
    result = orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT)
    assert (result.error.kind, result.attempts) == ("rate_limit", 3)
    assert orch.get_status().type_limits["throttled"] == 1, "4 -> 2 -> 1"
    open(gate, "w").close()
    limits = []
    for _ in range(6):
        assert orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT).success
        limits.append(orch.get_status().type_limits["throttled"])
    assert limits == [2, 2, 3, 3, 3, 4]


@st.composite
def random_dags(draw: st.DrawFn) -> list[dict]:
    size = draw(st.integers(2, 9))
    plan = []
    for index in range(size):
        parents = draw(st.sets(st.integers(0, index - 1), max_size=3)) if index else set()
        spec = task(
            f"t{index}", *[f"t{p}" for p in sorted(parents)], fail=draw(st.booleans()) and draw(st.booleans())
        )
        spec["on_dependency_failure"] = draw(st.sampled_from(["fail", "run"]))
        plan.append(spec)
    return plan


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=random_dags())
def test_every_task_ends_once_and_never_before_its_dependencies(make_orch, plan: list[dict]) -> None:
    orch = (
        make_orch(max_workers=3, task_queue_size=50) if not hasattr(make_orch, "shared") else make_orch.shared
    )
    make_orch.shared = orch
    finals: list[str] = []
    unsubscribe = [
        orch.on(name, lambda e: finals.append(e.task_id))
        for name in ("task_completed", "task_error", "task_cancelled")
    ]
    handle = orch.submit_plan(plan)
    results = handle.wait(DEADLOCK_TIMEOUT)
    ids = handle.ids
    by_task = {ids[p]: r for p, r in results.items()}
    for spec in plan:
        result = results[spec["id"]]
        deps = [by_task[ids[d]] for d in spec["depends_on"]]
        if result.started_at is not None:
            assert all(d.finished_at <= result.started_at for d in deps)
        failed_dep = any(not d.success for d in deps)
        if failed_dep and spec["on_dependency_failure"] == "fail":
            assert result.error.kind == "dependency_failed"
        elif not spec["config"]["fail"]:
            assert result.success
    deadline = time.monotonic() + DEADLOCK_TIMEOUT
    while len(finals) < len(plan) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(finals) == sorted(ids.values()), "exactly one final event per task"
    for stop in unsubscribe:
        stop()
