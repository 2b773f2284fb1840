"""A client for control sockets: find running orchestrators and send them requests.

Light on purpose (standard library and msgpack only), since every ``orch`` command starts here.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.wire import (
    SOCKET_SUFFIX,
    WireError,
    recv_frame,
    remove_stale_socket,
    runtime_dir,
    send_frame,
)

# Seconds a control socket has to take a connection, and then to answer each request: a stopped
# host (Ctrl-Z) still lets connections into its backlog, but answers none.
CONNECT_TIMEOUT = 5.0
# struct ucred: pid, uid, gid.
_PEER_CREDENTIALS = struct.Struct("3i")


class ClientError(Exception):
    """A request that failed: no such orchestrator, a refused connection, or an error reply."""


class BusyError(ClientError):
    """The orchestrator took no connection, or sent no reply, in time (a stopped host?)."""


@dataclass(frozen=True)
class Endpoint:
    """One running orchestrator's control socket."""

    name: str
    path: Path

    def request(self, op: str, **arguments: Any) -> Any:
        """Send one request and return the reply's data; raise `ClientError` on an error reply."""
        with self._connect() as sock:
            send_frame(sock, {"op": op, **arguments})
            reply = self._read(sock)
        if reply is None:
            raise ClientError(f"{self.name}: the connection closed without a reply")
        if not reply.get("ok"):
            raise ClientError(f"{self.name}: {reply.get('error', 'request failed')}")
        return reply.get("data")

    def watch(self, task_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Yield events (maps) as they happen; with a task id, until that task's final event."""
        arguments: dict[str, Any] = {"op": "watch"}
        if task_id is not None:
            arguments["task_id"] = task_id
        with self._connect() as sock:
            send_frame(sock, arguments)
            first = self._read(sock)
            if first is None or not first.get("ok"):
                raise ClientError(f"{self.name}: {(first or {}).get('error', 'watch refused')}")
            sock.settimeout(None)
            while (event := self._read(sock)) is not None:
                yield event

    def _read(self, sock: socket.socket) -> dict[str, Any] | None:
        try:
            return recv_frame(sock)
        except TimeoutError as exc:
            raise BusyError(
                f"{self.name}: busy, no reply within {CONNECT_TIMEOUT:g} s (a stopped host?); "
                "it may still act on the request when it resumes"
            ) from exc
        except (OSError, WireError) as exc:
            raise ClientError(f"{self.name}: bad reply: {exc}") from exc

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(self.path))
            _check_server(sock, self.path)
        except (TimeoutError, BlockingIOError) as exc:
            sock.close()
            raise BusyError(f"{self.name}: busy, it took no connection in {CONNECT_TIMEOUT:g} s") from exc
        except OSError as exc:
            sock.close()
            raise ClientError(f"{self.name}: cannot connect to {self.path}: {exc.strerror or exc}") from exc
        except ClientError:
            sock.close()
            raise
        return sock


def _check_server(sock: socket.socket, path: Path) -> None:
    """Refuse a socket served by another user: a request may carry secrets (a task's config)."""
    _, uid, _ = _PEER_CREDENTIALS.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER_CREDENTIALS.size)
    )
    if uid != os.getuid():
        raise ClientError(
            f"the control socket {path} is served by uid {uid}, not by you (uid {os.getuid()}); "
            "refusing to talk to it"
        )


def private_runtime_dir() -> Path | None:
    """The runtime dir if it is safe to find orchestrators in, None if there is none.

    Raises:
        ClientError: it is not a real directory of this user with mode 0700, so another user could
            have planted a socket in it (or it is not readable).
    """
    directory = runtime_dir()
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ClientError(f"cannot read the runtime dir {directory}: {exc.strerror or exc}") from exc
    advice = "set ORCH_RUNTIME_DIR to a directory of your own (mode 0700)"
    if not stat.S_ISDIR(info.st_mode):
        raise ClientError(f"the runtime dir {directory} is not a directory (a symlink?); {advice}")
    if info.st_uid != os.getuid():
        raise ClientError(
            f"permission denied: the runtime dir {directory} belongs to uid {info.st_uid}, "
            f"not to you (uid {os.getuid()}); {advice}"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        raise ClientError(
            f"the runtime dir {directory} has mode {stat.S_IMODE(info.st_mode):04o}, so other users "
            f"could place sockets in it; {advice}"
        )
    return directory


@dataclass(frozen=True)
class Found:
    """What the runtime dir holds: live orchestrators, stale sockets (found and removed), and
    busy ones (a socket that did not take a connection in time: a stopped host, a full backlog)."""

    live: list[Endpoint]
    stale: list[Path]
    busy: list[Path]


def discover() -> Found:
    """The orchestrators in the runtime dir; every connect is bounded by `CONNECT_TIMEOUT`.

    Raises:
        ClientError: the runtime dir is not this user's own (see `private_runtime_dir`), or a
            socket in it is served by another user.
    """
    found = Found([], [], [])
    directory = private_runtime_dir()
    if directory is None:
        return found
    for path in sorted(directory.glob(f"*{SOCKET_SUFFIX}")):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(CONNECT_TIMEOUT)
        try:
            probe.connect(str(path))
            _check_server(probe, path)
        except ConnectionRefusedError:
            if remove_stale_socket(path):
                found.stale.append(path)
            continue
        except (TimeoutError, BlockingIOError):  # no room in its backlog, or no answer in time
            found.busy.append(path)
            continue
        except OSError:
            continue
        finally:
            probe.close()
        found.live.append(Endpoint(_name_of(path), path))
    return found


def _name_of(path: Path) -> str:
    return path.name.removesuffix(SOCKET_SUFFIX)


def choose(name: str | None) -> Endpoint:
    """The orchestrator called ``name``, or the only one running.

    Raises:
        ClientError: none running, no such name, or several running and no name given.
    """
    found = discover()
    live = found.live
    if name is not None:
        for endpoint in live:
            if endpoint.name == name:
                return endpoint
        if any(_name_of(path) == name for path in found.busy):
            raise BusyError(
                f"orchestrator {name!r} is busy: it did not take a connection within {CONNECT_TIMEOUT:g} s"
            )
        raise ClientError(f"no orchestrator named {name!r} is running in {runtime_dir()}")
    if not live and found.busy:
        names = ", ".join(_name_of(path) for path in found.busy)
        raise BusyError(
            f"busy: {names} did not take a connection within {CONNECT_TIMEOUT:g} s (a stopped host?)"
        )
    if not live:
        raise ClientError(f"no orchestrator is running (no live control socket in {runtime_dir()})")
    if len(live) > 1:
        names = ", ".join(e.name for e in live)
        raise ClientError(f"several orchestrators are running ({names}); pick one with --name")
    return live[0]
