"""A corrupt journal: bad rows are kept as failed tasks, a table SQLite cannot read is an error that
leaves nothing behind, and a damaged intake record costs only itself."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import OrchestratorError, ParallelOrchestrator, TaskStatus
from orchestrator.journal import Journal
from orchestrator.wire import SOCKET_SUFFIX, runtime_dir
from tests.conftest import DEADLOCK_TIMEOUT, Release
from tests.helpers.tasks import HANDLERS

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


def journal_with_queued_tasks(
    make_orch: Callable[..., ParallelOrchestrator], path: str, release: Release, count: int
) -> list[str]:
    """A journal left by a host that stopped with ``count`` echo tasks queued behind a blocker."""
    orch = make_orch(max_workers=1, journal_path=path)
    blocker = orch.submit_task({"type": "blocker", "config": release.config})
    ids = [orch.submit_task({"type": "echo", "config": {"n": n}}) for n in range(count)]
    orch.shutdown(keep_queued=True)
    return [blocker, *ids]


def test_rows_that_do_not_decode_are_kept_as_failed_tasks(
    make_orch: Callable[..., ParallelOrchestrator],
    tmp_path: Path,
    release: Release,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = str(tmp_path / "journal.db")
    blocker, first, second, third = journal_with_queued_tasks(make_orch, path, release, 3)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE tasks SET config = X'c1c1' WHERE task_id = ?", (second,))
        db.execute("UPDATE tasks SET spec = '{broken' WHERE task_id = ?", (third,))
    release.open()
    orch = make_orch(max_workers=2, journal_path=path, handlers=HANDLERS)
    for bad in (second, third):
        result = orch.wait(bad, 0)
        assert result.status is TaskStatus.ERROR
        assert result.error is not None
        assert result.error.kind == "interrupted"
        assert "journal row could not be read" in result.error.message
        assert any(r.levelno == logging.ERROR and bad in r.getMessage() for r in caplog.records)
    assert orch.wait(first, DEADLOCK_TIMEOUT).success
    assert orch.wait(blocker, DEADLOCK_TIMEOUT).success
    listed = {row["task_id"] for row in orch._lookup.summaries(None, None, 100)}
    assert {second, third} <= listed


def test_a_table_sqlite_cannot_read_fails_cleanly(
    make_orch: Callable[..., ParallelOrchestrator], tmp_path: Path, release: Release
) -> None:
    path = str(tmp_path / "journal.db")
    journal_with_queued_tasks(make_orch, path, release, 2)
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE tasks RENAME COLUMN spec TO spec_gone")
    for _ in range(2):  # the second try meets the same error, not a lock or a name left held
        broken = ParallelOrchestrator(max_workers=1, journal_path=path, handlers=HANDLERS, name="broken")
        with pytest.raises(OrchestratorError, match="cannot read the tasks of the journal"):
            broken.initialize()
        assert not (runtime_dir() / f"broken{SOCKET_SUFFIX}").exists()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE tasks RENAME COLUMN spec_gone TO spec")
    release.open()
    healed = make_orch(max_workers=2, journal_path=path, handlers=HANDLERS, name="broken")
    assert len(healed.recovered_tasks()) == 3


DAMAGED_HOST = """
import os, sys, time
sys.path.insert(0, {root!r})
from orchestrator.journal import journal

journal.MOVE_INTERVAL = 3600.0  # nothing reaches SQLite: the intake holds it all
j = journal.Journal({path!r})
for seq in range(1, 1001):
    j.add([(f"ab-{{seq}}", seq, '{{"type": "echo"}}', b"\\x80", "tests.helpers.tasks:echo", None, None,
            time.time(), None, None, False)])
os._exit(0)
"""


def test_a_flipped_bit_in_the_intake_costs_one_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "journal.db")
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(DAMAGED_HOST.format(root=str(ROOT), path=path)))
    subprocess.run([sys.executable, str(script)], check=True, timeout=DEADLOCK_TIMEOUT)
    intake = Path(f"{path}-intake0")
    data = bytearray(intake.read_bytes())
    target = data.find(b"ab-500")
    assert target > 0
    data[target + 1] ^= 0x01  # one bit of task 500's record
    intake.write_bytes(bytes(data))

    journal = Journal(path)
    try:
        seqs = {row.seq for row in journal.rows()}
    finally:
        journal.close()
    assert seqs == set(range(1, 1001)) - {500}
    damage = [r for r in caplog.records if r.levelno == logging.ERROR and "damaged" in r.getMessage()]
    assert len(damage) == 1
    assert "the 999 entries around them are kept" in damage[0].getMessage()
    copies = list(tmp_path.glob("journal.db-intake0.damaged-*"))
    assert len(copies) == 1
    assert copies[0].read_bytes() == bytes(data)[: len(copies[0].read_bytes())]
