"""The event bus: order, coalescing of progress, and isolation from failing callbacks."""

from __future__ import annotations

import threading

import pytest

from orchestrator.events import EventBus, call_each


def test_deliveries_run_in_order_on_one_thread() -> None:
    bus = EventBus("test")
    seen: list[tuple[str, int]] = []
    for i in range(50):
        bus.post("t", lambda i=i: seen.append((threading.current_thread().name, i)))
    bus.start()
    bus.close()
    assert [i for _, i in seen] == list(range(50))
    assert {name for name, _ in seen} == {"orch-events-test"}


def test_progress_coalesces_only_while_it_is_the_last_item_of_its_task() -> None:
    bus = EventBus("test")
    seen: list[object] = []
    bus.post("t", seen.append, "started")
    bus.post("t", seen.append, "p1", coalescible=True)
    bus.post("t", seen.append, "p2", coalescible=True)
    bus.post("u", seen.append, "other task")
    bus.post("t", seen.append, "p3", coalescible=True)
    bus.post("t", seen.append, "partial")
    bus.post("t", seen.append, "p4", coalescible=True)
    bus.start()
    bus.close()
    assert seen == ["started", "p3", "other task", "partial", "p4"]


def test_a_raising_callback_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    got: list[int] = []

    def broken(value: int) -> None:
        raise RuntimeError("bug in callback")

    call_each((broken, got.append), 7, "test_event")
    assert got == [7]
    assert "bug in callback" in caplog.text


def test_subscribe_and_unsubscribe() -> None:
    bus = EventBus("test")
    unsubscribe = bus.on("task_completed", print)
    assert bus.listeners("task_completed") == (print,)
    unsubscribe()
    unsubscribe()
    assert bus.listeners("task_completed") == ()
    with pytest.raises(ValueError, match="unknown event"):
        bus.on("nope", print)
    with pytest.raises(TypeError, match="callable"):
        bus.on("task_queued", 3)  # type: ignore[arg-type]
