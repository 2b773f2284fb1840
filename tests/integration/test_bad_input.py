"""Bad input gets a clear error at once, and the orchestrator goes on working afterwards."""

from __future__ import annotations

import pytest

from orchestrator import (
    InvalidTaskError,
    OrchestratorError,
    QueueFullError,
    TaskNotFoundError,
    TaskStatus,
    UnknownTaskTypeError,
)
from tests.conftest import DEADLOCK_TIMEOUT, Release

BAD_SPECS = [
    pytest.param({"type": "echo", "priority": 11}, "priority", id="priority-11"),
    pytest.param({"type": "echo", "priority": -1}, "priority", id="priority-negative"),
    pytest.param({"type": "echo", "priority": "high"}, "priority", id="priority-str"),
    pytest.param({"type": "echo", "timeout": 0}, "timeout", id="timeout-zero"),
    pytest.param({"type": "echo", "timeout": -3}, "timeout", id="timeout-negative"),
    pytest.param({"type": "echo", "config": {"s": {1, 2}}}, "config", id="config-set"),
    pytest.param({"type": "echo", "config": {"f": lambda: 1}}, "config", id="config-lambda"),
    pytest.param({"type": "echo", "config": {"o": object()}}, "config", id="config-object"),
    pytest.param({"type": "echo", "config": {"big": 2**70}}, "config", id="config-huge-int"),
    pytest.param({"type": "echo", "colour": "red"}, "colour", id="unknown-field"),
    pytest.param({"priority": 3}, "type", id="missing-type"),
]


@pytest.mark.parametrize(("spec", "field"), BAD_SPECS)
def test_bad_spec_is_rejected_before_queueing(make_orch, spec: dict, field: str) -> None:
    orch = make_orch()
    with pytest.raises(InvalidTaskError, match=field) as info:
        orch.submit_task(spec)
    assert isinstance(info.value, OrchestratorError)
    assert isinstance(info.value, ValueError)
    assert orch.get_status().queued == 0
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


def test_unknown_type_names_the_known_ones(make_orch) -> None:
    orch = make_orch()
    with pytest.raises(UnknownTaskTypeError, match=r"'summarize'.*research"):
        orch.submit_task({"type": "summarize"})
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


def test_handler_that_does_not_import_fails_its_task_only(make_orch) -> None:
    orch = make_orch()
    result = orch.wait(orch.submit_task({"type": "bad_import"}), DEADLOCK_TIMEOUT)
    assert result.status is TaskStatus.ERROR
    assert result.error.kind == "exception"
    assert result.error.exception_type == "ModuleNotFoundError"
    assert "tests.helpers.no_such_module" in result.error.message
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


def test_unserialisable_result_is_a_serialization_error(make_orch) -> None:
    orch = make_orch(max_workers=1)
    result = orch.wait(orch.submit_task({"type": "unserialisable"}), DEADLOCK_TIMEOUT)
    assert result.error.kind == "serialization"
    assert "object" in result.error.message
    again = orch.wait(orch.submit_task({"type": "unserialisable"}), DEADLOCK_TIMEOUT)
    assert again.worker_pid == result.worker_pid, "the worker survives"


def test_queue_full_queues_nothing(make_orch, release: Release) -> None:
    orch = make_orch(max_workers=1, task_queue_size=3)
    ids = [orch.submit_task({"type": "blocker", "config": release.config}) for _ in range(3)]
    with pytest.raises(QueueFullError, match="3 tasks"):
        orch.submit_task({"type": "blocker", "config": release.config})
    release.open()
    for task_id in ids:
        assert orch.wait(task_id, DEADLOCK_TIMEOUT).success
    assert orch.get_status().completed == 3


def test_bad_callbacks_and_events(make_orch) -> None:
    orch = make_orch()
    with pytest.raises(TypeError, match="on_complete"):
        orch.submit_task({"type": "echo"}, on_complete="print")
    with pytest.raises(ValueError, match="unknown event 'task_done'"):
        orch.on("task_done", print)
    with pytest.raises(TaskNotFoundError):
        orch.wait("nope")


def test_bad_config_is_a_config_error() -> None:
    from orchestrator import ConfigError, ParallelOrchestrator

    for overrides, field in [
        ({"max_workers": 0}, "max_workers"),
        ({"min_workers": 3, "max_workers": 2}, "min_workers"),
        ({"handlers": {"x": "not a path"}}, "module:function"),
        ({"worker_type_limits": {"nope": 1}}, "nope"),
        ({"start_method": "thread"}, "start_method"),
        ({"max_wokers": 2}, "max_wokers"),
    ]:
        with pytest.raises(ConfigError, match=field):
            ParallelOrchestrator(**overrides)
