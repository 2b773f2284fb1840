"""A fault of ours in the supervisor: contained to one task or worker where it can be, and otherwise
loud (CRITICAL, a failed state everywhere) without losing a task the journal holds."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import OrchestratorFailedError, ParallelOrchestrator, TaskStatus
from orchestrator.cli.status_text import render_text
from tests.conftest import DEADLOCK_TIMEOUT, Recorder, Release
from tests.helpers.tasks import HANDLERS

pytestmark = pytest.mark.timeout(60)


class Injected(RuntimeError):
    """The fault the tests plant in the supervisor."""


def test_a_loop_fault_fails_loudly_and_the_journal_keeps_every_open_task(
    make_orch: Callable[..., ParallelOrchestrator],
    tmp_path: Path,
    release: Release,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = str(tmp_path / "journal.db")
    orch = make_orch(max_workers=1, journal_path=journal)
    orch.on("task_started", recorder)
    done = orch.submit_task({"type": "echo", "config": {"n": 0}})
    assert orch.wait(done, DEADLOCK_TIMEOUT).success
    running = orch.submit_task({"type": "blocker", "config": release.config})
    recorder.wait_for(lambda events: any(e.task_id == running for e in events))
    queued = [orch.submit_task({"type": "echo", "config": {"n": n}}) for n in range(1, 4)]
    supervisor = orch._supervisor
    assert supervisor is not None

    def broken() -> None:
        raise Injected("planted in the loop")

    supervisor.post(broken)
    result = orch.wait(running, DEADLOCK_TIMEOUT)
    assert result.error is not None
    assert result.error.kind == "interrupted"
    assert "Injected: planted in the loop" in result.error.message

    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert critical[0].exc_info is not None
    assert critical[0].exc_info[0] is Injected
    status = orch.get_status()
    assert status.state == "failed"
    assert status.failure == "Injected: planted in the loop"
    snapshot = orch.snapshot()
    assert snapshot["status"]["state"] == "failed"
    assert "FAILED: Injected: planted in the loop" in render_text([snapshot])
    with pytest.raises(OrchestratorFailedError, match="planted in the loop"):
        orch.submit_task({"type": "echo"})

    orch.shutdown()
    release.open()
    second = make_orch(max_workers=2, journal_path=journal, handlers=HANDLERS)
    assert sorted(second.recovered_tasks()) == sorted([running, *queued])
    for task_id in [running, *queued]:
        assert second.wait(task_id, DEADLOCK_TIMEOUT).success
    assert second.get_result(done).success


def test_a_failed_orchestrator_without_a_journal_ends_every_wait(
    make_orch: Callable[..., ParallelOrchestrator], release: Release
) -> None:
    orch = make_orch(max_workers=1)
    tasks = [orch.submit_task({"type": "blocker", "config": release.config}) for _ in range(3)]
    supervisor = orch._supervisor
    assert supervisor is not None

    def broken() -> None:
        raise Injected("planted")

    supervisor.post(broken)
    results = list(orch.as_completed(tasks, timeout=DEADLOCK_TIMEOUT))
    assert {r.error.kind for r in results if r.error} == {"interrupted"}
    assert orch.get_status().state == "failed"
    release.open()


def test_a_timer_fault_fails_only_its_task(
    make_orch: Callable[..., ParallelOrchestrator], release: Release, caplog: pytest.LogCaptureFixture
) -> None:
    orch = make_orch(max_workers=2)
    supervisor = orch._supervisor
    assert supervisor is not None

    def broken_timeout(record: object, timeout: float) -> None:
        raise Injected("planted in a timer")

    supervisor._lifecycle._on_timeout = broken_timeout  # type: ignore[method-assign]
    doomed = orch.submit_task({"type": "blocker", "config": release.config, "timeout": 0.05})
    result = orch.wait(doomed, DEADLOCK_TIMEOUT)
    assert result.error is not None
    assert result.error.kind == "interrupted"
    assert "planted in a timer" in result.error.message
    assert any(r.levelno == logging.ERROR and "planted in a timer" in r.getMessage() for r in caplog.records)
    fine = orch.submit_task({"type": "echo"})
    assert orch.wait(fine, DEADLOCK_TIMEOUT).success
    assert orch.get_status().state == "running"
    release.open()


def test_a_fault_accepting_one_task_fails_only_that_task(
    make_orch: Callable[..., ParallelOrchestrator],
) -> None:
    orch = make_orch(max_workers=1)
    supervisor = orch._supervisor
    assert supervisor is not None
    announce = supervisor._announce.queued
    calls = []

    def announce_once_broken(record: object) -> None:
        calls.append(record)
        if len(calls) == 1:
            raise Injected("planted in accept")
        announce(record)  # type: ignore[arg-type]

    supervisor._announce.queued = announce_once_broken  # type: ignore[method-assign]
    first = orch.submit_task({"type": "echo"})
    second = orch.submit_task({"type": "echo"})
    failed = orch.wait(first, DEADLOCK_TIMEOUT)
    assert failed.status is TaskStatus.ERROR
    assert failed.error is not None
    assert "planted in accept" in failed.error.message
    assert orch.wait(second, DEADLOCK_TIMEOUT).success
