"""Tasks that talk: topics, sub-tasks, waiting without starving the pool, cascading cancels, teams."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from typing import Any

import pytest

from orchestrator import Message, ParallelOrchestrator, TaskStatus
from tests.conftest import DEADLOCK_TIMEOUT, Recorder


class Inbox:
    """A host subscription that collects messages and lets a test wait for a count."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()

    def __call__(self, message: Message) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def wait_for(self, count: int) -> list[Message]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, DEADLOCK_TIMEOUT):
                raise AssertionError(f"{len(self.messages)} of {count} messages came: {self.messages}")
            return list(self.messages)


def start_listeners(orch: ParallelOrchestrator, count: int, messages: int, **config: Any) -> list[str]:
    """Listeners on topic 't', each subscribed (it said so on 'ready') when this returns."""
    ready = Inbox()
    orch.subscribe("ready", ready)
    ids = [
        orch.submit_task(
            {"type": "listener", "config": {"topic": "t", "ready": "ready", "count": messages, **config}}
        )
        for _ in range(count)
    ]
    ready.wait_for(count)
    return ids


def test_every_subscriber_gets_every_publisher_in_order(make_orch) -> None:
    orch = make_orch(max_workers=5)
    listeners = start_listeners(orch, 2, 3 * 20 + 5)
    host_inbox = Inbox()
    orch.subscribe("t", host_inbox)
    talkers = [orch.submit_task({"type": "talker", "config": {"topic": "t", "count": 20}}) for _ in range(3)]
    for n in range(5):
        orch.publish("t", {"n": n, "blob": None})
    assert all(orch.wait(task_id, DEADLOCK_TIMEOUT).success for task_id in talkers)
    for task_id in listeners:
        got = orch.wait(task_id, DEADLOCK_TIMEOUT).data
        by_sender: dict[str | None, list[int]] = {}
        for item in got:
            assert item["dropped"] == 0
            by_sender.setdefault(item["sender"], []).append(item["data"]["n"])
        assert by_sender == {**{t: list(range(20)) for t in talkers}, None: list(range(5))}
    received = host_inbox.wait_for(65)
    assert Counter(m.sender for m in received) == {**dict.fromkeys(talkers, 20), None: 5}
    assert all(isinstance(m, Message) and m.topic == "t" and m.dropped == 0 for m in received)


def test_a_full_buffer_drops_the_oldest_and_counts(make_orch) -> None:
    orch = make_orch(max_pending_messages=10)
    ready = Inbox()
    orch.subscribe("ready", ready)
    task_id = orch.submit_task({"type": "backlog"})
    ready.wait_for(1)
    for n in range(25):
        orch.publish("data", n)
    orch.publish("go", True)
    got = orch.wait(task_id, DEADLOCK_TIMEOUT).data
    assert got == [[15, 15]] + [[n, 0] for n in range(16, 25)]


def test_a_host_subscription_overflows_the_same_way(make_orch) -> None:
    orch = make_orch(max_pending_messages=3)
    release = threading.Event()
    seen: list[tuple[Any, int]] = []

    def slow(message: Message) -> None:
        release.wait(DEADLOCK_TIMEOUT)
        seen.append((message.data, message.dropped))

    unsubscribe = orch.subscribe("slow", slow)
    for n in range(10):
        orch.publish("slow", n)  # at most one is in the blocked callback and 3 wait: 6+ dropped
    release.set()
    orch.publish("slow", "last")
    done = Inbox()
    orch.subscribe("slow", done)
    orch.publish("slow", "end")
    done.wait_for(1)
    unsubscribe()
    order = [*range(10), "last", "end"]
    positions = [order.index(data) for data, _ in seen]
    assert positions == sorted(positions)
    assert seen[-1] == ("end", 0)
    assert sum(dropped for _, dropped in seen) + len(seen) == 12
    assert sum(dropped for _, dropped in seen) >= 6


def test_large_payloads_fan_out_through_shared_memory_intact(make_orch) -> None:
    orch = make_orch()
    blob = bytes(range(256)) * 1024  # 256 KiB: over the shared-memory threshold
    listeners = start_listeners(orch, 2, 2)
    orch.publish("t", {"n": 0, "blob": blob})
    talker = orch.submit_task({"type": "talker", "config": {"topic": "t", "count": 1, "blob": blob}})
    assert orch.wait(talker, DEADLOCK_TIMEOUT).success
    for task_id in listeners:
        for item in orch.wait(task_id, DEADLOCK_TIMEOUT).data:
            assert item["data"]["size"] == len(blob)
            assert item["data"]["blob"] == hashlib.sha256(blob).hexdigest()


