"""Faults made on purpose: timeouts, stuck handlers, crashes, memory limits, cancellation, host death."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from orchestrator import TaskStatus
from tests.conftest import DEADLOCK_TIMEOUT, Recorder, Release

CRASHES = [
    pytest.param("exit_hard", "EXIT(3)", id="os._exit"),
    pytest.param("sigkill_self", "SIGKILL", id="sigkill"),
    pytest.param("segfault", "SIGSEGV", id="segfault"),
]


def test_timeout_interrupts_the_handler_and_keeps_the_worker(make_orch) -> None:
    orch = make_orch(max_workers=1)
    started = time.monotonic()
    result = orch.wait(
        orch.submit_task({"type": "sleep", "config": {"seconds": 60}, "timeout": 0.5}), DEADLOCK_TIMEOUT
    )
    assert time.monotonic() - started < 5
    assert result.status is TaskStatus.ERROR
    assert result.error.kind == "timeout"
    assert "0.5 s" in result.error.message
    after = orch.wait(orch.submit_task({"type": "sleep", "config": {"seconds": 0}}), DEADLOCK_TIMEOUT)
    assert after.success
    assert after.worker_pid == result.worker_pid, "the same worker runs the next task"


def test_default_task_timeout_applies(make_orch) -> None:
    orch = make_orch(max_workers=1, default_task_timeout=0.3)
    result = orch.wait(orch.submit_task({"type": "async_sleep", "config": {"seconds": 60}}), DEADLOCK_TIMEOUT)
    assert result.error.kind == "timeout"
    again = orch.wait(orch.submit_task({"type": "async_sleep", "config": {"seconds": 0}}), DEADLOCK_TIMEOUT)
    assert again.success
    assert again.worker_pid == result.worker_pid


def test_uninterruptible_handler_is_killed_after_the_grace(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1, timeout_grace=0.5)
    orch.on("worker_exited", recorder)
    result = orch.wait(orch.submit_task({"type": "ignore_stop", "timeout": 0.3}), DEADLOCK_TIMEOUT)
    assert result.error.kind == "timeout"
    recorder.wait_for(lambda events: len(events) == 1)
    exited = recorder.events[0]
    assert (exited.pid, exited.reason, exited.exitcode) == (result.worker_pid, "timeout", -9)
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


@pytest.mark.parametrize(("handler", "how"), CRASHES)
@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_worker_crash_fails_only_its_task(
    make_orch, method: str, handler: str, how: str, recorder: Recorder
) -> None:
    orch = make_orch(max_workers=2, start_method=method)
    orch.on("worker_exited", recorder)
    result = orch.wait(orch.submit_task({"type": handler}), DEADLOCK_TIMEOUT)
    assert result.status is TaskStatus.ERROR
    assert result.error.kind == "worker_crashed"
    assert how in result.error.message
    assert str(result.worker_pid) in result.error.message
    recorder.wait_for(lambda events: len(events) == 1)
    assert recorder.events[0].reason == "crashed"
    ids = [orch.submit_task({"type": "echo", "config": {"i": i}}) for i in range(100)]
    assert all(orch.wait(t, DEADLOCK_TIMEOUT).success for t in ids)


def test_fifty_crashes_in_a_row_do_not_break_the_pool(make_orch) -> None:
    orch = make_orch(max_workers=2, task_queue_size=100)
    ids = [orch.submit_task({"type": "exit_hard"}) for _ in range(50)]
    assert {orch.wait(t, DEADLOCK_TIMEOUT).error.kind for t in ids} == {"worker_crashed"}
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


def test_memory_limit_kills_the_worker(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1, max_memory_mb=200)
    orch.on("worker_exited", recorder)
    result = orch.wait(orch.submit_task({"type": "allocate", "config": {"mb": 500}}), DEADLOCK_TIMEOUT)
    assert result.error.kind == "memory_limit"
    assert "max_memory_mb=200" in result.error.message
    recorder.wait_for(lambda events: len(events) == 1)
    assert recorder.events[0].reason == "memory_limit"
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


def test_cancel_a_queued_task(make_orch, release: Release) -> None:
    orch = make_orch(max_workers=1)
    cancelled = Recorder()
    orch.on("task_cancelled", cancelled)
    running = orch.submit_task({"type": "blocker", "config": release.config})
    errors = Recorder()
    queued = orch.submit_task({"type": "blocker", "config": release.config}, on_error=errors)
    assert orch.cancel(queued) is True
    errors.wait_for(lambda events: len(events) == 1)
    assert errors.events[0].error.kind == "cancelled", "on_error hears of a cancellation"
    result = orch.get_result(queued)
    assert result.status is TaskStatus.CANCELLED
    assert result.error.kind == "cancelled"
    assert orch.cancel(queued) is False
    release.open()
    assert orch.wait(running, DEADLOCK_TIMEOUT).success
    cancelled.wait_for(lambda events: len(events) == 1)
    assert cancelled.events[0].task_id == queued


def test_cancel_a_running_task_stops_its_handler(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1)
    orch.on("task_started", recorder)
    task_id = orch.submit_task({"type": "sleep", "config": {"seconds": 60}})
    recorder.wait_for(lambda events: len(events) == 1)
    assert orch.cancel(task_id) is True
    result = orch.wait(task_id, DEADLOCK_TIMEOUT)
    assert result.status is TaskStatus.CANCELLED
    after = orch.wait(orch.submit_task({"type": "sleep", "config": {"seconds": 0}}), DEADLOCK_TIMEOUT)
    assert after.worker_pid == result.worker_pid, "the handler stopped and the worker survived"


def test_cancel_turns_ctx_cancelled_true(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1)
    orch.on("task_started", recorder)
    task_id = orch.submit_task({"type": "poll_cancel"})
    recorder.wait_for(lambda events: len(events) == 1)
    orch.cancel(task_id)
    assert orch.wait(task_id, DEADLOCK_TIMEOUT).status is TaskStatus.CANCELLED
    assert (
        orch.wait(orch.submit_task({"type": "poll_cancel", "timeout": 0.2}), DEADLOCK_TIMEOUT).error.kind
        == "timeout"
    )


HOST = """
import os, sys, time
sys.path.insert(0, {root!r})
from orchestrator import ParallelOrchestrator
from tests.helpers.tasks import HANDLERS

