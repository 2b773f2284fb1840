"""Where a worker's tasks come from, and what it does once its host is gone.

A local worker reads its tasks from a pipe of their own (`TaskPipe`); a worker on a Dask node
has one connection, whose reader thread queues them (`RemoteTasks`). A worker whose host is gone
kills its own children and exits (`exit_orphaned`): no worker outlives its host.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import NoReturn

from workers import protocol


class RemoteTasks:
    """Tasks the reader thread took off the one connection of a remote worker, in order."""

    def __init__(self) -> None:
        self._items: deque[protocol.Message] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._forward: Callable[[protocol.Message], object] | None = None

    def put(self, msg: protocol.Message) -> None:
        with self._ready:
            if self._forward is not None:
                self._forward(msg)
                return
            self._items.append(msg)
            self._ready.notify()

    def get(self) -> protocol.Message:
        """The next task (or Shutdown), once there is one."""
        with self._ready:
            while not self._items:
                self._ready.wait()
            return self._items.popleft()

    def forward_to(self, deliver: Callable[[protocol.Message], object]) -> None:
        """From now on, hand every message to ``deliver`` (in order, those queued first)."""
        with self._ready:
            for msg in self._items:
                deliver(msg)
            self._items.clear()
            self._forward = deliver


class TaskPipe:
    """The pipe a local worker's tasks come on, read by the thread that runs them."""

    def __init__(self, conn: Connection) -> None:
        self._frames = protocol.FrameReader(conn.fileno())
        self._items: deque[protocol.Message] = deque()

    def get(self) -> protocol.Message:
        """The next task (or Shutdown), once there is one; exits if the host is gone."""
        while not self._items:
            self._items.extend(read_messages(self._frames))
        return self._items.popleft()

    def forward_to(self, deliver: Callable[[protocol.Message], object]) -> None:
        """From now on, hand every message to ``deliver``, read on a thread of its own."""

        def forward() -> None:
            while not isinstance(msg := self.get(), protocol.Shutdown):
                deliver(msg)
            deliver(msg)

        threading.Thread(target=forward, name="orch-tasks", daemon=True).start()


def read_messages(frames: protocol.FrameReader) -> list[protocol.Message]:
    """The messages now whole on a pipe from the host (one read, blocking while nothing came;
    maybe none yet); the worker exits when the host is gone (EOF) or the pipe carries garbage."""
    try:
        return [protocol.decode(frame) for frame in frames.read()]
    except (EOFError, OSError):
        exit_orphaned()
    except protocol.ProtocolError as exc:
        print(f"orchestrator worker {os.getpid()}: {exc}", file=sys.stderr)
        exit_orphaned()


def process_alive(pid: int) -> bool:
    """True unless ``pid`` is gone or a zombie (a dead host not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def exit_orphaned() -> NoReturn:
    """The host is gone: kill this worker's own children (a handler's subprocesses), then exit."""
    with contextlib.suppress(Exception):
        import psutil

        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
    os._exit(0)