def test_a_subscriber_crash_does_not_stop_the_others(make_orch) -> None:
    orch = make_orch()
    crashing = start_listeners(orch, 1, 1, crash=True)[0]
    steady = start_listeners(orch, 1, 3)[0]
    for n in range(3):
        orch.publish("t", {"n": n, "blob": None})
    assert orch.wait(crashing, DEADLOCK_TIMEOUT).error.kind == "worker_crashed"
    assert [item["data"]["n"] for item in orch.wait(steady, DEADLOCK_TIMEOUT).data] == [0, 1, 2]


def test_bad_submits_and_publishes_fail_in_the_caller(make_orch) -> None:
    orch = make_orch()
    outcomes = orch.wait(orch.submit_task({"type": "misuse", "group": "crew"}), DEADLOCK_TIMEOUT).data
    assert outcomes["group"] == "crew"
    assert outcomes["unknown_type"].startswith("UnknownTaskTypeError: unknown task type 'no-such-type'")
    assert outcomes["invalid_spec"].startswith("ValueError")
    assert "priority" in outcomes["invalid_spec"]
    assert outcomes["unserialisable"].startswith("TypeError")
    assert "set" in outcomes["unserialisable"]
    assert outcomes["non_str_key"].startswith("TypeError")
    assert outcomes["unknown_id"].startswith("KeyError")
    assert "nobody-1" in outcomes["unknown_id"]
    assert outcomes["is_value_error"] is True
    with pytest.raises(TypeError, match="set"):
        orch.publish("t", {1, 2})
    with pytest.raises(TypeError, match="beyond 64 bits"):
        orch.publish("t", 2**70)


@pytest.mark.parametrize("mode", ["wait", "as_completed"])
def test_coordinators_gather_children_on_a_small_pool(make_orch, mode: str, recorder: Recorder) -> None:
    orch = make_orch(max_workers=2)
    orch.on("task_queued", recorder)
    coordinators = [
        orch.submit_task({"type": "coordinator", "config": {"children": 20, "mode": mode}}) for _ in range(2)
    ]
    for task_id in coordinators:
        result = orch.wait(task_id, DEADLOCK_TIMEOUT)
        assert result.success, result.error
        assert result.data == list(range(20))
    parents = Counter(e.parent for e in recorder.events)
    assert parents == {None: 2, coordinators[0]: 20, coordinators[1]: 20}
    assert max(w.worker_id for w in orch.get_workers()) <= 8  # lent slots, not a worker per child


def test_an_async_coordinator_awaits_its_children(make_orch) -> None:
    orch = make_orch(max_workers=2)
    result = orch.wait(orch.submit_task({"type": "async_coordinator"}), DEADLOCK_TIMEOUT)
    assert result.success, result.error
    assert result.data["values"] == [0, 1, 2, 3]
    assert "wait_async" in result.data["blocking"]


def children_of(recorder: Recorder, parent_id: str) -> list[str]:
    return [e.task_id for e in recorder.events if e.event == "task_queued" and e.parent == parent_id]


@pytest.mark.parametrize(("end", "kind"), [("cancel", "cancelled"), ("timeout", "timeout"),
                                           ("crash", "worker_crashed"), ("fail", "exception")])  # fmt: skip
def test_a_parent_that_fails_takes_its_attached_children_along(
    make_orch, recorder: Recorder, release, end: str, kind: str
) -> None:
    orch = make_orch(max_workers=4, timeout_grace=1.0)
    orch.on("task_queued", recorder)
    detached_spec = {"type": "blocker", "config": release.config}
    spec: dict[str, Any] = {"type": "parent", "config": {"end": end, "detached": detached_spec}}
    if end == "timeout":
        spec["timeout"] = 1.0
    parent_id = orch.submit_task(spec)
    recorder.wait_for(lambda events: len(children_of(recorder, parent_id)) == 2)
    attached, detached = children_of(recorder, parent_id)
    if end == "cancel":
        assert orch.cancel(parent_id)
    assert orch.wait(parent_id, DEADLOCK_TIMEOUT).error.kind == kind
    child = orch.wait(attached, DEADLOCK_TIMEOUT)
    assert child.status is TaskStatus.CANCELLED
    assert child.error.kind == "cancelled"
    assert parent_id in child.error.message
    assert kind in child.error.message
    assert child.parent == parent_id
    release.open()
    assert orch.wait(detached, DEADLOCK_TIMEOUT).success


def test_a_parent_that_succeeds_leaves_its_children_running(make_orch, recorder: Recorder, release) -> None:
    orch = make_orch(max_workers=4)
    orch.on("task_queued", recorder)
    spec = {"type": "parent", "config": {"end": "succeed", "detached": {"type": "echo"}}}
    parent_id = orch.submit_task(spec)
    assert orch.wait(parent_id, DEADLOCK_TIMEOUT).success
    attached, _ = children_of(recorder, parent_id)
    assert orch.get_task_status(attached) in (TaskStatus.QUEUED, TaskStatus.RUNNING)
    assert orch.cancel(attached)


