"""The optional SQLite journal: accepted tasks and their results survive a crash of the host.

Every write goes first to an *intake log*, a memory-mapped file (``<journal>-intake0`` or
``-intake1``) that each record is copied into: ``submit_task`` appends its task before it
returns, and the supervisor appends the state changes and results of each wake-up as one record
(its group commit). Stores to a shared file mapping are in the kernel's page cache the moment
they are made, so they survive a kill of the process; and a copy makes no system call, so a
submitter never hands the GIL to the supervisor mid-submit (with an SQLite commit per submit and
per wake-up, those hand-offs cost more than the writes themselves).

Every ``MOVE_INTERVAL`` the supervisor moves the intake into SQLite in one transaction (new rows
and changes together as multi-row upserts): the two intake files alternate, submitters appending
to one while the other is moved and then reset. A record carries its length, a CRC and its file's
generation (a counter shared by both files and bumped at each reset), so a torn or stale record is
never read back; at open, what a dead host left in the intake is replayed into SQLite, oldest
generation first, before anything else reads the journal. The promise is durability against a
crash of the host process (SIGKILL, the OOM killer), not against power loss (SQLite runs with
``synchronous=NORMAL`` and the intake is never fsynced).

One writer at a time: an exclusive ``flock`` on ``<journal>.lock``, taken at open. The lock's fd is
close-on-exec and is closed in forked workers, so a dead host's lock is released even while its
orphaned workers are still exiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import json
import logging
import mmap
import os
import sqlite3
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack

from orchestrator.errors import JournalError, OrchestratorError
from orchestrator.models import TaskError, TaskResult, TaskStatus, task_seq
from workers import protocol
from workers.values import utc_moment

logger = logging.getLogger(__name__)

APPLICATION_ID: Final = 0x4F524348  # "ORCH", in PRAGMA application_id
SCHEMA_VERSION: Final = 2
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"

# New rows are inserted with their latest state; changes update their row's state, and a change
# whose row does not exist is skipped (the last column says whether a row is new), so a move can
# never leave a partial row behind.
_UPSERT_COLUMNS: Final = 15
_UPSERT: Final = (
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
_UPSERT_ROWS: Final = 2048
# Seconds between moves of the intake into SQLite: the intake holds about this much work.
MOVE_INTERVAL: Final = 0.05
# Longest wait for a move that keeps failing (disk full) before a flush or close gives up on it.
_MOVE_WAIT: Final = 30.0
# Seconds between attempts to record changes that a full or failing disk refused.
_RETRY_FULL: Final = 1.0
# An intake file this full is moved at once, whatever the interval.
_MOVE_BYTES: Final = 8 << 20
# The kinds of intake entries.
_NEW, _STATE, _FORGET, _SCHEDULE = 0, 1, 2, 3
_INTAKE_MAGIC: Final = b"ORCHINT1"
_INTAKE_HEADER: Final = struct.Struct("<8sQ")  # magic, generation
_RECORD_HEADER: Final = struct.Struct("<IIQ")  # payload length, CRC-32 of the payload, generation
_GENERATION_AT: Final = 8  # the generation's offset in a record header
_INTAKE_SIZE: Final = 1 << 20
# The supervisor checkpoints the WAL itself, every so many moves, so the WAL stays small.
_CHECKPOINT_EVERY: Final = 16

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


class Journal:
    """A journal file opened for writing by this process (and no other)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            raise OrchestratorError(
                f"journal_path {str(self.path)!r} is a directory; name the journal's file in it, "
                f"such as {str(self.path / 'journal.db')!r}"
            )
        try:
            _refuse_foreign(self.path)
            self._lock_fd = _take_lock(self.path)
        except OSError as exc:
            raise OrchestratorError(f"cannot open the journal {self.path}: {exc}") from exc
        # The supervisor writes and callers read (evicted results) on one connection.
        self._write = threading.Lock()
        # The supervisor's entries of the current wake-up, appended as one record by `flush`.
        self._entries: list[tuple[Any, ...]] = []
        self._intake_lock = threading.Lock()
        # Guards which file is active and which is being moved; the mover waits on it.
        self._changed = threading.Condition(self._intake_lock)
        self._active = 0
        self._moving: _IntakeFile | None = None
        self._swapped_at = self.moved_at = time.monotonic()
        self._moves = 0
        self._closing = False
        # The intake could not take the last changes (a full disk): they wait in ``_entries``.
        self._failing = False
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self._create_or_migrate()
            self._intakes = tuple(_IntakeFile(Path(f"{self.path}-intake{n}")) for n in (0, 1))
            self._replay_intake()
        except (sqlite3.Error, OSError) as exc:
            os.close(self._lock_fd)
            raise OrchestratorError(f"cannot open the journal {self.path}: {exc}") from exc
        # SQLite work runs here, off the supervisor: Python's sqlite3 lets go of the GIL for
        # each statement, and a thread that lets go can wait a whole switch interval (5 ms) to
        # get it back while other threads run Python; the supervisor must never wait like that.
        self._mover = threading.Thread(
            target=self._run_mover, name=f"orch-journal-{self.path.name}", daemon=True
        )
        self._mover.start()

    def _replay_intake(self) -> None:
        """Apply what a dead host left in the intake, oldest file first, then empty both.

        Replaying entries that were already moved is harmless: each file is replayed whole, so a
        task's later entries follow its earlier ones and its latest state wins.
        """
        for intake in sorted(self._intakes, key=lambda intake: intake.generation):
            self._apply(intake.saved_entries())
        for intake in self._intakes:
            intake.reset(self._next_generation())
        # Writing first to the older file keeps the rule the replay relies on: the file moved is
        # always older than the one submitters go on in.
        self._active = 0

    def _next_generation(self) -> int:
        """A generation newer than both files', so whatever a reset file held is stale."""
        return max(intake.generation for intake in self._intakes) + 1

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
        """Record newly accepted tasks durably (all of them or, if the host dies meanwhile, none).

        Each row is (task_id, seq, spec, config, handler, plan, plan_refs, submitted_at,
        not_before, parent, detached).
        """
        entries = [(_NEW, *row) for row in rows]
        payload = msgpack.packb(entries, use_bin_type=True)
        try:
            with self._intake_lock:
                self._intakes[self._active].append(payload, entries)
        except OSError as exc:
            raise JournalError(
                f"the journal {self.path} cannot record the task ({exc.strerror or exc}); nothing was "
                "queued. Tasks already accepted go on; free space and submit again"
            ) from exc

    def withdraw(self, task_ids: list[str]) -> None:
        """Take back tasks `add` recorded whose submit was then refused (any thread)."""
        entries = [(_FORGET, _seq_of(task_id)) for task_id in task_ids]
        payload = msgpack.packb(entries, use_bin_type=True)
        with self._intake_lock:
            self._intakes[self._active].append(payload, entries)

    def started(self, task_id: str, attempts: int) -> None:
        """The task's handler started (its attempts so far)."""
        self._entries.append((_STATE, _seq_of(task_id), "running", attempts, None))

    def requeued(self, task_id: str, attempts: int) -> None:
        """The task waits again (a retry, or given back unstarted)."""
        self._entries.append((_STATE, _seq_of(task_id), "queued", attempts, None))

    def finished(self, task_id: str, status: str, attempts: int, result: bytes) -> None:
        """The task is final; ``result`` is its packed `TaskResult` fields."""
        self._entries.append((_STATE, _seq_of(task_id), status, attempts, result))

    def forget(self, task_id: str) -> None:
        """Drop a final task whose result outlived ``result_ttl``."""
        self._entries.append((_FORGET, _seq_of(task_id)))

    def schedule_saved(self, name: str, spec: str, config: bytes, state: str) -> None:
        """A schedule was added or changed (``state`` is its JSON)."""
        self._entries.append((_SCHEDULE, name, spec, config, state))

    def schedule_removed(self, name: str) -> None:
        """A schedule was removed."""
        self._entries.append((_SCHEDULE, name, None, None, None))

    def schedules(self) -> list[tuple[str, str, bytes, str]]:
        """Every schedule as (name, spec JSON, packed config, state JSON), by name."""
        with self._write:
            found = self._db.execute("SELECT name, spec, config, state FROM schedules ORDER BY name")
            return found.fetchall()

    def row(self, task_id: str) -> JournalRow | None:
        """One task by id as SQLite holds it (what is still in the intake is not seen), or None."""
        seq = task_seq(task_id)
        if seq is None:
            return None
        with self._write:
            found = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE seq = ? AND task_id = ?", (seq, task_id)
            ).fetchone()
        row = _row(found) if found else None
        return row if isinstance(row, JournalRow) else None

    def flush(self, *, wait: bool = True) -> float | None:
        """The supervisor's group commit: this wake-up's changes become one durable record; and
        once ``MOVE_INTERVAL`` has passed since the last move, the mover thread is handed the
        active intake file to apply to SQLite. With ``wait``, both files are moved now and the
        call returns once they are in SQLite.

        Returns the seconds after which the supervisor should call again (to start the next move,
        or to see the one in flight end), or None when nothing waits to be moved.
        """
        with self._changed:
            if self._entries and not self._record_entries():
                return None if wait else _RETRY_FULL
            if wait:
                for _ in self._intakes:
                    self._wait_for_mover()
                    self._start_move()
                self._wait_for_mover()
                return None
            if self._moving is not None:
                return MOVE_INTERVAL
            active = self._intakes[self._active]
            if not active.entries:
                return None
            wait_for = self._swapped_at + MOVE_INTERVAL - time.monotonic()
            if wait_for > 0 and active.size < _MOVE_BYTES:
                return wait_for
            self._start_move()
            return MOVE_INTERVAL

    def _record_entries(self) -> bool:
        """Append this wake-up's entries to the intake (called locked); on a full or failing disk
        keep them for the next flush and say so once, until it works again."""
        entries = self._entries
        try:
            self._intakes[self._active].append(msgpack.packb(entries, use_bin_type=True), entries)
        except OSError as exc:
            if not self._failing:
                logger.error(
                    "the journal %s cannot take changes (%s); they are kept in memory and written once "
                    "it can, and new tasks are refused meanwhile",
                    self.path,
                    exc.strerror or exc,
                )
            self._failing = True
            return False
        if self._failing:
            logger.warning("the journal %s takes changes again", self.path)
        self._failing = False
        self._entries = []
        return True

    def _wait_for_mover(self) -> None:
        """Wait (locked) for the move in flight to end; a journal that keeps failing is given up
        on after a while (the intake still holds everything, and the next open replays it)."""
        if not self._changed.wait_for(lambda: self._moving is None, _MOVE_WAIT):
            logger.error("the journal %s is still failing to update; its intake keeps the work", self.path)

    def _start_move(self) -> None:
        """Hand the active file to the mover; submitters go on in the other (called locked)."""
        taken = self._intakes[self._active]
        if not taken.entries:
            return
        self._active ^= 1
        self._moving = taken
        self._swapped_at = time.monotonic()
        self._changed.notify_all()

    def _run_mover(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._moving is not None or self._closing)
                taken, swapped_at = self._moving, self._swapped_at
            if taken is None:
                return
            try:
                with self._write:
                    self._apply(taken.entries)
            except sqlite3.Error:
                # Nothing is lost (the intake holds it), and nothing newer may be applied first.
                logger.exception("the journal %s could not be updated; retrying in 1 s", self.path)
                with self._changed:
                    if not self._changed.wait_for(lambda: self._closing, 1.0):
                        continue
                return
            with self._changed:
                taken.reset(self._next_generation())
                self.moved_at = swapped_at
                self._moving = None
                self._changed.notify_all()

    def _apply(self, entries: list[tuple[Any, ...]]) -> None:
        """Write intake entries to SQLite in one transaction, each task's latest state winning."""
        if not entries:
            return
        rows: dict[int, tuple[Any, ...]] = {}  # new rows, in the upsert's columns
        changes: dict[int, tuple[Any, ...]] = {}  # states of rows already in SQLite
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for entry in entries:
            kind = entry[0]
            if kind == _NEW:
                # (_NEW, task_id, seq, spec, config, handler, plan, refs, submitted_at, not_before,
                # parent, detached) in the upsert's columns, queued until a later entry says more.
                seq = entry[2]
                rows[seq] = (seq, entry[1], *entry[3:8], "queued", 0, None, *entry[8:], 1)
            elif kind == _STATE:
                _, seq, status, attempts, result = entry
                if seq in rows:
                    rows[seq] = (*rows[seq][:7], status, attempts, result, *rows[seq][10:])
                else:
                    changes[seq] = (seq, "", "", b"", "", None, None, status, attempts, result,
                                    0.0, None, None, 0, 0)  # fmt: skip
            elif kind == _FORGET:
                rows.pop(entry[1], None)
                changes.pop(entry[1], None)
                statements.append(("DELETE FROM tasks WHERE seq = ?", (entry[1],)))
            elif entry[2] is None:
                statements.append(("DELETE FROM schedules WHERE name = ?", (entry[1],)))
            else:
                statements.append(
                    (
                        "INSERT OR REPLACE INTO schedules (name, spec, config, state) VALUES (?, ?, ?, ?)",
                        entry[1:],
                    )
                )
        upserts = [*rows.values(), *changes.values()]
        self._db.execute("BEGIN")
        try:
            for start in range(0, len(upserts), _UPSERT_ROWS):
                batch = upserts[start : start + _UPSERT_ROWS]
                shape = 1 << (len(batch) - 1).bit_length()
                batch += [batch[-1]] * (shape - len(batch))  # the same row twice upserts the same values
                self._db.execute(_upsert_sql(shape), list(itertools.chain.from_iterable(batch)))
            for sql, arguments in statements:
                self._db.execute(sql, arguments)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")  # so that the retry starts afresh
            raise
        self._moves += 1
        if self._moves % _CHECKPOINT_EVERY == 0:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def rows(self) -> list[JournalRow | UnreadableRow]:
        """Every task, in submission order; a row that does not decode comes as an `UnreadableRow`.

        Raises:
            OrchestratorError: SQLite cannot read the table at all.
        """
        try:
            with self._write:
                found = self._db.execute(f"SELECT {_COLUMNS} FROM tasks ORDER BY seq").fetchall()
        except sqlite3.Error as exc:
            raise OrchestratorError(f"cannot read the tasks of the journal {self.path}: {exc}") from exc
        return [_row(r) for r in found]

    def close(self) -> None:
        """Move everything into SQLite, stop the mover, release the files and the lock; idempotent."""
        if self._lock_fd < 0:
            return
        self.flush()
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._mover.join()
        drained = not any(intake.entries for intake in self._intakes)
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        for intake in self._intakes:
            intake.close(remove=drained)
        os.close(self._lock_fd)
        self._lock_fd = -1


