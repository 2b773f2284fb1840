"""The same behaviour under every start method: results, progress, timeouts and cancellation."""

from __future__ import annotations

import pytest

from orchestrator import TaskStatus
from tests.conftest import DEADLOCK_TIMEOUT, Recorder


@pytest.fixture(params=["forkserver", "spawn", "fork"])
def start_method(request: pytest.FixtureRequest) -> str:
    return request.param


def test_round_trip_progress_timeout_and_cancel(make_orch, start_method: str, recorder: Recorder) -> None:
    orch = make_orch(max_workers=2, start_method=start_method)
    orch.on("task_progress", recorder)
    orch.on("task_started", recorder)
    done = orch.wait(orch.submit_task({"type": "steps", "config": {"n": 2}}), DEADLOCK_TIMEOUT)
    assert done.data == 2
    timed_out = orch.wait(orch.submit_task({"type": "sleep", "timeout": 0.3}), DEADLOCK_TIMEOUT)
    assert timed_out.error.kind == "timeout"
    running = orch.submit_task({"type": "async_sleep", "config": {"seconds": 60}})
    recorder.wait_for(lambda events: running in [e.task_id for e in events])
    assert orch.cancel(running)
    assert orch.wait(running, DEADLOCK_TIMEOUT).status is TaskStatus.CANCELLED
    assert orch.wait(orch.submit_task({"type": "async_echo", "config": {"x": 1}}), DEADLOCK_TIMEOUT).data == {
        "x": 1
    }


def test_a_forkserver_worker_shares_what_its_server_imported_with_the_collector_frozen(make_orch) -> None:
    """The fork server freezes what it imported before forking, so that a worker's collections
    leave those pages shared; a forked worker has nothing frozen (the host froze nothing)."""
    by_method = {}
    for method in ("forkserver", "fork"):
        orch = make_orch(max_workers=1, start_method=method)
        by_method[method] = orch.wait(orch.submit_task({"type": "frozen_objects"}), DEADLOCK_TIMEOUT).data
    assert by_method["forkserver"] > 10_000  # the worker side and msgpack: tens of thousands
    assert by_method["fork"] == 0
