"""The control socket: a Unix-domain socket through which ``orch`` sees and drives an orchestrator.

One accept thread and one thread per connection, never the supervisor's. Only the same user may
connect (checked with SO_PEERCRED before any byte is read); every request is validated, and a bad
one gets an error reply and closes its own connection only. No pickle: frames are msgpack maps
(see `orchestrator.wire`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import reprlib
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from orchestrator.config import OrchestratorConfig
from orchestrator.errors import OrchestratorError
from orchestrator.lookup import TaskLookup
from orchestrator.models import EVENT_NAMES, Event, TaskPartialEvent, TaskResult, TaskStatus
from orchestrator.wire import (
    SOCKET_SUFFIX,
    FrameTooLarge,
    WireError,
    recv_frame,
    remove_stale_socket,
    runtime_dir,
    send_frame,
    socket_name,
)


class Controlled(Protocol):
    """The members of an orchestrator that its control socket uses (its public ones)."""

    @property
    def config(self) -> OrchestratorConfig: ...

    def snapshot(self) -> dict[str, Any]: ...

    def get_result(self, task_id: str) -> TaskResult | None: ...

    def get_task_status(self, task_id: str) -> TaskStatus: ...

    def submit_task(self, spec: Any) -> str: ...

    def cancel(self, task_id: str) -> bool: ...

    def on(self, event: str, callback: Callable[[Any], object]) -> Callable[[], None]: ...


logger = logging.getLogger(__name__)

IDLE_TIMEOUT: Final = 60.0  # a connection whose next request has not arrived whole by then is closed
MAX_CONNECTIONS: Final = 64  # beyond, a connection gets one "busy" frame and is closed
# Waits between accepts that failed for want of resources (EMFILE and the like).
_ACCEPT_BACKOFF: Final = 0.05
_ACCEPT_BACKOFF_MAX: Final = 1.0
_RESOURCE_ERRORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PROBE_TIMEOUT: Final = 2.0  # a live server answers a connect at once; a stopped one may never
MAX_TASKS_LISTED: Final = 10_000
_WATCH_BACKLOG: Final = 10_000  # events queued for a slow watcher before the oldest are dropped
_FINAL_EVENTS: Final = frozenset({"task_completed", "task_error", "task_cancelled"})


class ControlServer:
    """Serves one orchestrator's control socket until `close`."""

    def __init__(self, orchestrator: Controlled, tasks: TaskLookup) -> None:
        config = orchestrator.config
        self._orchestrator = orchestrator
        self._task_lookup = tasks
        self._default_name = "name" not in config.model_fields_set
        self.path = prepare_runtime_dir() / socket_name(config.name, self._default_name)
        self._listener: socket.socket | None = None
        # (device, inode) of the socket file once bound: the one file `close` may remove.
        self._bound: tuple[int, int] | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "status": self._status,
            "workers": self._workers,
            "tasks": self._tasks,
            "result": self._result,
            "submit": self._submit,
            "cancel": self._cancel,
        }

    def start(self) -> None:
        """Bind (replacing a stale socket), then serve on a thread of its own.

        Raises:
            OrchestratorError: a live orchestrator already serves this socket.
        """
        self._claim_path()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        listener.bind(str(temporary))
        os.chmod(temporary, 0o600)
        listener.listen(64)
        os.rename(temporary, self.path)  # the socket appears only once it accepts connections
        bound = os.stat(self.path)
        self._bound = (bound.st_dev, bound.st_ino)
        self._listener = listener
        threading.Thread(target=self._accept_loop, name="orch-control", daemon=True).start()

    def _claim_path(self) -> None:
        """An unnamed orchestrator never collides: the second in a process takes ``-2``, and so on."""
        if not self._default_name:
            _claim(self.path)
            return
        stem = self.path.name.removesuffix(SOCKET_SUFFIX)
        for number in range(1, 10_000):
            candidate = self.path.with_name(f"{stem}{'' if number == 1 else f'-{number}'}{SOCKET_SUFFIX}")
            try:
                _claim(candidate)
            except OrchestratorError:
                continue
            self.path = candidate
            return
        raise OrchestratorError(f"no free control socket name next to {self.path}")

    def close(self) -> None:
        """Stop serving, close every connection and remove the socket file; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        self._unlink_own_socket()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def _unlink_own_socket(self) -> None:
        """Remove the socket file only if it is still the one this server bound: a server that never
        started (its name was taken) must not remove the live one's."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return
        if (current.st_dev, current.st_ino) == self._bound:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _accept_loop(self) -> None:
        """Accept until `close`: a transient failure (out of file descriptors, a connection aborted
        before it was taken) is logged and waited out, never the end of serving."""
        assert self._listener is not None
        backoff = _ACCEPT_BACKOFF
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError as exc:
                if self._closed.is_set():
                    return
                if exc.errno in _RESOURCE_ERRORS:
                    logger.warning(
                        "control socket %s cannot accept (%s); retrying in %.2f s", self.path, exc, backoff
                    )
                    self._closed.wait(backoff)
                    backoff = min(2 * backoff, _ACCEPT_BACKOFF_MAX)
                continue
            backoff = _ACCEPT_BACKOFF
            threading.Thread(
                target=self._serve, args=(connection,), name="orch-control-conn", daemon=True
            ).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(IDLE_TIMEOUT)
            if not _same_user(connection):
                with contextlib.suppress(OSError, WireError):
                    send_frame(connection, {"ok": False, "error": "permission denied"})
                return
            with self._lock:
                full = len(self._connections) >= MAX_CONNECTIONS
                if not full:
                    self._connections.add(connection)
            if full:
                with contextlib.suppress(OSError, WireError):
                    send_frame(
                        connection, {"ok": False, "error": f"busy: {MAX_CONNECTIONS} connections open"}
                    )
                return
            try:
                self._serve_requests(connection)
            except (OSError, WireError):
                pass
            except Exception:  # a fault of ours ends this connection only, never the server
                logger.exception("control connection failed")
            finally:
                with self._lock:
                    self._connections.discard(connection)

    def _serve_requests(self, connection: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                request = recv_frame(connection, deadline=time.monotonic() + IDLE_TIMEOUT)
                connection.settimeout(IDLE_TIMEOUT)  # for the reply: a client that never reads
            except FrameTooLarge as exc:
                send_frame(connection, {"ok": False, "error": str(exc)})
                return
            except WireError as exc:
                send_frame(connection, {"ok": False, "error": f"malformed request: {exc}"})
                return
            if request is None:
                return
            op = request.get("op")
            if op == "watch":
                self._watch(connection, request)
                return
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                known = ", ".join(sorted([*self._ops, "watch"]))
                send_frame(connection, {"ok": False, "error": f"unknown op {op!r}; ops are: {known}"})
                return
            send_frame(connection, self._reply(handler, request))

    @staticmethod
    def _reply(handler: Callable[[dict[str, Any]], Any], request: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"ok": True, "data": handler(request)}
        except (OrchestratorError, ValueError, TypeError, KeyError, TimeoutError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # a fault of ours still gets its client a reply
            logger.exception("control request %r failed", request.get("op"))
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}

    # ----------------------------------------------------------------- operations

    def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._orchestrator.snapshot()

    def _workers(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = self._orchestrator.snapshot()["workers"]
        return workers

    def _tasks(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        limit = _argument(request, "limit", int, 100)
        if not 1 <= limit <= MAX_TASKS_LISTED:
            raise ValueError(f"limit must be between 1 and {MAX_TASKS_LISTED}, not {limit}")
        status = _argument(request, "status", str, None)
        if status is not None:
            TaskStatus(status)
        return self._task_lookup.summaries(status, _argument(request, "type", str, None), limit)

    def _result(self, request: dict[str, Any]) -> dict[str, Any]:
        task_id = _argument(request, "task_id", str)
        result = self._orchestrator.get_result(task_id)
        if result is None:
            return {"task_id": task_id, "status": self._orchestrator.get_task_status(task_id).value}
        return result_json(result)

    def _submit(self, request: dict[str, Any]) -> dict[str, Any]:
        spec = _argument(request, "spec", dict)
        return {"task_id": self._orchestrator.submit_task(spec)}

    def _cancel(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"cancelled": self._orchestrator.cancel(_argument(request, "task_id", str))}

    def _watch(self, connection: socket.socket, request: dict[str, Any]) -> None:
        """Stream one frame per event until the client leaves (or the watched task ends).

        A watched task's partials emitted before the watch began are replayed first (those kept),
        so a late watcher misses none; it is subscribed before the replay is read, and live
        partials already replayed are skipped.
        """
        events: queue.Queue[Event] = queue.Queue(maxsize=_WATCH_BACKLOG)
        task_id = request.get("task_id")

        def enqueue(event: Event) -> None:
            if task_id is None or getattr(event, "task_id", None) == task_id:
                with contextlib.suppress(queue.Full):
                    events.put_nowait(event)

        unsubscribe = [self._orchestrator.on(name, enqueue) for name in sorted(EVENT_NAMES)]
        try:
            try:
                task_id = _argument(request, "task_id", str, None)
                kept, final = self._task_lookup.partials_so_far(task_id) if task_id else ([], None)
            except (OrchestratorError, ValueError) as exc:
                send_frame(connection, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
                return
            send_frame(connection, {"ok": True, "data": {"watching": task_id or "all"}})
            for index, data in kept:
                replay = TaskPartialEvent.model_construct(
                    event="task_partial", timestamp=datetime.now(UTC), task_id=task_id, index=index, data=data
                )
                send_frame(connection, replay.model_dump(mode="json"))
            if final is not None:
                name = "task_completed" if final.success else f"task_{final.status.value}"
                send_frame(connection, {"event": name, "task_id": task_id, "result": result_json(final)})
                return
            self._stream(connection, events, task_id, replayed=kept[-1][0] if kept else -1)
        finally:
            for stop in unsubscribe:
                stop()

    def _stream(
        self, connection: socket.socket, events: queue.Queue[Event], task_id: str | None, replayed: int
    ) -> None:
        connection.settimeout(None)
        while not self._closed.is_set():
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                if _peer_gone(connection):
                    return
                continue
            if isinstance(event, TaskPartialEvent) and event.index <= replayed:
                continue
            send_frame(connection, event.model_dump(mode="json", fallback=_shown))
            if task_id is not None and event.event in _FINAL_EVENTS:
                return


def prepare_runtime_dir() -> Path:
    """Create the runtime dir 0700 if needed; refuse a symlink, or a directory of another user."""
    directory = runtime_dir()
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    advice = "set ORCH_RUNTIME_DIR to a directory of your own"
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise OrchestratorError(
            f"runtime dir {directory} is not a directory (a symlink?): {exc}; {advice}"
        ) from exc
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid():
            raise OrchestratorError(
                f"runtime dir {directory} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); "
                + advice
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return directory


def _claim(path: Path) -> None:
    """Make way for our socket: a live one is an error, a stale one of ours is removed, and
    anything else in the way (a file, another user's socket) is an error, never removed."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        if remove_stale_socket(path):
            logger.info("replaced the stale control socket %s", path)
            return
        raise OrchestratorError(
            f"{path} is in the way of the control socket and is not a socket of yours; "
            "remove it, or choose another name"
        ) from None
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OrchestratorError(f"cannot use the control socket {path}: {exc}") from exc
    finally:
        probe.close()
    raise OrchestratorError(
        f"another orchestrator is running with this name: its control socket {path} accepts "
        "connections; choose another name, or stop it first"
    )


def _same_user(connection: socket.socket) -> bool:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    uid: int = struct.unpack("3i", credentials)[1]
    return uid == os.getuid()


def _peer_gone(connection: socket.socket) -> bool:
    try:
        return not connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True


_MISSING: Final = object()


def _argument(request: dict[str, Any], key: str, kind: type, default: Any = _MISSING) -> Any:
    value = request.get(key, default)
    if value is _MISSING:
        raise ValueError(f"request needs {key!r}")
    if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is int)):
        raise ValueError(f"{key!r} must be a {kind.__name__}, not {type(value).__name__}")
    return value


def result_json(result: TaskResult) -> dict[str, Any]:
    """A result as JSON-ready data; an executor's result that JSON cannot carry is shown by its repr
    (the control socket never carries pickle)."""
    return result.model_dump(mode="json", fallback=_shown)


def _shown(value: Any) -> str:
    return reprlib.repr(value)
