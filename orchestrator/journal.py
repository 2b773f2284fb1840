"""The optional SQLite journal: accepted tasks and their results survive a crash of the host.

``submit_task`` commits its task's row before it returns (a WAL append, no fsync); the supervisor
group-commits state changes and results once per wake-up. The promise is durability against a
crash of the host process (SIGKILL, the OOM killer), not against power loss (``synchronous=NORMAL``).

One writer at a time: an exclusive ``flock`` on ``<journal>.lock``, taken at open. The lock's fd is
close-on-exec and is closed in forked workers, so a dead host's lock is released even while its
orphaned workers are still exiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from orchestrator.errors import OrchestratorError
from orchestrator.models import TaskError, TaskResult, TaskStatus
from workers import protocol

APPLICATION_ID: Final = 0x4F524348  # "ORCH", in PRAGMA application_id
SCHEMA_VERSION: Final = 2
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"

_INSERT: Final = (
    "INSERT INTO tasks (task_id, seq, spec, config, handler, plan, plan_refs, status, submitted_at, "
    "not_before, parent, detached) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)"
)
# The supervisor checkpoints the WAL itself, every so many group commits, so that no submitter
# pays for a checkpoint inside submit_task.
_CHECKPOINT_EVERY: Final = 64

# seq is the rowid: a new task appends to the table's last page and a state change finds its row
# without a second index, so a commit writes one page (half the cost of a text key plus an index).
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    config BLOB NOT NULL,
    handler TEXT NOT NULL,
    plan TEXT,
    plan_refs TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result BLOB,
    submitted_at REAL NOT NULL,
    not_before REAL,
    parent TEXT,
    detached INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    config BLOB NOT NULL,
    state TEXT NOT NULL
);
"""
# Version 1 keyed tasks by task_id and indexed them by status.
_MIGRATE_FROM_1: Final = (
    "BEGIN; ALTER TABLE tasks RENAME TO tasks_v1; DROP INDEX IF EXISTS tasks_by_status;"
    + _SCHEMA
    + "INSERT INTO tasks (seq, task_id, spec, config, handler, plan, plan_refs, status, attempts, result, "
    "submitted_at) SELECT seq, task_id, spec, config, handler, plan, plan_refs, status, attempts, result, "
    "submitted_at FROM tasks_v1; DROP TABLE tasks_v1; "
    "UPDATE meta SET value = '2' WHERE key = 'schema_version'; COMMIT;"
)
_VERSION: Final = "SELECT value FROM meta WHERE key = 'schema_version'"
_COLUMNS: Final = (
    "task_id, seq, spec, config, handler, plan, plan_refs, status, attempts, result, not_before, parent, "
    "detached"
)


@dataclass(frozen=True)
class JournalRow:
    """One task as the journal holds it."""

    task_id: str
    seq: int
    spec: dict[str, Any]
    config: bytes
    handler: str
    plan: str | None
    plan_refs: dict[str, str] | None
    status: str
    attempts: int
    result: bytes | None
    not_before: float | None
    parent: str | None
    detached: bool


class Journal:
    """A journal file opened for writing by this process (and no other)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        _refuse_foreign(self.path)
        self._lock_fd = _take_lock(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self._create_or_migrate()
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise OrchestratorError(f"cannot open the journal {self.path}: {exc}") from exc
        # Submitters and the supervisor share the connection; this lock serialises their writes.
        self._write = threading.Lock()
        # The latest change of each task since the last flush: a task that started and ended in
        # one wake-up costs one write.
        self._pending: dict[str, tuple[str, tuple[Any, ...]]] = {}
        self._flushes = 0

    def _create_or_migrate(self) -> None:
        has_meta = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
        if has_meta and self._db.execute(_VERSION).fetchone() == ("1",):
            self._db.executescript(_MIGRATE_FROM_1)
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    @property
    def lock_fd(self) -> int:
        """The fd of the single-writer lock (forked workers close it)."""
        return self._lock_fd

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        """Commit newly accepted tasks at once, in one transaction."""
        with self._write:
            if len(rows) == 1:
                self._db.execute(_INSERT, rows[0])  # autocommit: one statement, one transaction
                return
            self._db.execute("BEGIN")
            self._db.executemany(_INSERT, rows)
            self._db.execute("COMMIT")

    def _note(self, key: str, sql: str, arguments: tuple[Any, ...]) -> None:
        """Queue the latest change of ``key`` for the next `flush` (the supervisor's group commit)."""
        self._pending[key] = (sql, arguments)

    def started(self, task_id: str, attempts: int) -> None:
        """The task's handler started (its attempts so far)."""
        self._note(
            task_id,
            "UPDATE tasks SET status = 'running', attempts = ? WHERE seq = ?",
            (attempts, _seq_of(task_id)),
        )

    def requeued(self, task_id: str, attempts: int) -> None:
        """The task waits again (a retry, or given back unstarted)."""
        self._note(
            task_id,
            "UPDATE tasks SET status = 'queued', attempts = ? WHERE seq = ?",
            (attempts, _seq_of(task_id)),
        )

    def finished(self, task_id: str, status: str, attempts: int, result: bytes) -> None:
        """The task is final; ``result`` is its packed `TaskResult` fields."""
        self._note(
            task_id,
            "UPDATE tasks SET status = ?, attempts = ?, result = ? WHERE seq = ?",
            (status, attempts, result, _seq_of(task_id)),
        )

    def forget(self, task_id: str) -> None:
        """Drop a final task whose result outlived ``result_ttl``."""
        self._note(task_id, "DELETE FROM tasks WHERE seq = ?", (_seq_of(task_id),))

    def schedule_saved(self, name: str, spec: str, config: bytes, state: str) -> None:
        """A schedule was added or changed (``state`` is its JSON)."""
        self._note(
            f"schedule:{name}",
            "INSERT OR REPLACE INTO schedules (name, spec, config, state) VALUES (?, ?, ?, ?)",
            (name, spec, config, state),
        )

    def schedule_removed(self, name: str) -> None:
        """A schedule was removed."""
        self._note(f"schedule:{name}", "DELETE FROM schedules WHERE name = ?", (name,))

    def schedules(self) -> list[tuple[str, str, bytes, str]]:
        """Every schedule as (name, spec JSON, packed config, state JSON), by name."""
        with self._write:
            found = self._db.execute("SELECT name, spec, config, state FROM schedules ORDER BY name")
            return found.fetchall()

    def row(self, task_id: str) -> JournalRow | None:
        """One task by id, or None."""
        seq = task_id.rpartition("-")[2]
        if not seq.isdigit():
            return None
        with self._write:
            found = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE seq = ? AND task_id = ?", (int(seq), task_id)
            ).fetchone()
        return _row(found) if found else None

    def flush(self, *, wait: bool = True) -> bool:
        """Commit every queued state change in one transaction; True if changes are still pending.

        With ``wait=False`` it gives up at once, keeping the changes pending, when a submitter holds
        the connection: the supervisor tries again shortly rather than stall behind a burst of submits.
        """
        if not self._pending:
            return False
        if not self._write.acquire(blocking=wait):
            return True
        try:
            pending, self._pending = self._pending, {}
            self._db.execute("BEGIN")
            for sql, arguments in pending.values():
                self._db.execute(sql, arguments)
            self._db.execute("COMMIT")
            self._flushes += 1
            if self._flushes % _CHECKPOINT_EVERY == 0:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            self._write.release()
        return bool(self._pending)

    def rows(self) -> list[JournalRow]:
        """Every task, in submission order."""
        with self._write:
            found = self._db.execute(f"SELECT {_COLUMNS} FROM tasks ORDER BY seq").fetchall()
        return [_row(r) for r in found]

    def close(self) -> None:
        """Commit what is pending and release the file and its lock; idempotent."""
        if self._lock_fd < 0:
            return
        with contextlib.suppress(sqlite3.Error):
            self.flush()
            self._db.close()
        os.close(self._lock_fd)
        self._lock_fd = -1


