"""orch.snapshot(): what `orch status --json` shows, for hosts that render it themselves."""

from __future__ import annotations

import json

from click.testing import CliRunner

from orchestrator.cli import main as cli
from tests.conftest import DEADLOCK_TIMEOUT


def test_the_snapshot_matches_status_workers_and_the_cli(make_orch) -> None:
    orch = make_orch(name="snapshotted", control_socket=True, max_workers=2)
    for task_id in [orch.submit_task({"type": "echo"}) for _ in range(4)]:
        assert orch.wait(task_id, DEADLOCK_TIMEOUT).success
    orch.schedule({"type": "echo"}, name="nightly", cron="@daily")
    snapshot = orch.snapshot()
    json.dumps(snapshot)  # JSON-ready as it is
    status = orch.get_status().model_dump(mode="json")
    assert {k: v for k, v in snapshot["status"].items() if k != "uptime_s"} == {
        k: v for k, v in status.items() if k != "uptime_s"
    }
    assert snapshot["status"]["completed"] == 4
    workers = orch.get_workers()
    assert [(w["worker_id"], w["pid"], w["type"]) for w in snapshot["workers"]] == [
        (w.worker_id, w.pid, w.type) for w in workers
    ]
    assert [s["name"] for s in snapshot["schedules"]] == ["nightly"]
    assert snapshot["name"] == "snapshotted"
    shown = CliRunner().invoke(cli, ["status", "--name", "snapshotted", "--json"])
    assert shown.exit_code == 0, shown.output
    (listed,) = json.loads(shown.output)["orchestrators"]
    assert set(listed) == set(snapshot)
    assert listed["status"]["completed"] == 4


def test_a_snapshot_before_initialize_is_empty_not_an_error() -> None:
    from orchestrator import ParallelOrchestrator

    snapshot = ParallelOrchestrator(control_socket=False).snapshot()
    assert snapshot["workers"] == []
    assert snapshot["status"]["queued"] == 0
