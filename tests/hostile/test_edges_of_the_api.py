"""Inputs at the edges of the API get the API's own errors, never a raw one, and leave nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import (
    ConfigError,
    InvalidTaskError,
    OrchestratorConfig,
    OrchestratorError,
    ParallelOrchestrator,
    TaskNotFoundError,
)
from orchestrator.wire import SOCKET_SUFFIX, recv_frame, runtime_dir, send_frame
from tests.conftest import DEADLOCK_TIMEOUT
from tests.helpers.tasks import HANDLERS

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


def nested(levels: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": b"x" * 100_000}  # a buffer big enough for shared memory
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (nested(300), "nests more than 256 levels"),
        (nested(5000), "nests more than 256 levels"),
        ({"a": {2**64: 1}, "big": b"x" * 100_000}, "integer key beyond 64 bits"),
        ({"a": [{"b": -(2**63) - 1}], "big": b"x" * 100_000}, "integer beyond 64 bits"),
    ],
    ids=["300-deep", "5000-deep", "int-key", "int-value"],
)
def test_configs_that_cannot_travel(
    make_orch: Callable[..., ParallelOrchestrator], config: dict[str, object], says: str
) -> None:
    orch = make_orch(max_workers=1)
    shm_before = set(os.listdir("/dev/shm"))
    with pytest.raises(InvalidTaskError, match=says):
        orch.submit_task({"type": "echo", "config": config})
    assert set(os.listdir("/dev/shm")) == shm_before, "a block was written for a refused config"
    assert orch.get_status().queued == 0


@pytest.mark.parametrize("task_id", ["x-²", "x-" + "9" * 5000, f"x-{2**63}", f"x-{2**64}", "", "-", "x-1"])
@pytest.mark.parametrize("journal", [False, True])
def test_ids_that_are_not_ours(
    make_orch: Callable[..., ParallelOrchestrator], tmp_path: Path, task_id: str, journal: bool
) -> None:
    orch = make_orch(max_workers=1, journal_path=str(tmp_path / "j.db") if journal else None)
    with pytest.raises(TaskNotFoundError):
        orch.get_result(task_id)
    with pytest.raises(TaskNotFoundError):
        orch.wait(task_id, timeout=0)
    with pytest.raises(TaskNotFoundError):
        orch.cancel(task_id)


def test_the_control_socket_answers_every_id(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    orch = make_orch(max_workers=1, control_socket=True, name="edges")
    tid = orch.submit_task({"type": "echo"})
    assert orch.wait(tid, DEADLOCK_TIMEOUT).success
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(DEADLOCK_TIMEOUT)
        sock.connect(str(runtime_dir() / f"edges{SOCKET_SUFFIX}"))
        for task_id in ["x-²", "x-" + "9" * 5000, f"x-{2**64}"]:
            send_frame(sock, {"op": "result", "task_id": task_id})
            reply = recv_frame(sock)
            assert reply is not None
            assert reply["ok"] is False
            assert reply["error"].startswith("TaskNotFoundError")
        send_frame(sock, {"op": "result", "task_id": tid})  # the same connection still serves
        reply = recv_frame(sock)
        assert reply is not None
        assert reply["data"]["status"] == "completed"


def test_a_directory_as_journal_path(tmp_path: Path) -> None:
    with pytest.raises(OrchestratorError, match="is a directory"):
        ParallelOrchestrator(journal_path=str(tmp_path)).initialize()


def test_config_errors_say_which_field_both_ways() -> None:
    with pytest.raises(ConfigError, match="max_workers") as direct:
        OrchestratorConfig(max_workers=0)
    with pytest.raises(ConfigError, match="max_workers") as through:
        ParallelOrchestrator(max_workers=0)
    assert str(direct.value) == str(through.value)


EXITS = """
import sys
sys.path.insert(0, {root!r})
from orchestrator import ParallelOrchestrator
from tests.helpers.tasks import HANDLERS

if __name__ == "__main__":
    orch = ParallelOrchestrator(max_workers=1, handlers=HANDLERS, journal_path={journal!r}, control_socket=False)
    orch.initialize()
    ids = [orch.submit_task({{"type": "sleep", "config": {{"seconds": 30}}}}) for _ in range(3)]
    print(" ".join(ids), flush=True)
    raise RuntimeError("the assistant died of an unhandled exception")
"""


def test_an_exit_without_shutdown_keeps_the_journal(
    make_orch: Callable[..., ParallelOrchestrator], tmp_path: Path
) -> None:
    journal = str(tmp_path / "journal.db")
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(EXITS.format(root=str(ROOT), journal=journal)))
    host = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=DEADLOCK_TIMEOUT
    )
    assert host.returncode == 1
    assert "unhandled exception" in host.stderr
    ids = host.stdout.split()
    orch = make_orch(max_workers=3, journal_path=journal, handlers=HANDLERS)
    assert sorted(orch.recovered_tasks()) == sorted(ids)
    for task_id in ids:
        assert orch.cancel(task_id)
