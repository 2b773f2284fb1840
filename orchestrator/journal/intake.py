"""The intake log: two memory-mapped files that records of journal entries are appended to, each
record checked by its length, a CRC and its file's generation (see the package docstring)."""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack

logger = logging.getLogger("orchestrator.journal")

# The kinds of intake entries: a new task (its row), a task's new state, a task forgotten (its
# result outlived result_ttl, or its submit was refused), a schedule saved or removed.
NEW, STATE, FORGET, SCHEDULE = 0, 1, 2, 3
_INTAKE_MAGIC: Final = b"ORCHINT1"
_INTAKE_HEADER: Final = struct.Struct("<8sQ")  # magic, generation
_RECORD_HEADER: Final = struct.Struct("<IIQ")  # payload length, CRC-32 of the payload, generation
_GENERATION_AT: Final = 8  # the generation's offset in a record header
_INTAKE_SIZE: Final = 1 << 20


class IntakeFile:
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
        self.generation = generation_of(self._map)
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


def generation_of(buffer: bytes | mmap.mmap) -> int:
    if len(buffer) < _INTAKE_HEADER.size:
        return 0
    magic, generation = _INTAKE_HEADER.unpack_from(buffer, 0)
    return int(generation) if magic == _INTAKE_MAGIC else 0
