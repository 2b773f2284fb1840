"""A full or failing disk under the journal: submits are refused with JournalError, tasks already
accepted run on with their results in memory, and nothing on the supervisor waits on the disk."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import ParallelOrchestrator
from orchestrator import journal as journal_module
from tests.conftest import DEADLOCK_TIMEOUT

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB filesystem of its own (a tmpfs), so that it can be filled to the last byte."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mountpoint)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


FULL_DISK_HOST = """
import os, sys
sys.path.insert(0, {root!r})
from orchestrator import JournalError, ParallelOrchestrator
from tests.helpers.tasks import HANDLERS


def fill(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 65536)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"x")
    except OSError:
        pass
    os.close(fd)


if __name__ == "__main__":
    orch = ParallelOrchestrator(max_workers=2, handlers=HANDLERS, journal_path={journal!r},
                                control_socket=False, task_queue_size=1000)
    orch.initialize()
    fill({filler!r})
    accepted, refused, why = [], 0, ""
    for n in range(300):
        try:
            accepted.append(orch.submit_task({{"type": "echo", "config": {{"pad": "y" * 30000, "n": n}}}}))
        except JournalError as exc:
            refused += 1
            why = str(exc)
    results = [orch.wait(task_id, 30) for task_id in accepted]
    print(len(accepted), refused, all(r.success for r in results), flush=True)
    print(why, flush=True)
    os.remove({filler!r})
    later = orch.submit_task({{"type": "echo"}})
    print(orch.wait(later, 30).success, flush=True)
    orch.shutdown()
    print("clean exit", flush=True)
"""


def test_a_full_disk_refuses_submits_and_keeps_the_host(tmp_path: Path, small_disk: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(
        textwrap.dedent(
            FULL_DISK_HOST.format(
                root=str(ROOT), journal=str(small_disk / "journal.db"), filler=str(small_disk / "filler")
            )
        )
    )
    host = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=80)
    assert host.returncode == 0, f"the host died ({host.returncode}): {host.stderr[-2000:]}"
    counts, why, later, end = host.stdout.splitlines()
    accepted, refused, all_succeeded = counts.split()
    assert int(accepted) > 0
    assert int(refused) > 0
    assert int(accepted) + int(refused) == 300
    assert all_succeeded == "True"
    assert "cannot record the task" in why
    assert "nothing was queued" in why
    assert later == "True", "once space was freed, submits were accepted again"
    assert end == "clean exit"


def test_status_reads_never_wait_on_a_failing_journal(
    make_orch: Callable[..., ParallelOrchestrator], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every orch status read the schedules with a flush that waited up to 3 x 30 s for SQLite."""
    orch = make_orch(max_workers=1, journal_path=str(tmp_path / "journal.db"))
    orch.schedule({"type": "echo"}, name="tick", every=3600)

    def failing(self: Any, entries: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(journal_module.Journal, "_apply", failing)
    for _ in range(3):
        assert orch.snapshot()["schedules"][0]["name"] == "tick"
    task_id = orch.submit_task({"type": "echo"})
    assert orch.wait(task_id, DEADLOCK_TIMEOUT).success
    monkeypatch.undo()  # the journal heals: shutdown moves everything
