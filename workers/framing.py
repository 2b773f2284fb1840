"""Frames on a pipe, as `multiprocessing.Connection.send_bytes` writes them, read back in one
system call per wake-up; and the error a peer that breaks the protocol raises."""

from __future__ import annotations

import os
import struct
from typing import Final


class ProtocolError(Exception):
    """A frame that is not a message of this protocol version."""


# `Connection.send_bytes` framing: a signed 32-bit big-endian length, or -1 then an unsigned 64-bit one.
_SHORT_HEADER: Final = struct.Struct("!i")
_LONG_HEADER: Final = struct.Struct("!Q")
_READ_SIZE: Final = 1 << 16
# The most one read asks for, however long the frame a peer announces: a header is the peer's word,
# and os.read allocates what it is asked for before anything arrives.
_MAX_READ: Final = 1 << 26
# The longest frame taken from a peer (a larger announced length is a protocol violation).
MAX_FRAME_BYTES: Final = 1 << 32


def frame(payload: bytes) -> bytes:
    """``payload`` framed as `Connection.send_bytes` frames it, so that several frames can go in
    one write and be read back by `Connection.recv_bytes` or a `FrameReader`."""
    if len(payload) <= 0x7FFFFFFF:
        return _SHORT_HEADER.pack(len(payload)) + payload
    return _SHORT_HEADER.pack(-1) + _LONG_HEADER.pack(len(payload)) + payload


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (a blocking pipe may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    """Every frame `Connection.send_bytes` wrote to a pipe, in one system call per wake-up.

    `Connection.recv_bytes` reads a frame's header and its body separately: two system calls per
    message, each a point where another thread of the process may take the GIL and keep it for a
    whole switch interval. This reads what has arrived at once and splits it into frames.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        # The start of a frame not yet whole, kept in pieces so that a large frame is joined once.
        self._parts: list[bytes] = []
        self._held = 0
        self._wanted = 0

    def read(self) -> list[bytes]:
        """Read once and return the frames now whole (maybe none); blocks only while nothing arrived.

        Raises EOFError when the other end has closed, `ProtocolError` on a corrupt header.
        """
        data = os.read(self._fd, min(_MAX_READ, max(_READ_SIZE, self._wanted - self._held)))
        if not data:
            raise EOFError("the pipe was closed")
        if self._parts:
            self._parts.append(data)
            self._held += len(data)
            if self._held < self._wanted:
                return []
            data = b"".join(self._parts)
            self._parts = []
        frames, rest, self._wanted = _split_frames(data)
        if rest < len(data):
            self._parts = [data[rest:]]
        self._held = len(data) - rest
        return frames


def _split_frames(data: bytes) -> tuple[list[bytes], int, int]:
    """The whole frames in ``data``, where the rest starts, and how long the rest must grow to."""
    frames: list[bytes] = []
    start = 0
    size = len(data)
    while True:
        if size - start < _SHORT_HEADER.size:
            return frames, start, _SHORT_HEADER.size
        (length,) = _SHORT_HEADER.unpack_from(data, start)
        header = _SHORT_HEADER.size
        if length < 0:
            if length != -1:
                raise ProtocolError(f"corrupt frame header (length {length})")
            header += _LONG_HEADER.size
            if size - start < header:
                return frames, start, header
            (length,) = _LONG_HEADER.unpack_from(data, start + _SHORT_HEADER.size)
            if length > MAX_FRAME_BYTES:
                raise ProtocolError(f"a frame of {length} bytes announced; the most is {MAX_FRAME_BYTES}")
        end = start + header + length
        if end > size:
            return frames, start, header + length
        frames.append(data[start + header : end])
        start = end