def _seq_of(task_id: str) -> int:
    """The journal key of a task: every id ends with ``-<seq>``, unique within one journal."""
    return int(task_id.rpartition("-")[2])


def _row(r: tuple[Any, ...]) -> JournalRow:
    refs = json.loads(r[6]) if r[6] else None
    spec = json.loads(r[2])
    return JournalRow(r[0], r[1], spec, r[3], r[4], r[5], refs, r[7], r[8], r[9], r[10], r[11], bool(r[12]))


def _refuse_foreign(path: Path) -> None:
    """Refuse, before any write, a file that is not this journal (0 bytes counts as new)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb") as handle:
        header = handle.read(100)
    if not header.startswith(_SQLITE_MAGIC):
        raise OrchestratorError(f"{path} is not an SQLite database, so not a journal; refusing to touch it")
    probe = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        application_id = probe.execute("PRAGMA application_id").fetchone()[0]
        if application_id != APPLICATION_ID:
            raise OrchestratorError(
                f"{path} is an SQLite database of something else (not a journal); refusing it"
            )
        version = probe.execute(_VERSION).fetchone()
    except sqlite3.Error as exc:
        raise OrchestratorError(f"{path} is not a readable journal: {exc}") from exc
    finally:
        probe.close()
    if version is None or int(version[0]) > SCHEMA_VERSION:
        raise OrchestratorError(
            f"{path} has journal schema {version[0] if version else 'unknown'}; this version reads "
            f"up to {SCHEMA_VERSION}: upgrade parallel-orchestrator"
        )


def _take_lock(path: Path) -> int:
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OrchestratorError(
            f"the journal {path} is open in another orchestrator (here or in another process); "
            "one journal has one writer"
        ) from None
    return fd


def journal_result(result: TaskResult) -> bytes:
    """A final result as the journal stores it (msgpack; timestamps as seconds)."""
    return protocol.pack_payload(
        {
            "data": result.data,
            "error": result.error.model_dump() if result.error else None,
            "worker_pid": result.worker_pid,
            "started_at": result.started_at.timestamp() if result.started_at else None,
            "finished_at": result.finished_at.timestamp() if result.finished_at else None,
            "duration_s": result.duration_s,
            "parent": result.parent,
        }
    )


def restore_result(task_id: str, status: TaskStatus, attempts: int, stored: bytes) -> TaskResult:
    """The `TaskResult` the journal stored with `journal_result`."""
    fields = protocol.unpack_payload(stored)
    return TaskResult(
        task_id=task_id,
        status=status,
        success=status is TaskStatus.COMPLETED,
        data=fields["data"],
        error=TaskError(**fields["error"]) if fields["error"] else None,
        attempts=attempts,
        worker_pid=fields["worker_pid"],
        started_at=_utc(fields["started_at"]),
        finished_at=_utc(fields["finished_at"]),
        duration_s=fields["duration_s"],
        parent=fields.get("parent"),
    )


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC)


def journal_counts(path: str) -> dict[str, Any]:
    """Task counts by status, read-only (also while an orchestrator holds the journal)."""
    journal = Path(path)
    if not journal.exists():
        raise OrchestratorError(f"no journal at {journal}")
    _refuse_foreign(journal)
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall()
    except sqlite3.Error as exc:
        raise OrchestratorError(f"cannot read the journal {journal}: {exc}") from exc
    finally:
        db.close()
    counts = {status.value: 0 for status in TaskStatus}
    counts.update(dict(rows))
    return {"journal": str(journal), "total": sum(counts.values()), "counts": counts}
