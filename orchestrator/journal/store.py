"""The journal's SQLite side: its schema, its rows read back, the upserts a move writes, the
checks made before a file is touched, and how a result is stored."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

from orchestrator.errors import OrchestratorError
from orchestrator.journal.intake import FORGET, NEW, STATE
from orchestrator.models import TaskResult, TaskStatus, result_from_wire, result_wire
from workers import protocol

APPLICATION_ID: Final = 0x4F524348  # "ORCH", in PRAGMA application_id
SCHEMA_VERSION: Final = 2
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"

# seq is the rowid: a new task appends to the table's last page and a state change finds its row
# without a second index, so a commit writes one page (half the cost of a text key plus an index).
SCHEMA_SQL: Final = """
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
MIGRATE_FROM_1_SQL: Final = (
    "BEGIN; ALTER TABLE tasks RENAME TO tasks_v1; DROP INDEX IF EXISTS tasks_by_status;"
    + SCHEMA_SQL
    + "INSERT INTO tasks (seq, task_id, spec, config, handler, plan, plan_refs, status, attempts, result, "
    "submitted_at) SELECT seq, task_id, spec, config, handler, plan, plan_refs, status, attempts, result, "
    "submitted_at FROM tasks_v1; DROP TABLE tasks_v1; "
    "UPDATE meta SET value = '2' WHERE key = 'schema_version'; COMMIT;"
)
VERSION_SQL: Final = "SELECT value FROM meta WHERE key = 'schema_version'"


# What a result's row holds in columns of their own, so its stored result leaves out.
_IN_COLUMNS: Final = ("task_id", "status", "success", "attempts")


class NewTask(NamedTuple):
    """A newly accepted task, as `Journal.add` records it."""

    task_id: str
    seq: int
    spec: str  # its TaskSpec as JSON, without the config
    config: bytes  # packed; never a shared-memory reference (blocks die with the host)
    handler: str
    plan: str | None
    plan_refs: str | None  # JSON
    submitted_at: float
    not_before: float | None  # on the wall clock
    parent: str | None
    detached: bool


class Upsert(NamedTuple):
    """One row of a move's upsert, in the statement's column order."""

    seq: int
    task_id: str
    spec: str
    config: bytes
    handler: str
    plan: str | None
    plan_refs: str | None
    status: str
    attempts: int
    result: bytes | None
    submitted_at: float
    not_before: float | None
    parent: str | None
    detached: bool
    # A change to a row that does not exist (its task was forgotten) is skipped.
    is_new: bool


# New rows are inserted with their latest state; changes update their row's state, and a change
# whose row does not exist is skipped (the last column says whether a row is new), so a move can
# never leave a partial row behind.
UPSERT_SQL: Final = (
    "INSERT INTO tasks (seq, task_id, spec, config, handler, plan, plan_refs, status, attempts, result, "
    "submitted_at, not_before, parent, detached) "
    "SELECT column1, column2, column3, column4, column5, column6, column7, column8, column9, column10, "
    "column11, column12, column13, column14 FROM (VALUES {values}) AS v "
    "WHERE v.column15 OR EXISTS (SELECT 1 FROM tasks WHERE tasks.seq = v.column1) "
    "ON CONFLICT(seq) DO UPDATE SET status = excluded.status, attempts = excluded.attempts, "
    "result = excluded.result"
)
# Rows per upsert: under SQLite's 32,766 parameters, and few statement shapes (powers of two, the
# last row repeated to fill), so each stays prepared in the statement cache. Python's sqlite3
# releases the GIL once per statement step, so one statement per batch, never one per row.
UPSERT_ROWS: Final = 2048


class _Stored(NamedTuple):
    """A task row as `rows` and `row` select it."""

    task_id: Any
    seq: Any
    spec: Any
    config: Any
    handler: Any
    plan: Any
    plan_refs: Any
    status: Any
    attempts: Any
    result: Any
    not_before: Any
    parent: Any
    detached: Any


TASK_COLUMNS: Final = ", ".join(_Stored._fields)


@dataclass(frozen=True)
class UnreadableRow:
    """A task row that does not decode: recovery keeps it as a failed task saying why."""

    task_id: str
    seq: int
    error: str


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


