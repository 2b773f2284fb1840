"""What the supervisor needs of a backend: the host's handle on one worker, and the pool protocol.

A backend starts worker processes, kills them and tells when capacity arrives; it knows nothing of
tasks. `local.WorkerPool` runs them on this machine, `dask.DaskPool` on a Dask cluster.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Final, Protocol

from orchestrator.scheduler import Timer
from workers import protocol
from workers.framing import frame, write_all

# What a local worker's main thread reads from its task pipe: its tasks, and the order to stop after them.
_TASK_PIPE_MESSAGES: Final = (protocol.RunTask, protocol.Shutdown)


@dataclass(eq=False)
class WorkerHandle:
    """The host's view of one worker process. Owned and mutated by the supervisor thread only."""

    worker_id: int
    process: BaseProcess
    conn: Connection
    # The pipe tasks go on (a local worker's main thread reads it); None: they go on ``conn``.
    task_conn: Connection | None = None
    type: str | None = None
    state: str = "starting"
    # Its tasks in the order they were sent, with their `RunTask.seq`.
    tasks: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    pending: list[protocol.RunTask] = field(default_factory=list)
    slots: int = 1
    prefetch: int = 0
    # An async worker runs tasks side by side; a sync one runs one, even while it waits. None
    # until its first task started (the handler's kind decides).
    concurrent: bool | None = None
    # Tasks of this worker blocked in a wait whose slot is lent to other work.
    lent: int = 0
    # The Dask worker whose node runs this process (None: a local worker); its display id.
    node: str | None = None
    label: str | None = None
    # Whether the pid is one of this machine's (memory and CPU limits are measured through it).
    local: bool = True
    # The task types this worker's node offers (None: every type).
    offers: frozenset[str] | None = None
    tasks_completed: int = 0
    started_at: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.time)
    exit_reason: str | None = None
    # What the worker sent that broke the protocol (it was killed for it).
    violation: str | None = None
    timer: Timer | None = None
    frames: protocol.FrameReader = field(init=False, repr=False)
    # The worker's pid, read once: the process object re-checks its state on every read.
    pid: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.frames = protocol.FrameReader(self.conn.fileno())
        self.pid = self.process.pid

    @property
    def current_task(self) -> str | None:
        """The oldest task this worker runs (None when it runs none)."""
        return next(iter(self.tasks), None)

    def has_room(self) -> bool:
        """True while a task sent now would start at once (fewer tasks than its slots)."""
        return self._occupied() < self.slots and self.exit_reason is None

    def can_prefetch(self, depth: int) -> bool:
        """True while the worker may hold one more task queued behind its running ones: fewer than
        ``depth`` queued, and than its own ``prefetch`` (0 for a worker that takes none)."""
        queued = min(self.prefetch, depth)
        return self._occupied() < self.slots + queued and self.exit_reason is None and not self.lent_out

    @property
    def lent_out(self) -> bool:
        """A sync worker whose task waits: it runs nothing else, and counts toward no limit."""
        return not self.concurrent and self.lent > 0

    def _occupied(self) -> int:
        if self.concurrent:
            return len(self.tasks) - self.lent
        return len(self.tasks)

    @property
    def sentinel(self) -> int:
        """A handle that becomes ready when the process ends (for ``connection.wait``)."""
        return self.process.sentinel

    def send(self, msg: protocol.Message) -> bool:
        """Send one message; False if the worker's pipe is already broken (it is dying)."""
        conn = self.conn
        if self.task_conn is not None and isinstance(msg, _TASK_PIPE_MESSAGES):
            conn = self.task_conn
        try:
            conn.send_bytes(protocol.encode(msg))
        except OSError:
            return False
        return True

    def send_tasks(self, tasks: list[protocol.RunTask]) -> bool:
        """Send several tasks in one write (one system call, and one point where another host
        thread may take the GIL, instead of one per task); False if the pipe is broken."""
        if len(tasks) == 1:
            return self.send(tasks[0])
        conn = self.task_conn or self.conn
        try:
            write_all(conn.fileno(), b"".join(frame(protocol.encode(task)) for task in tasks))
        except OSError:
            return False
        return True


class ProcessPool(Protocol):
    """What the supervisor needs of a pool: `WorkerPool` here, `DaskPool` on a Dask cluster."""

    on_arrival: Callable[[], None] | None

    def spawn(
        self, worker_id: int, task_type: str | None = None, waiting: bool = True
    ) -> WorkerHandle | None:
        """A new worker for ``task_type`` (None: any), or None when none can start now.

        ``waiting=False`` takes only capacity that is already there (processes a remote pool's
        nodes started on their own); ``True`` means a task waits, so a new worker may be started
        (or asked of a node).
        """

    def may_run(self, worker: WorkerHandle, task_type: str) -> bool: ...

    def kill(self, worker: WorkerHandle, sig: signal.Signals = signal.SIGKILL) -> None: ...

    def connection_lost(self, worker: WorkerHandle) -> None: ...

    def forget(self, worker: WorkerHandle) -> None: ...

    @property
    def block_namespace(self) -> str: ...

    def close(self, wait: bool = True) -> None: ...


def exit_reason_of(exitcode: int | None) -> str:
    """A readable form of a process exit code: ``EXIT(3)``, ``SIGKILL``, ``SIGSEGV``..."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"EXIT({exitcode})"
