"""The journal's intake log: what a killed host recorded but never moved into SQLite is replayed.

Each test runs a host that writes through `Journal` and then dies with ``os._exit`` (no cleanup,
as under SIGKILL), with moves into SQLite held back, so the intake is all that holds the work.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from orchestrator.journal import Journal, journal_counts
from tests.conftest import DEADLOCK_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]

HOST = """
import os, sys, time
sys.path.insert(0, {root!r})
from orchestrator.journal import journal

journal.MOVE_INTERVAL = 3600.0  # nothing reaches SQLite but what the test moves on purpose
j = journal.Journal({path!r})

def row(seq):
    return (f"ab-{{seq}}", seq, '{{"type": "echo"}}', b"\\x80", "tests.helpers.tasks:echo", None, None,
            time.time(), None, None, False)

{body}
os._exit(0)
"""


def crash(tmp_path: Path, body: str) -> str:
    """Run a host that writes ``body`` through a journal and dies; return the journal's path."""
    path = str(tmp_path / "journal.db")
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(HOST.format(root=str(ROOT), path=path, body=textwrap.dedent(body))))
    subprocess.run([sys.executable, str(script)], check=True, timeout=DEADLOCK_TIMEOUT)
    return path


def stored(path: str) -> dict[int, str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT seq, status FROM tasks").fetchall())


def replayed(path: str) -> dict[int, tuple[str, int]]:
    journal = Journal(path)
    try:
        return {row.seq: (row.status, row.attempts) for row in journal.rows()}
    finally:
        journal.close()


def test_tasks_and_changes_only_in_the_intake_survive(tmp_path: Path) -> None:
    path = crash(
        tmp_path,
        """
        j.add([row(1)])
        j.add([row(2), row(3)])
        j.started("ab-1", 1)
        j.finished("ab-1", "completed", 1, b"\\x80")
        j.started("ab-2", 1)
        j.flush(wait=False)
        """,
    )
    assert stored(path) == {}, "the test needs the work to be in the intake only"
    counts = journal_counts(path)["counts"]
    assert (counts["completed"], counts["running"], counts["queued"]) == (1, 1, 1)
    assert replayed(path) == {1: ("completed", 1), 2: ("running", 1), 3: ("queued", 0)}
    assert not Path(f"{path}-intake0").exists(), "a clean close leaves no intake behind"


def test_changes_after_a_move_apply_on_top_of_sqlite(tmp_path: Path) -> None:
    path = crash(
        tmp_path,
        """
        j.add([row(1), row(2)])
        j.flush(wait=True)
        j.finished("ab-1", "completed", 1, b"\\x80")
        j.forget("ab-2")
        j.flush(wait=False)
        """,
    )
    assert stored(path) == {1: "queued", 2: "queued"}
    counts = journal_counts(path)["counts"]
    assert (counts["completed"], counts["queued"]) == (1, 0)
    # The rows moved earlier are stale in the intake: replaying them would bring task 2 back.
    assert replayed(path) == {1: ("completed", 1)}


def test_a_torn_record_is_dropped_and_the_ones_before_it_kept(tmp_path: Path) -> None:
    path = crash(
        tmp_path,
        """
        j.add([row(1)])
        j.add([row(2)])
        """,
    )
    (intake,) = [p for p in tmp_path.glob("journal.db-intake*") if b"ab-2" in p.read_bytes()]
    data = bytearray(intake.read_bytes())
    last = data.rindex(b"ab-2")
    data[last] ^= 0xFF  # the host died while copying the second record
    intake.write_bytes(bytes(data))
    assert replayed(path) == {1: ("queued", 0)}


def test_a_host_killed_mid_move_replays_both_files_in_order(tmp_path: Path) -> None:
    path = crash(
        tmp_path,
        """
        import threading
        journal.Journal._apply = lambda self, entries: threading.Event().wait()  # a move that never ends
        j.add([row(1)])
        journal.MOVE_INTERVAL = 0.0
        j.flush(wait=False)  # hands the file holding row 1 to the mover
        journal.MOVE_INTERVAL = 3600.0
        j.finished("ab-1", "completed", 1, b"\\x80")
        j.flush(wait=False)  # goes to the other file
        """,
    )
    assert stored(path) == {}
    assert journal_counts(path)["counts"]["completed"] == 1
    assert replayed(path) == {1: ("completed", 1)}


def test_a_failed_move_is_rolled_back_and_retried(tmp_path: Path, monkeypatch, caplog) -> None:
    from orchestrator.journal import journal as journal_module

    real = journal_module.upsert_sql
    failures = []

    def fails_once(rows: int) -> str:
        if not failures:
            failures.append(rows)
            return "INSERT INTO no_such_table VALUES (1)"  # as a full disk would: the statement fails
        return real(rows)

    journal = Journal(str(tmp_path / "journal.db"))
    try:
        monkeypatch.setattr(journal_module, "upsert_sql", fails_once)
        journal.add([("ab-1", 1, '{"type": "echo"}', b"\x80", "h", None, None, 0.0, None, None, False)])
        journal.flush(wait=True)
        assert failures, "the first move failed"
        assert [(row.seq, row.status) for row in journal.rows()] == [(1, "queued")]
        assert any("could not be updated" in r.getMessage() for r in caplog.records)
    finally:
        journal.close()
