"""Smaller defects a user hit: each with the behaviour the user relies on now."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import OrchestratorError, ParallelOrchestrator
from orchestrator.wire import SOCKET_SUFFIX, runtime_dir
from tests.conftest import DEADLOCK_TIMEOUT

pytestmark = pytest.mark.timeout(60)


def test_a_handler_can_return_the_deps_it_got(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    orch = make_orch(max_workers=1)
    failing = orch.submit_task({"type": "fail"})
    dependant = orch.submit_task(
        {"type": "raw_deps", "depends_on": [failing], "on_dependency_failure": "run"}
    )
    result = orch.wait(dependant, DEADLOCK_TIMEOUT)
    assert result.success, result.error
    kind, message, _, exception_type = result.data[failing]
    assert message
    assert kind == "exception"
    assert exception_type


def test_analyze_reads_quoted_fields_with_line_breaks(
    make_orch: Callable[..., ParallelOrchestrator], tmp_path: Path
) -> None:
    table = tmp_path / "notes.csv"
    table.write_text('value,note\r\n1,"first\r\nline"\r\n2,"a\nb"\r\n3,plain\r\n', newline="")
    orch = make_orch(max_workers=1)
    result = orch.wait(
        orch.submit_task({"type": "analyze", "config": {"path": str(table)}}), DEADLOCK_TIMEOUT
    )
    assert result.success, result.error
    assert result.data["rows"] == 3
    assert result.data["columns"]["value"]["mean"] == 2.0


def test_retry_on_names_the_exceptions_that_retry(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    orch = make_orch(max_workers=1)
    spec = {"type": "raise_named", "retries": 3, "retry_backoff": 0, "retry_on": ["FlakyServiceError"]}
    retried = orch.submit_task({**spec, "config": {"ok_on": 3}})
    assert orch.wait(retried, DEADLOCK_TIMEOUT).data == 3
    other = orch.wait(orch.submit_task({**spec, "config": {"ok_on": 3, "other": True}}), DEADLOCK_TIMEOUT)
    assert other.error is not None
    assert other.error.exception_type == "ValueError"
    assert other.attempts == 1


def test_a_name_taken_keeps_the_live_socket(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    make_orch(max_workers=1, control_socket=True, name="taken")
    path = runtime_dir() / f"taken{SOCKET_SUFFIX}"
    before = path.stat().st_ino
    second = ParallelOrchestrator(max_workers=1, control_socket=True, name="taken")
    with pytest.raises(OrchestratorError, match="another orchestrator is running with this name"):
        second.initialize()
    assert path.stat().st_ino == before, "the second orchestrator removed the first one's socket"
