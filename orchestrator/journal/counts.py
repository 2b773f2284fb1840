"""`journal_counts`: a journal's tasks counted by status, read-only, for ``orch journal``."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.journal.intake import FORGET, NEW, STATE, generation_of, intake_entries
from orchestrator.journal.store import refuse_foreign
from orchestrator.models import TaskStatus


def journal_counts(path: str) -> dict[str, Any]:
    """Task counts by status, read-only (also while an orchestrator holds the journal).

    The intake's entries (the last moments of work, or what a dead host left) count on top of
    what SQLite holds, as the next open would replay them.
    """
    journal = Path(path).expanduser()
    if not journal.exists():
        raise OrchestratorError(f"no journal at {journal}")
    refuse_foreign(journal)
    latest, created = _intake_states(journal)
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall()
        stored = _stored_states(db, sorted(latest))
    except sqlite3.Error as exc:
        raise OrchestratorError(f"cannot read the journal {journal}: {exc}") from exc
    finally:
        db.close()
    counts = {status.value: 0 for status in TaskStatus}
    counts.update(dict(rows))
    for seq, status in latest.items():
        if seq in stored:
            counts[stored[seq]] -= 1
        if status is not None and (seq in stored or seq in created):
            counts[status] += 1  # a replay skips a change to a task that neither holds
    return {"journal": str(journal), "total": sum(counts.values()), "counts": counts}


def _intake_states(journal: Path) -> tuple[dict[int, str | None], set[int]]:
    """Each task's latest status in the intake files, oldest file first (None: forgotten), and
    the tasks the intake created."""
    buffers = [
        Path(f"{journal}-intake{n}").read_bytes() for n in (0, 1) if Path(f"{journal}-intake{n}").exists()
    ]
    buffers.sort(key=generation_of)
    latest: dict[int, str | None] = {}
    created: set[int] = set()
    for buffer in buffers:
        for entry in intake_entries(buffer):
            if entry[0] == NEW:
                latest[entry[2]] = "queued"
                created.add(entry[2])
            elif entry[0] == STATE:
                latest[entry[1]] = entry[2]
            elif entry[0] == FORGET:
                latest[entry[1]] = None
    return latest, created


def _stored_states(db: sqlite3.Connection, seqs: list[int]) -> dict[int, str]:
    """The status SQLite holds for each of ``seqs`` that it has."""
    found: dict[int, str] = {}
    for start in range(0, len(seqs), 500):
        chunk = seqs[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        found.update(db.execute(f"SELECT seq, status FROM tasks WHERE seq IN ({marks})", chunk).fetchall())
    return found