def run_team(orch: ParallelOrchestrator, size: int, rounds: int) -> tuple[list[Any], Any]:
    """The agent-team pattern: all ready, then "go", then rounds of findings; a judge reads the last."""
    team = "team-1"
    heard: set[str] = set()
    everyone_ready = threading.Event()

    def on_team(message: Message) -> None:
        if message.data["kind"] == "ready":
            heard.add(message.sender or "")
            if len(heard) == size + 1:
                everyone_ready.set()

    orch.subscribe(team, on_team)
    config = {"team": team, "size": size, "rounds": rounds}
    members = [orch.submit_task({"type": "member", "config": {**config, "seed": 2**i}}) for i in range(size)]
    judge = orch.submit_task({"type": "judge", "config": config})
    assert everyone_ready.wait(DEADLOCK_TIMEOUT)
    orch.publish(team, {"kind": "go"})
    findings = [orch.wait(task_id, DEADLOCK_TIMEOUT) for task_id in members]
    verdict = orch.wait(judge, DEADLOCK_TIMEOUT)
    assert all(result.success for result in [*findings, verdict]), [*findings, verdict]
    return [result.data for result in findings], verdict.data


@pytest.mark.parametrize("workers", [4, 2])
def test_a_team_of_three_and_a_judge_over_three_rounds(make_orch, workers: int) -> None:
    orch = make_orch(max_workers=workers)
    findings, last_round = run_team(orch, size=3, rounds=3)
    # Seeds 1, 2, 4: after round 0 everyone holds 7, then 21, then 63 -- only if each member
    # took in the others' findings of every round.
    assert findings == [63, 63, 63]
    assert last_round == [21, 21, 21]


def test_an_async_handler_iterates_its_subscription(make_orch) -> None:
    orch = make_orch()
    ready = Inbox()
    orch.subscribe("ready", ready)
    config = {"topic": "a", "ready": "ready", "count": 3}
    task_id = orch.submit_task({"type": "async_listener", "config": config})
    ready.wait_for(1)
    for n in range(3):
        orch.publish("a", n)
    assert orch.wait(task_id, DEADLOCK_TIMEOUT).data == [0, 1, 2]


def until(predicate: Any) -> None:
    """Poll a state no event reports (a worker's state), up to the deadlock timeout."""
    deadline = time.monotonic() + DEADLOCK_TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_waiting_task_lends_its_worker_and_a_cancel_ends_the_wait_at_once(make_orch) -> None:
    orch = make_orch(max_workers=1, timeout_grace=60.0)
    told = Inbox()
    orch.subscribe("waiting", told)
    waiter = orch.submit_task({"type": "waiter"})
    child = told.wait_for(1)[0].data
    until(lambda: any(w.state == "waiting" and w.current_task == waiter for w in orch.get_workers()))
    until(lambda: orch.get_task_status(child) is TaskStatus.RUNNING)  # on a second worker
    pid = next(w.pid for w in orch.get_workers() if w.current_task == waiter)
    assert orch.cancel(waiter)
    result = orch.wait(waiter, DEADLOCK_TIMEOUT)  # far less than the 60 s grace: no kill needed
    assert result.error.kind == "cancelled"
    assert orch.wait(child, DEADLOCK_TIMEOUT).error.kind == "cancelled"
    assert pid in [w.pid for w in orch.get_workers()]  # the worker survived: it was not killed


def test_a_retried_parent_cancels_its_earlier_children_first(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=4)
    orch.on("task_queued", recorder)
    spec = {"type": "parent", "retries": 1, "retry_on_exception": True, "retry_backoff": 0.01,
            "config": {"end": "fail", "detached": {"type": "echo"}}}  # fmt: skip
    parent_id = orch.submit_task(spec)
    assert orch.wait(parent_id, DEADLOCK_TIMEOUT).attempts == 2
    recorder.wait_for(lambda events: len(children_of(recorder, parent_id)) == 4)
    first_attached, _, second_attached, _ = children_of(recorder, parent_id)
    first = orch.wait(first_attached, DEADLOCK_TIMEOUT)
    second_queued = next(e.timestamp for e in recorder.events if e.task_id == second_attached)
    assert first.status is TaskStatus.CANCELLED
    assert first.finished_at is not None
    assert first.finished_at <= second_queued
    assert orch.wait(second_attached, DEADLOCK_TIMEOUT).status is TaskStatus.CANCELLED


def test_the_readme_team_example_larger_than_its_pool(make_orch) -> None:
    from examples.team import run_team as example_team

    handlers = {"member": "examples.team:member", "judge": "examples.team:judge"}
    orch = make_orch(max_workers=2, max_waiting_tasks=6, handlers=handlers)
    findings, verdict = example_team(orch, size=5, rounds=2)
    assert findings == [75] * 5  # seeds 1..5: 15 after round 0, 75 after round 1
    assert verdict == [15] * 5
