"""The ready queue, the queue slots and the timer heap, without processes or clocks."""

from __future__ import annotations

import pytest

from orchestrator.scheduler import QueueSlots, ReadyQueue, Timers


def fill(queue: ReadyQueue, entries: list[tuple[str, int, str]]) -> None:
    for seq, (task_type, priority, task_id) in enumerate(entries):
        queue.push(task_type, priority, float(seq), seq, task_id)


def drain(queue: ReadyQueue, may_run=lambda task_type: True) -> list[str]:
    order = []
    while (best := queue.peek_best(may_run)) is not None:
        assert queue.pop(best[0]) == best[1]
        order.append(best[1])
    return order


def test_highest_priority_first_then_fifo() -> None:
    queue = ReadyQueue()
    fill(
        queue,
        [("a", 1, "low"), ("b", 9, "urgent-1"), ("a", 5, "mid"), ("b", 9, "urgent-2"), ("c", 9, "urgent-3")],
    )
    assert len(queue) == 5
    assert drain(queue) == ["urgent-1", "urgent-2", "urgent-3", "mid", "low"]
    assert len(queue) == 0


def test_within_a_priority_the_earlier_due_runs_first() -> None:
    queue = ReadyQueue()
    queue.push("a", 5, 10.0, 1, "submitted-first-due-late")
    queue.push("a", 5, 2.0, 2, "due-early")
    queue.push("a", 5, 2.0, 3, "due-early-too")
    queue.push("a", 6, 50.0, 4, "higher-priority")
    assert drain(queue) == ["higher-priority", "due-early", "due-early-too", "submitted-first-due-late"]


def test_a_type_that_may_not_run_does_not_block_others() -> None:
    queue = ReadyQueue()
    fill(queue, [("capped", 10, "c1"), ("capped", 10, "c2"), ("free", 0, "f1")])
    assert drain(queue, lambda task_type: task_type != "capped") == ["f1"]
    assert drain(queue) == ["c1", "c2"]


def test_removed_tasks_are_skipped() -> None:
    queue = ReadyQueue()
    fill(queue, [("a", 5, "x"), ("a", 5, "y"), ("b", 1, "z")])
    queue.remove("x")
    queue.remove("z")
    assert len(queue) == 1
    assert queue.task_ids() == ["y"]
    assert drain(queue) == ["y"]


def test_pop_of_an_empty_type_raises() -> None:
    queue = ReadyQueue()
    fill(queue, [("a", 5, "x")])
    queue.remove("x")
    with pytest.raises(KeyError, match="'a'"):
        queue.pop("a")


def test_timers_fire_in_deadline_order_and_cancelled_ones_never() -> None:
    timers = Timers()
    fired: list[str] = []
    timers.schedule(3.0, fired.append, "third")
    first = timers.schedule(1.0, fired.append, "first")
    cancelled = timers.schedule(2.0, fired.append, "cancelled")
    Timers.cancel(cancelled)
    Timers.cancel(None)
    assert timers.time_to_next(0.5) == pytest.approx(0.5)
    for timer in timers.pop_due(2.5):
        timer.action(*timer.args)
    assert fired == ["first"]
    assert first.deadline == 1.0
    assert timers.time_to_next(2.5) == pytest.approx(0.5)
    assert timers.time_to_next(10.0) == 0.0
    for timer in timers.pop_due(10.0):
        timer.action(*timer.args)
    assert fired == ["first", "third"]
    assert timers.time_to_next(10.0) is None


def test_queue_slots_take_all_or_none_and_come_back() -> None:
    slots = QueueSlots(3)
    assert slots.take(2)
    assert not slots.take(2), "two more would not fit: none are taken"
    assert slots.take(1)
    assert not slots.take(1)
    slots.give()  # a queued task started
    assert slots.take(1)
    slots.untake(1)  # a submit that took a slot failed after all
    assert slots.take(1)
    assert not slots.take(1)