class _IntakeFile:
    """One memory-mapped intake file: records appended under the journal's intake lock, and
    their entries kept in memory for the next move."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Kept open to reserve the space of every growth before the mapping covers it.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = max(os.fstat(self._fd).st_size, _INTAKE_SIZE)
            os.posix_fallocate(self._fd, 0, size)
            self._map = mmap.mmap(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise
        self.generation = _generation_of(self._map)
        self.entries: list[tuple[Any, ...]] = []
        self.size = _INTAKE_HEADER.size

    def saved_entries(self) -> list[tuple[Any, ...]]:
        """The entries recorded since the file was last reset (by this or a dead host); damage is
        logged, and the file is copied aside for a post-mortem before anything resets it."""
        scan = scan_intake(self._map)
        if scan.damaged:
            kept = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            with kept.open("wb") as copy:
                copy.write(self._map[:])
            skipped = ", ".join(f"bytes {start}-{end}" for start, end in scan.damaged)
            logger.error(
                "the journal's intake %s is damaged: skipped %s (the records there are lost; the %d "
                "entries around them are kept); a copy of the file is at %s",
                self.path,
                skipped,
                len(scan.entries),
                kept,
            )
        return scan.entries

    def append(self, payload: bytes, entries: list[tuple[Any, ...]]) -> None:
        """Append one record; its header goes last, so a record cut short is never read back.

        Raises:
            OSError: the file could not grow (ENOSPC, EIO); nothing was written.
        """
        start = self.size + _RECORD_HEADER.size
        end = start + len(payload)
        if end > len(self._map):
            # A store into a hole of a mapped file that the filesystem cannot back is a SIGBUS to
            # the whole process: the space is reserved first, where a full disk is an error.
            size = max(end, 2 * len(self._map))
            os.posix_fallocate(self._fd, 0, size)
            self._map.resize(size)
        self._map[start:end] = payload
        _RECORD_HEADER.pack_into(self._map, self.size, len(payload), zlib.crc32(payload), self.generation)
        self.size = end
        self.entries.extend(entries)

    def reset(self, generation: int) -> None:
        """Forget every record (all applied to SQLite): under a new generation they are stale."""
        self.generation = generation
        _INTAKE_HEADER.pack_into(self._map, 0, _INTAKE_MAGIC, generation)
        self.size = _INTAKE_HEADER.size
        self.entries = []

    def close(self, remove: bool) -> None:
        self._map.close()
        os.close(self._fd)
        if remove:
            self.path.unlink(missing_ok=True)


def intake_entries(buffer: bytes | mmap.mmap) -> list[tuple[Any, ...]]:
    """The entries of an intake file's current generation (past any damaged record)."""
    return scan_intake(buffer).entries


