"""Task types added at run time, worker initializers, and executor tasks seen from the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import ConfigError, ParallelOrchestrator
from orchestrator.cli import main
from orchestrator.supervisor.init_guard import MAX_INIT_FAILURES
from tests.conftest import DEADLOCK_TIMEOUT, Recorder
from tests.helpers import functions
from tests.helpers.tasks import HANDLERS

READY = {"report_ready": "tests.helpers.functions:report_ready"}


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "run"
    monkeypatch.setenv("ORCH_RUNTIME_DIR", str(directory))
    return directory


def test_worker_init_runs_once_per_worker_before_its_first_task(
    make_orch: Callable[..., ParallelOrchestrator],
) -> None:
    orch = make_orch(
        max_workers=1,
        handlers={**HANDLERS, **READY},
        worker_init={"report_ready": "tests.helpers.functions:init_ok"},
    )
    first = orch.wait(orch.submit_task({"type": "report_ready"}), DEADLOCK_TIMEOUT)
    second = orch.wait(orch.submit_task({"type": "report_ready"}), DEADLOCK_TIMEOUT)
    assert (first.data, second.data) == (1, 1)
    assert first.worker_pid == second.worker_pid


def test_a_star_initializer_covers_types_without_their_own(
    make_orch: Callable[..., ParallelOrchestrator],
) -> None:
    orch = make_orch(
        max_workers=1, handlers={**HANDLERS, **READY}, worker_init={"*": "tests.helpers.functions:init_ok"}
    )
    assert orch.wait(orch.submit_task({"type": "report_ready"}), DEADLOCK_TIMEOUT).data == 1


def test_a_failing_initializer_fails_its_task_then_the_type_until_a_registration(
    make_orch: Callable[..., ParallelOrchestrator], recorder: Recorder
) -> None:
    orch = make_orch(
        max_workers=1,
        handlers={**HANDLERS, **READY},
        worker_init={"report_ready": "tests.helpers.functions:init_fails"},
    )
    orch.on("worker_spawned", recorder)
    for _ in range(MAX_INIT_FAILURES):
        result = orch.wait(orch.submit_task({"type": "report_ready"}), DEADLOCK_TIMEOUT)
        assert result.error is not None
        assert result.error.kind == "worker_init"
        assert "ConnectionError: the database is down" in result.error.message
        assert "init_fails" in result.error.traceback
    recorder.wait_for(lambda events: len(events) == MAX_INIT_FAILURES)
    # Broken now: the next task fails without a worker, and other types still run.
    at_once = orch.wait(orch.submit_task({"type": "report_ready"}), DEADLOCK_TIMEOUT)
    assert at_once.error is not None
    assert at_once.error.kind == "worker_init"
    assert "failed in 3 workers in a row" in at_once.error.message
    assert at_once.attempts == 0
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success
    assert len(recorder.events) == MAX_INIT_FAILURES + 1  # the echo's worker
    orch.register_handler("another", "tests.helpers.tasks:echo")
    retried = orch.wait(orch.submit_task({"type": "report_ready"}), DEADLOCK_TIMEOUT)
    assert retried.error is not None
    assert retried.attempts == 1  # it had a worker again


def test_worker_init_is_checked_at_construction() -> None:
    with pytest.raises(ConfigError, match="worker_init names unknown task types: nope"):
        ParallelOrchestrator(worker_init={"nope": "a:b"})
    with pytest.raises(ConfigError, match="expected 'module:function'"):
        ParallelOrchestrator(worker_init={"*": "not a path"})


def test_register_handler_adds_a_type_that_orch_submit_knows(
    make_orch: Callable[..., ParallelOrchestrator], runtime: Path
) -> None:
    orch = make_orch(name="growing", max_workers=1)
    refused = CliRunner().invoke(main, ["submit", "late_echo", "--name", "growing"])
    assert refused.exit_code != 0
    assert "unknown task type 'late_echo'" in refused.output
    orch.register_handler("late_echo", "tests.helpers.tasks:echo")
    done = CliRunner().invoke(
        main, ["submit", "late_echo", "--name", "growing", "--config", '{"x": 2}', "--wait"]
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.output.strip().splitlines()[1])["data"]["config"] == {"x": 2}
    assert orch.wait(orch.submit_task({"type": "late_echo"}), DEADLOCK_TIMEOUT).success


@pytest.mark.parametrize(
    ("name", "path", "message"),
    [
        ("research", "tests.helpers.tasks:echo", "taken"),
        ("echo", "tests.helpers.tasks:echo", "taken"),
        ("call", "tests.helpers.tasks:echo", "reserved"),
        ("fine", "no colon", "module:function"),
        ("", "tests.helpers.tasks:echo", "non-empty"),
    ],
)
def test_register_handler_refuses_what_cannot_be_a_new_type(
    make_orch: Callable[..., ParallelOrchestrator], name: str, path: str, message: str
) -> None:
    orch = make_orch(max_workers=1)
    with pytest.raises(ValueError, match=message):
        orch.register_handler(name, path)


def test_executor_tasks_show_in_status_and_tasks(
    make_orch: Callable[..., ParallelOrchestrator], runtime: Path, tmp_path: Path, recorder: Recorder
) -> None:
    orch = make_orch(name="calls", max_workers=1)
    orch.on("task_started", recorder)
    release = tmp_path / "release"
    future = orch.executor().submit(functions.wait_for_file, str(release))
    recorder.wait_for(lambda events: len(events) == 1)
    status = CliRunner().invoke(main, ["status", "--json", "--name", "calls"])
    (snapshot,) = json.loads(status.output)["orchestrators"]
    (worker,) = snapshot["workers"]
    assert worker["type"] == "call"
    assert worker["current_task"] == future.task_id
    listed = CliRunner().invoke(main, ["tasks", "--name", "calls"])
    assert listed.exit_code == 0, listed.output
    assert "tests.helpers.functions.wait_for_file" in listed.output
    release.touch()
    assert future.result(DEADLOCK_TIMEOUT) > 0
    shown = CliRunner().invoke(main, ["result", future.task_id or "", "--name", "calls"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["status"] == "completed"  # the value itself is the future's
