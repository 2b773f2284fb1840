"""A task's config is data, not code: optimize and monitor run only the targets the host trusts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import ConfigError, ParallelOrchestrator
from tests.conftest import DEADLOCK_TIMEOUT

pytestmark = pytest.mark.timeout(60)


def run(orch: ParallelOrchestrator, spec: dict[str, object]) -> object:
    return orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT)


@pytest.mark.parametrize(
    ("task_type", "config", "key", "named"),
    [
        ("optimize", {"target": "os:system", "space": {"x": [0, 1]}}, "target", "module 'os'"),
        (
            "optimize",
            {"target": {"command": ["sh", "-c", "touch {x}"]}, "space": {"x": [0, 1]}},
            "target",
            "'sh'",
        ),
        (
            "monitor",
            {"targets": [{"kind": "command", "argv": ["sh", "-c", "true"]}], "samples": 1},
            "targets",
            "'sh'",
        ),
    ],
    ids=["optimize-module", "optimize-command", "monitor-command"],
)
def test_an_untrusted_target_fails_its_task_and_runs_nothing(
    make_orch: Callable[..., ParallelOrchestrator],
    tmp_path: Path,
    task_type: str,
    config: dict[str, object],
    key: str,
    named: str,
) -> None:
    orch = make_orch(max_workers=1, trusted_targets=[sys.executable])
    mark = tmp_path / "ran"
    config = json.loads(json.dumps(config).replace("MARK", str(mark)))
    result = run(orch, {"type": task_type, "config": config})
    assert result.error is not None
    assert result.error.kind == "exception"
    assert result.error.exception_type == "PermissionError"
    assert f"config key {key!r}" in result.error.message
    assert named in result.error.message
    assert "OrchestratorConfig.trusted_targets" in result.error.message
    assert not mark.exists(), "the command ran"


def test_a_plan_cannot_smuggle_a_target_through_a_reference(
    make_orch: Callable[..., ParallelOrchestrator], tmp_path: Path
) -> None:
    """A dependency's result substituted into the config is checked as the config is."""
    orch = make_orch(max_workers=1, trusted_targets=["tests.helpers"])
    plan = orch.submit_plan([
        {"id": "source", "type": "echo", "config": {"value": "os:system"}},
        {"id": "tune", "type": "optimize", "depends_on": ["source"],
         "config": {"target": "$source.config.value", "space": {"x": [0, 1]}, "iterations": 1}},
    ])  # fmt: skip
    results = plan.wait(DEADLOCK_TIMEOUT)
    tune = results["tune"]
    assert tune.error is not None
    assert tune.error.exception_type == "PermissionError"
    assert "module 'os'" in tune.error.message


def test_trusted_targets_run(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    orch = make_orch(max_workers=1, trusted_targets=["tests.helpers", sys.executable])
    by_module = run(orch, {"type": "optimize", "config": {
        "target": "tests.helpers.objectives:bowl", "space": {"x": [-1.0, 1.0], "y": [-1.0, 1.0]}, "iterations": 3}})  # fmt: skip
    assert by_module.success, by_module.error
    by_command = run(orch, {"type": "monitor", "config": {
        "targets": [{"kind": "command", "argv": [sys.executable, "-c", "pass"]}], "samples": 1, "interval": 0.01}})  # fmt: skip
    assert by_command.success, by_command.error


def test_a_prefix_is_a_whole_module_name(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    orch = make_orch(max_workers=1, trusted_targets=["tests"])
    assert run(orch, {"type": "optimize", "config": {"target": "tests_evil:f", "space": {"x": [0, 1]}}}).error


@pytest.mark.parametrize("entry", ["", " os", "os "])
def test_bad_entries_are_config_errors(entry: str) -> None:
    with pytest.raises(ConfigError, match="trusted_targets"):
        ParallelOrchestrator(trusted_targets=[entry])
