"""Processes a handler starts end with its task: when it returns, when it is stopped, and when it
ignores the stop; a double-forked daemon escapes by design, and never holds shutdown."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from orchestrator import ParallelOrchestrator
from tests.conftest import DEADLOCK_TIMEOUT

pytestmark = pytest.mark.timeout(60)


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended (polled up to the deadlock timeout: its end is asynchronous)."""
    deadline = time.monotonic() + DEADLOCK_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


def child_pid(pidfile: Path) -> int:
    return int(pidfile.read_text())


@pytest.mark.parametrize("start_method", ["forkserver", "fork"])
def test_a_child_ends_when_its_handler_returns(
    make_orch: Callable[..., ParallelOrchestrator], tmp_path: Path, start_method: str
) -> None:
    orch = make_orch(max_workers=1, start_method=start_method)
    pidfile = tmp_path / "child.pid"
    result = orch.wait(
        orch.submit_task({"type": "with_child", "config": {"mode": "return", "pidfile": str(pidfile)}}),
        DEADLOCK_TIMEOUT,
    )
    assert result.success
    assert gone(child_pid(pidfile)), "the child outlived its task"
    worker = orch.get_workers()[0]
    assert psutil.pid_exists(worker.pid), "the worker itself goes on"


def test_a_child_ends_when_its_task_times_out(
    make_orch: Callable[..., ParallelOrchestrator], tmp_path: Path
) -> None:
    orch = make_orch(max_workers=1)
    pidfile = tmp_path / "child.pid"
    spec = {"type": "with_child", "config": {"mode": "wait", "pidfile": str(pidfile)}, "timeout": 0.5}
    result = orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT)
    assert result.error is not None
    assert result.error.kind == "timeout"
    assert gone(child_pid(pidfile))


@pytest.mark.parametrize("mode", ["ignore_stop", "swallow_stop"])
def test_a_child_ends_when_its_handler_ignores_the_stop(
    make_orch: Callable[..., ParallelOrchestrator], tmp_path: Path, mode: str
) -> None:
    """SIGTERM to the tree, then SIGKILL to what is left of it, even once the worker died of the
    SIGTERM (swallow_stop: the handler's signal mask lets SIGTERM kill it)."""
    orch = make_orch(max_workers=1, timeout_grace=0.2)
    pidfile = tmp_path / "child.pid"
    spec = {"type": "with_child", "config": {"mode": mode, "pidfile": str(pidfile)}, "timeout": 0.3}
    result = orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT)
    assert result.error is not None
    assert result.error.kind == "timeout"
    assert gone(child_pid(pidfile)), "a child that ignores SIGTERM outlived its killed worker"
    after = orch.submit_task({"type": "echo"})
    assert orch.wait(after, DEADLOCK_TIMEOUT).success


def test_a_double_forked_daemon_escapes_and_does_not_hold_shutdown(tmp_path: Path) -> None:
    from tests.helpers.tasks import HANDLERS

    orch = ParallelOrchestrator(max_workers=1, handlers=HANDLERS, control_socket=False)
    orch.initialize()
    pidfile = tmp_path / "daemon.pid"
    try:
        spec = {"type": "with_child", "config": {"mode": "daemon", "pidfile": str(pidfile)}}
        assert orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT).success
        daemon = child_pid(pidfile)
        orch.shutdown()  # held for ever before: stopping the helpers waited for the daemon
        assert psutil.pid_exists(daemon), "documented: a double-forked daemon is nobody's child"
    finally:
        if pidfile.exists():
            os.kill(child_pid(pidfile), signal.SIGKILL)
