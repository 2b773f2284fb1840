"""The control socket's wire format and where sockets live; light enough for the CLI to import.

A frame is a 4-byte unsigned big-endian length and one msgpack map. A request is
``{"op": str, ...}``; a reply is ``{"ok": true, "data": ...}`` or ``{"ok": false, "error": str}``.
Frames are capped at 16 MiB both ways.

This module imports only the standard library and msgpack: ``orch status`` must start fast.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Any, Final

import msgpack

MAX_FRAME: Final = 16 * 2**20
_HEADER: Final = struct.Struct(">I")
SOCKET_SUFFIX: Final = ".sock"


class WireError(Exception):
    """A frame that breaks the protocol: too large, truncated, or not a msgpack map."""


class FrameTooLarge(WireError):
    """A frame announced more than `MAX_FRAME` bytes; its body was not read."""


def runtime_dir() -> Path:
    """``$ORCH_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/orch``, else ``/tmp/orch-<uid>``."""
    explicit = os.environ.get("ORCH_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "orch"
    return Path(f"/tmp/orch-{os.getuid()}")


def socket_name(name: str, default: bool) -> str:
    """``<name>.sock``, or ``default-<pid>.sock`` for an orchestrator left at the default name."""
    return f"{name}-{os.getpid()}{SOCKET_SUFFIX}" if default else f"{name}{SOCKET_SUFFIX}"


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send one frame; raise `FrameTooLarge` rather than send more than the cap."""
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(f"a frame of {len(body)} bytes is over the {MAX_FRAME}-byte cap")
    sock.sendall(_HEADER.pack(len(body)) + body)


def recv_frame(sock: socket.socket, deadline: float | None = None) -> dict[str, Any] | None:
    """Receive one frame; None at a clean end of stream (before any byte of a frame).

    With a ``deadline`` (monotonic), the whole frame must have arrived by then, however the peer
    spreads its bytes; without one, the socket's own timeout applies to each read.

    Raises:
        FrameTooLarge: the frame announces more than the cap (its body is left unread).
        WireError: a truncated frame or a body that is not a msgpack map.
        TimeoutError: the deadline passed first.
    """
    header = _recv_exactly(sock, _HEADER.size, allow_eof=True, deadline=deadline)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise FrameTooLarge(f"frame of {size} bytes is over the {MAX_FRAME}-byte cap")
    body = _recv_exactly(sock, size, allow_eof=False, deadline=deadline)
    assert body is not None
    try:
        message = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # TypeError: a map with a list key
        raise WireError(f"frame is not msgpack: {exc}") from exc
    if not isinstance(message, dict):
        raise WireError(f"frame is a {type(message).__name__}, not a map")
    return message


def _recv_exactly(sock: socket.socket, size: int, allow_eof: bool, deadline: float | None) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive in time")
            sock.settimeout(left)
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            if allow_eof and not chunks:
                return None
            raise WireError(f"connection closed {len(chunks)} bytes into a {size}-byte read")
        chunks += chunk
    return bytes(chunks)


def remove_stale_socket(path: Path) -> bool:
    """Remove ``path`` if it is a socket of this user's (a stale one: nothing accepts on it); a
    file of any other kind or owner is left alone. Returns whether it was removed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
        return False
    path.unlink(missing_ok=True)
    return True
