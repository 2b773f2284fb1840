"""`Journal`: the file one orchestrator writes its tasks to, through the intake, moved into SQLite
by a thread of its own (see the package docstring)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Final

import msgpack

from orchestrator.errors import JournalError, OrchestratorError
from orchestrator.journal.intake import FORGET, NEW, SCHEDULE, STATE, IntakeFile
from orchestrator.journal.store import (
    APPLICATION_ID,
    MIGRATE_FROM_1_SQL,
    SCHEMA_SQL,
    SCHEMA_VERSION,
    TASK_COLUMNS,
    UPSERT_ROWS,
    VERSION_SQL,
    JournalRow,
    NewTask,
    UnreadableRow,
    moves_of,
    refuse_foreign,
    row_of,
    seq_of,
    take_lock,
    upsert_sql,
)
from orchestrator.models import task_seq

logger = logging.getLogger("orchestrator.journal")

# Seconds between moves of the intake into SQLite: the intake holds about this much work.
MOVE_INTERVAL: Final = 0.05
# Longest wait for a move that keeps failing (disk full) before a flush or close gives up on it.
_MOVE_WAIT: Final = 30.0
# Seconds between attempts to record changes that a full or failing disk refused.
_RETRY_FULL: Final = 1.0
# An intake file this full is moved at once, whatever the interval.
_MOVE_BYTES: Final = 8 << 20
# The supervisor checkpoints the WAL itself, every so many moves, so the WAL stays small.
_CHECKPOINT_EVERY: Final = 16


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
            refuse_foreign(self.path)
            self._lock_fd = take_lock(self.path)
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
        self._moving: IntakeFile | None = None
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
            self._intakes = tuple(IntakeFile(Path(f"{self.path}-intake{n}")) for n in (0, 1))
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
        if has_meta and self._db.execute(VERSION_SQL).fetchone() == ("1",):
            self._db.executescript(MIGRATE_FROM_1_SQL)
        self._db.executescript(SCHEMA_SQL)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    @property
    def lock_fd(self) -> int:
        """The fd of the single-writer lock (forked workers close it)."""
        return self._lock_fd

    def add(self, rows: list[NewTask]) -> None:
        """Record newly accepted tasks durably (all of them or, if the host dies meanwhile, none)."""
        entries = [(NEW, *row) for row in rows]
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
        entries = [(FORGET, seq_of(task_id)) for task_id in task_ids]
        payload = msgpack.packb(entries, use_bin_type=True)
        with self._intake_lock:
            self._intakes[self._active].append(payload, entries)

    def started(self, task_id: str, attempts: int) -> None:
        """The task's handler started (its attempts so far)."""
        self._entries.append((STATE, seq_of(task_id), "running", attempts, None))

    def requeued(self, task_id: str, attempts: int) -> None:
        """The task waits again (a retry, or given back unstarted)."""
        self._entries.append((STATE, seq_of(task_id), "queued", attempts, None))

    def finished(self, task_id: str, status: str, attempts: int, result: bytes) -> None:
        """The task is final; ``result`` is its packed `TaskResult` fields."""
        self._entries.append((STATE, seq_of(task_id), status, attempts, result))

    def forget(self, task_id: str) -> None:
        """Drop a final task whose result outlived ``result_ttl``."""
        self._entries.append((FORGET, seq_of(task_id)))

    def schedule_saved(self, name: str, spec: str, config: bytes, state: str) -> None:
        """A schedule was added or changed (``state`` is its JSON)."""
        self._entries.append((SCHEDULE, name, spec, config, state))

    def schedule_removed(self, name: str) -> None:
        """A schedule was removed."""
        self._entries.append((SCHEDULE, name, None, None, None))

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
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE seq = ? AND task_id = ?", (seq, task_id)
            ).fetchone()
        row = row_of(found) if found else None
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
        upserts, statements = moves_of(entries)
        self._db.execute("BEGIN")
        try:
            for start in range(0, len(upserts), UPSERT_ROWS):
                batch = upserts[start : start + UPSERT_ROWS]
                shape = 1 << (len(batch) - 1).bit_length()
                batch += [batch[-1]] * (shape - len(batch))  # the same row twice upserts the same values
                self._db.execute(upsert_sql(shape), list(itertools.chain.from_iterable(batch)))
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
                found = self._db.execute(f"SELECT {TASK_COLUMNS} FROM tasks ORDER BY seq").fetchall()
        except sqlite3.Error as exc:
            raise OrchestratorError(f"cannot read the tasks of the journal {self.path}: {exc}") from exc
        return [row_of(r) for r in found]

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