@dataclass(frozen=True)
class IntakeScan:
    """What an intake file holds: its entries, and the byte ranges skipped as damaged."""

    entries: list[tuple[Any, ...]]
    damaged: list[tuple[int, int]]


def scan_intake(buffer: bytes | mmap.mmap) -> IntakeScan:
    """Read the records of the file's current generation in order.

    A record that does not check out (a flipped bit, a torn write) is skipped up to the next
    record that does: its generation, a sane length and a matching CRC. A bad record with no good
    one after it is the tail a crash cut short, the normal end; one followed by good records is
    damage, and its range is reported.
    """
    entries: list[tuple[Any, ...]] = []
    damaged: list[tuple[int, int]] = []
    if len(buffer) < _INTAKE_HEADER.size:
        return IntakeScan(entries, damaged)
    magic, generation = _INTAKE_HEADER.unpack_from(buffer, 0)
    if magic != _INTAKE_MAGIC:
        return IntakeScan(entries, damaged)
    offset = _INTAKE_HEADER.size
    while offset + _RECORD_HEADER.size <= len(buffer):
        record = _record_at(buffer, offset, generation)
        if record is None:
            following = _next_record(buffer, offset + 1, generation)
            if following is None:
                break
            damaged.append((offset, following))
            offset = following
            continue
        entries.extend(record[0])
        offset = record[1]
    return IntakeScan(entries, damaged)


