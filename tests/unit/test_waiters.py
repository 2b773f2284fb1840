"""A task's waiters: added from any thread, each told once, none kept once the task is final."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from orchestrator.config import TaskSpec
from orchestrator.supervisor.record import TaskRecord, add_waiter, take_waiters
from tests.conftest import DEADLOCK_TIMEOUT

THREADS = 8


class RacingRecord(TaskRecord):
    """A record whose waiters each thread's first look finds only once every thread has looked:
    the moment at which all of them see that there is no list yet."""

    def __init__(self, threads: int) -> None:
        self.__dict__["first_looks"] = threading.Barrier(threads)
        self.__dict__["looked"] = threading.local()
        self.__dict__["racing"] = True
        super().__init__("t-1", 1, TaskSpec(type="echo"), "h", b"")

    @property  # type: ignore[override]
    def waiters(self) -> list[Callable[[Any], None]] | None:
        value: list[Callable[[Any], None]] | None = self.__dict__.get("list")
        if self.racing and not getattr(self.looked, "once", False):
            self.looked.once = True
            self.first_looks.wait(DEADLOCK_TIMEOUT)
        return value

    @waiters.setter
    def waiters(self, value: list[Callable[[Any], None]] | None) -> None:
        self.__dict__["list"] = value


def test_no_waiter_is_lost_when_threads_add_the_first_at_once() -> None:
    record = RacingRecord(THREADS)
    threads = [threading.Thread(target=add_waiter, args=(record, print)) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLOCK_TIMEOUT)
    record.racing = False
    assert take_waiters(record) == [print] * THREADS


def test_waiters_are_taken_once_and_the_record_keeps_no_list() -> None:
    record = TaskRecord("t-1", 1, TaskSpec(type="echo"), "h", b"")
    assert take_waiters(record) == []
    told: list[object] = []
    add_waiter(record, told.append)
    add_waiter(record, told.append)
    for notify in take_waiters(record):
        notify("result")
    assert told == ["result", "result"]
    assert record.waiters is None
    assert take_waiters(record) == []