def row_of(selected: tuple[Any, ...]) -> JournalRow | UnreadableRow:
    """A selected task row (`TASK_COLUMNS`), decoded; an `UnreadableRow` saying why it is not."""
    r = _Stored(*selected)
    try:
        refs = json.loads(r.plan_refs) if r.plan_refs else None
        spec = json.loads(r.spec)
        if not isinstance(spec, dict) or not isinstance(r.config, bytes) or not isinstance(r.task_id, str):
            raise TypeError("its spec, config or id column holds a value of the wrong type")
    except (ValueError, TypeError) as exc:
        return UnreadableRow(str(r.task_id), r.seq, f"{type(exc).__name__}: {exc}")
    return JournalRow(
        r.task_id,
        r.seq,
        spec,
        r.config,
        r.handler,
        r.plan,
        refs,
        r.status,
        r.attempts,
        r.result,
        r.not_before,
        r.parent,
        bool(r.detached),
    )


def moves_of(entries: list[tuple[Any, ...]]) -> tuple[list[Upsert], list[tuple[str, tuple[Any, ...]]]]:
    """What a move writes for intake entries: task upserts (each task's latest state winning)
    and the other statements (deletions, schedules), in order."""
    rows: dict[int, Upsert] = {}  # new rows
    changes: dict[int, Upsert] = {}  # states of rows already in SQLite
    statements: list[tuple[str, tuple[Any, ...]]] = []
    for entry in entries:
        kind = entry[0]
        if kind == NEW:
            new = NewTask(*entry[1:])
            rows[new.seq] = Upsert(new.seq, new.task_id, new.spec, new.config, new.handler, new.plan,
                                   new.plan_refs, "queued", 0, None, new.submitted_at, new.not_before,
                                   new.parent, new.detached, is_new=True)  # fmt: skip
        elif kind == STATE:
            _, seq, status, attempts, result = entry
            if seq in rows:
                rows[seq] = rows[seq]._replace(status=status, attempts=attempts, result=result)
            else:
                changes[seq] = Upsert(seq, "", "", b"", "", None, None, status, attempts, result,
                                      0.0, None, None, detached=False, is_new=False)  # fmt: skip
        elif kind == FORGET:
            rows.pop(entry[1], None)
            changes.pop(entry[1], None)
            statements.append(("DELETE FROM tasks WHERE seq = ?", (entry[1],)))
        else:
            statements.append(_schedule_statement(entry))
    return [*rows.values(), *changes.values()], statements


def _schedule_statement(entry: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    _, name, spec, config, state = entry
    if spec is None:
        return "DELETE FROM schedules WHERE name = ?", (name,)
    return "INSERT OR REPLACE INTO schedules (name, spec, config, state) VALUES (?, ?, ?, ?)", (
        name,
        spec,
        config,
        state,
    )


@functools.cache
def upsert_sql(rows: int) -> str:
    """The upsert of ``rows`` rows (a power of two, so only a dozen shapes ever exist)."""
    row = "(" + ", ".join("?" * len(Upsert._fields)) + ")"
    return UPSERT_SQL.format(values=", ".join([row] * rows))


def seq_of(task_id: str) -> int:
    """The journal key of a task: every id ends with ``-<seq>``, unique within one journal."""
    return int(task_id.rpartition("-")[2])


def refuse_foreign(path: Path) -> None:
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
        version = probe.execute(VERSION_SQL).fetchone()
    except sqlite3.Error as exc:
        raise OrchestratorError(f"{path} is not a readable journal: {exc}") from exc
    finally:
        probe.close()
    if version is None or int(version[0]) > SCHEMA_VERSION:
        raise OrchestratorError(
            f"{path} has journal schema {version[0] if version else 'unknown'}; this version reads "
            f"up to {SCHEMA_VERSION}: upgrade parallel-orchestrator"
        )


def take_lock(path: Path) -> int:
    """The fd of the exclusive lock on ``<journal>.lock``; one writer per journal."""
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
    """A final result as the journal stores it: its wire fields, but for those its row holds in
    columns of their own (msgpack)."""
    fields = result_wire(result)
    for key in _IN_COLUMNS:
        del fields[key]
    return protocol.pack_payload(fields)


def restore_result(task_id: str, status: TaskStatus, attempts: int, stored: bytes) -> TaskResult:
    """The `TaskResult` the journal stored with `journal_result`."""
    columns = {"task_id": task_id, "status": status.value, "attempts": attempts}
    return result_from_wire({**protocol.unpack_payload(stored), **columns})