def _record_at(buffer: bytes | mmap.mmap, offset: int, generation: int) -> tuple[list[Any], int] | None:
    """The entries of the record at ``offset`` and where the next one starts, if it checks out."""
    length, crc, record_generation = _RECORD_HEADER.unpack_from(buffer, offset)
    start = offset + _RECORD_HEADER.size
    end = start + length
    if record_generation != generation or length == 0 or end > len(buffer):
        return None
    payload = buffer[start:end]
    if zlib.crc32(payload) != crc:
        return None
    try:
        entries = msgpack.unpackb(payload)
    except (ValueError, msgpack.UnpackException):
        return None
    if not isinstance(entries, list) or not all(isinstance(entry, list) for entry in entries):
        return None
    return [tuple(entry) for entry in entries], end


def _next_record(buffer: bytes | mmap.mmap, start: int, generation: int) -> int | None:
    """The offset of the first good record at or after ``start`` (found by its generation field)."""
    marker = struct.pack("<Q", generation)
    at = start + _GENERATION_AT
    while (at := buffer.find(marker, at)) >= 0:
        offset = at - _GENERATION_AT
        if offset >= start and _record_at(buffer, offset, generation) is not None:
            return offset
        at += 1
    return None


@functools.cache
def _upsert_sql(rows: int) -> str:
    """The upsert of ``rows`` rows (a power of two, so only a dozen shapes ever exist)."""
    row = "(" + ", ".join("?" * _UPSERT_COLUMNS) + ")"
    return _UPSERT.format(values=", ".join([row] * rows))