if __name__ == "__main__":
    orch = ParallelOrchestrator(max_workers=2, start_method={method!r}, handlers=HANDLERS)
    orch.on("task_started", lambda event: print("started", event.pid, flush=True))
    for _ in range(2):
        orch.submit_task({{"type": "sleep", "config": {{"seconds": 600}}}})
    time.sleep(600)
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_workers_exit_when_the_host_is_killed(tmp_path, method: str) -> None:
    script = tmp_path / "host.py"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script.write_text(textwrap.dedent(HOST.format(root=root, method=method)))
    host = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(host.stdout.readline().split()[1]) for _ in range(2)]
        family = psutil.Process(host.pid).children(recursive=True)
        host.kill()
        deadline = time.monotonic() + 2.0
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family):
            assert time.monotonic() < deadline, f"still alive 2 s after the host died: {family}"
            time.sleep(0.02)
        assert all(
            not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE for pid in pids
        )
    finally:
        host.kill()
        host.wait()
        host.stdout.close()


UNGUARDED = """
import sys
sys.path.insert(0, {root!r})
from orchestrator import ParallelOrchestrator
orch = ParallelOrchestrator(max_workers=1, start_method={method!r})
result = orch.wait(orch.submit_task({{"type": "analyze", "config": {{"data": [1, 2, 3]}}}}), 30)
print("RESULT", result.error.kind if result.error else "ok", flush=True)
orch.shutdown()
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_host_script_without_main_guard_gets_a_clear_error(tmp_path, method: str) -> None:
    script = tmp_path / "unguarded.py"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script.write_text(UNGUARDED.format(root=root, method=method))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=DEADLOCK_TIMEOUT
    )
    assert "RESULT worker_crashed" in done.stdout
    assert 'if __name__ == "__main__":' in done.stderr


def test_retry_after_a_crash_on_the_first_attempt(make_orch) -> None:
    orch = make_orch(max_workers=1)
    result = orch.wait(
        orch.submit_task({"type": "crash_once", "retries": 2, "retry_backoff": 0.01}), DEADLOCK_TIMEOUT
    )
    assert result.success
    assert (result.data, result.attempts) == (2, 2)


def test_retries_exhausted(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1)
    orch.on("task_error", recorder)
    orch.on("task_started", recorder)
    result = orch.wait(
        orch.submit_task({"type": "exit_hard", "retries": 2, "retry_backoff": 0.01}), DEADLOCK_TIMEOUT
    )
    assert result.error.kind == "worker_crashed"
    assert result.attempts == 3
    recorder.wait_for(lambda events: "task_error" in [e.event for e in events])
    assert recorder.names() == ["task_started"] * 3 + ["task_error"], "one final event, after three attempts"


def test_exceptions_are_retried_only_when_asked(make_orch) -> None:
    orch = make_orch(max_workers=1)
    plain = orch.wait(orch.submit_task({"type": "fail", "retries": 2, "retry_backoff": 0}), DEADLOCK_TIMEOUT)
    assert (plain.error.kind, plain.attempts) == ("exception", 1)
    spec = {"type": "fail", "retries": 2, "retry_backoff": 0, "retry_on_exception": True}
    asked = orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT)
    assert (asked.error.kind, asked.attempts) == ("exception", 3)


def test_rate_limit_is_retried(make_orch) -> None:
    orch = make_orch(max_workers=1)
    spec = {"type": "rate_limited", "config": {"ok_on": 3}, "retries": 3, "retry_backoff": 0.01}
    result = orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT)
    assert (result.data, result.attempts) == (3, 3)
    spec = {"type": "rate_limited", "retries": 1, "retry_backoff": 0.01}
    result = orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT)
    assert (result.error.kind, result.attempts) == ("rate_limit", 2)


def test_a_timed_out_attempt_is_retried_with_the_same_id(make_orch) -> None:
    orch = make_orch(max_workers=1)
    task_id = orch.submit_task(
        {"type": "sleep", "config": {"seconds": 60}, "timeout": 0.2, "retries": 1, "retry_backoff": 0}
    )
    result = orch.wait(task_id, DEADLOCK_TIMEOUT)
    assert (result.task_id, result.error.kind, result.attempts) == (task_id, "timeout", 2)


def test_cancel_during_retry_backoff(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1)
    orch.on("task_started", recorder)
    task_id = orch.submit_task({"type": "exit_hard", "retries": 3, "retry_backoff": 30})
    recorder.wait_for(lambda events: len(events) == 1)
    orch.get_status()  # a round trip through the supervisor
    assert orch.cancel(task_id) is True
    assert orch.wait(task_id, DEADLOCK_TIMEOUT).status is TaskStatus.CANCELLED
    assert orch.get_status().queued == 0


def test_cpu_time_limit(make_orch) -> None:
    orch = make_orch(max_workers=1, max_cpu_seconds=0.3, resource_check_interval=0.1)
    result = orch.wait(orch.submit_task({"type": "busy_cpu"}), DEADLOCK_TIMEOUT)
    assert result.error.kind == "timeout"
    assert "CPU time" in result.error.message
    after = orch.wait(orch.submit_task({"type": "busy_cpu", "timeout": 0.2}), DEADLOCK_TIMEOUT)
    assert after.worker_pid == result.worker_pid, "a pure-Python loop is interrupted; the worker survives"
