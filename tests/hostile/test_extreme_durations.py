"""Valid but extreme durations: timers beyond what a system call can wait, and "never".

epoll takes its timeout as a C int of milliseconds, so every timer 24.8 days or more away used to
raise OverflowError in the supervisor's loop, which then cancelled every open task.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator import ConfigError, InvalidTaskError, ParallelOrchestrator, TaskStatus
from tests.conftest import DEADLOCK_TIMEOUT, Recorder, Release

pytestmark = pytest.mark.timeout(60)

# Past epoll's limit of 2**31 ms (24.8 days).
MONTH = 31 * 86_400.0


def assert_still_serves(orch: ParallelOrchestrator) -> None:
    """The supervisor is alive: a new task runs to completion and the status answers."""
    tid = orch.submit_task({"type": "echo", "config": {"value": "alive"}})
    assert orch.wait(tid, timeout=DEADLOCK_TIMEOUT).success
    assert orch.get_status().queued >= 0
    assert orch._supervisor is not None
    assert orch._supervisor.thread.is_alive()


@pytest.mark.parametrize(
    ("overrides", "spec"),
    [
        ({}, {"timeout": MONTH}),
        ({}, {"timeout": math.inf}),
        ({"default_task_timeout": MONTH}, {}),
        ({"default_task_timeout": math.inf}, {}),
    ],
    ids=["timeout-month", "timeout-inf", "default-month", "default-inf"],
)
def test_a_running_task_with_a_far_timeout(
    make_orch: Callable[..., ParallelOrchestrator],
    release: Release,
    overrides: dict[str, Any],
    spec: dict[str, Any],
) -> None:
    orch = make_orch(max_workers=2, **overrides)
    long_one = orch.submit_task({"type": "blocker", "config": release.config, **spec})
    assert_still_serves(orch)
    release.open()
    assert orch.wait(long_one, timeout=DEADLOCK_TIMEOUT).success


def test_a_task_delayed_by_a_month(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    orch = make_orch(max_workers=1)
    later = orch.submit_task({"type": "echo"}, delay=MONTH)
    assert_still_serves(orch)
    assert orch.get_task_status(later) is TaskStatus.QUEUED
    assert orch.cancel(later)


def test_a_monthly_schedule(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    orch = make_orch(max_workers=1)
    orch.schedule({"type": "echo"}, name="monthly", every=MONTH)
    assert_still_serves(orch)
    orch.unschedule("monthly")


@pytest.mark.parametrize("idle_timeout", [MONTH, math.inf])
def test_workers_that_never_retire(
    make_orch: Callable[..., ParallelOrchestrator], idle_timeout: float
) -> None:
    orch = make_orch(max_workers=1, idle_timeout=idle_timeout)
    assert_still_serves(orch)  # its worker now idles with a timer a month away, or none
    assert_still_serves(orch)
    assert orch.get_status().workers == 1


@pytest.mark.parametrize("retry_after", [None, MONTH, math.inf])
def test_a_retry_a_month_away(
    make_orch: Callable[..., ParallelOrchestrator], retry_after: float | None
) -> None:
    """A long backoff, or a handler relaying a long Retry-After: the task waits queued, the rest runs."""
    orch = make_orch(max_workers=1)
    spec = {"retries": 1, "retry_backoff": MONTH, "retry_backoff_max": MONTH}
    tid = orch.submit_task({"type": "rate_limited", "config": {"retry_after": retry_after}, **spec})
    assert_still_serves(orch)
    assert orch.get_task_status(tid) is TaskStatus.QUEUED
    assert orch.cancel(tid)


def test_retry_backoff_is_capped(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    """retry_backoff_max bounds the backoff and a handler's retry_after alike."""
    orch = make_orch(max_workers=1)
    spec = {"retries": 2, "retry_backoff": MONTH, "retry_backoff_max": 0.01}
    tid = orch.submit_task({"type": "rate_limited", "config": {"ok_on": 3}, **spec})
    assert orch.wait(tid, timeout=DEADLOCK_TIMEOUT).data == 3
    tid = orch.submit_task({"type": "rate_limited", "config": {"ok_on": 2, "retry_after": MONTH}, **spec})
    assert orch.wait(tid, timeout=DEADLOCK_TIMEOUT).data == 2


@pytest.mark.parametrize("grace", [MONTH, math.inf])
def test_a_stopped_handler_with_a_far_grace(
    make_orch: Callable[..., ParallelOrchestrator], release: Release, recorder: Recorder, grace: float
) -> None:
    orch = make_orch(max_workers=2, timeout_grace=grace)
    orch.on("task_started", recorder)
    stuck = orch.submit_task({"type": "stubborn", "config": release.config})
    recorder.wait_for(lambda events: len(events) == 1)
    assert orch.cancel(stuck)
    assert_still_serves(orch)  # on the second worker: the first still runs the stubborn handler
    assert orch.get_status().workers == 2
    release.open()


def test_result_ttl_of_never(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    orch = make_orch(max_workers=1, result_ttl=math.inf)
    tid = orch.submit_task({"type": "echo"})
    assert orch.wait(tid, timeout=DEADLOCK_TIMEOUT).success
    assert_still_serves(orch)
    assert orch.get_result(tid) is not None


@pytest.mark.parametrize("timeout", [MONTH, 1e12, math.inf])
def test_caller_waits_that_no_lock_can_time(
    make_orch: Callable[..., ParallelOrchestrator], timeout: float
) -> None:
    orch = make_orch(max_workers=1)
    tid = orch.submit_task({"type": "echo"})
    assert orch.wait(tid, timeout=timeout).success
    assert [r.task_id for r in orch.as_completed([tid], timeout=timeout)] == [tid]


def test_nan_timeouts_are_refused(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    orch = make_orch(max_workers=1)
    tid = orch.submit_task({"type": "echo"})
    with pytest.raises(ValueError, match="nan"):
        orch.wait(tid, timeout=math.nan)
    with pytest.raises(ValueError, match="nan"):
        list(orch.as_completed([tid], timeout=math.nan))
    with pytest.raises(ValueError, match="timeout"):
        orch.shutdown(timeout=math.nan)
    assert_still_serves(orch)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", math.nan),
        ("timeout", -1.0),
        ("timeout", "10"),
        ("retry_backoff", math.inf),
        ("retry_backoff", math.nan),
        ("retry_backoff_max", math.inf),
        ("retry_on", ["not a name"]),
    ],
)
def test_task_durations_are_strict(
    make_orch: Callable[..., ParallelOrchestrator], field: str, value: Any
) -> None:
    orch = make_orch(max_workers=1)
    with pytest.raises(InvalidTaskError, match=field):
        orch.submit_task({"type": "echo", field: value})
    assert orch.get_status().queued == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("idle_timeout", math.nan),
        ("idle_timeout", "300"),
        ("timeout_grace", math.nan),
        ("default_task_timeout", math.nan),
        ("resource_check_interval", math.inf),
        ("max_memory_mb", math.inf),
        ("result_ttl", math.nan),
        ("dask_connect_timeout", math.inf),
        ("max_waiting_tasks", 1.5),
    ],
)
def test_config_durations_are_strict(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        ParallelOrchestrator(**{field: value})