def _seq_of(task_id: str) -> int:
    """The journal key of a task: every id ends with ``-<seq>``, unique within one journal."""
    return int(task_id.rpartition("-")[2])


def _row(r: tuple[Any, ...]) -> JournalRow | UnreadableRow:
    try:
        refs = json.loads(r[6]) if r[6] else None
        spec = json.loads(r[2])
        if not isinstance(spec, dict) or not isinstance(r[3], bytes) or not isinstance(r[0], str):
            raise TypeError("its spec, config or id column holds a value of the wrong type")
    except (ValueError, TypeError) as exc:
        return UnreadableRow(str(r[0]), r[1], f"{type(exc).__name__}: {exc}")
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
        started_at=utc_moment(fields["started_at"]),
        finished_at=utc_moment(fields["finished_at"]),
        duration_s=fields["duration_s"],
        parent=fields.get("parent"),
    )


def journal_counts(path: str) -> dict[str, Any]:
    """Task counts by status, read-only (also while an orchestrator holds the journal).

    The intake's entries (the last moments of work, or what a dead host left) count on top of
    what SQLite holds, as the next open would replay them.
    """
    journal = Path(path).expanduser()
    if not journal.exists():
        raise OrchestratorError(f"no journal at {journal}")
    _refuse_foreign(journal)
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
    buffers.sort(key=_generation_of)
    latest: dict[int, str | None] = {}
    created: set[int] = set()
    for buffer in buffers:
        for entry in intake_entries(buffer):
            if entry[0] == _NEW:
                latest[entry[2]] = "queued"
                created.add(entry[2])
            elif entry[0] == _STATE:
                latest[entry[1]] = entry[2]
            elif entry[0] == _FORGET:
                latest[entry[1]] = None
    return latest, created


def _generation_of(buffer: bytes | mmap.mmap) -> int:
    if len(buffer) < _INTAKE_HEADER.size:
        return 0
    magic, generation = _INTAKE_HEADER.unpack_from(buffer, 0)
    return int(generation) if magic == _INTAKE_MAGIC else 0


def _stored_states(db: sqlite3.Connection, seqs: list[int]) -> dict[int, str]:
    """The status SQLite holds for each of ``seqs`` that it has."""
    found: dict[int, str] = {}
    for start in range(0, len(seqs), 500):
        chunk = seqs[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        found.update(db.execute(f"SELECT seq, status FROM tasks WHERE seq IN ({marks})", chunk).fetchall())
    return found
