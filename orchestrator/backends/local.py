"""The local backend: worker processes on this machine, started with the configured start method.

This module knows nothing of tasks; the supervisor decides when a worker starts, what it runs and
when it goes. The fork server that ``forkserver`` workers come from is shared by the whole host
process; it is started with the ``workers`` package preloaded, so a new worker is a cheap fork.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.util
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import forkserver, resource_tracker
from typing import Any, Final

from orchestrator.backends.base import WorkerHandle
from orchestrator.config import StartMethod
from orchestrator.errors import OrchestratorError
from orchestrator.limits import kill_process_tree
from workers.calls import Initializer
from workers.runtime import worker_main

logger = logging.getLogger(__name__)

# Modules the fork server imports once, so that each forked worker starts with them loaded.
FORKSERVER_PRELOAD: Final = ["workers.runtime", "workers.registry", "msgpack", "workers.preloaded"]

MAIN_GUARD_HELP: Final = (
    "this script was imported again by a worker process while it started, and it created an "
    "orchestrator at import time. With the 'forkserver' and 'spawn' start methods, every worker "
    "imports the host's main module: put the code that creates the orchestrator under "
    "`if __name__ == \"__main__\":`, or use start_method='fork'"
)


class WorkerPool:
    """Starts worker processes with the configured start method and kills them when told."""

    def __init__(
        self,
        start_method: StartMethod,
        shm_threshold: int | None,
        block_namespace: str,
        private_fds: tuple[int, ...] = (),
        max_memory_mb: float | None = None,
        initializers: dict[str, Initializer] | None = None,
        log_level: str | None = None,
    ) -> None:
        check_not_reimported_main()
        # Executor initializers every worker gets as it starts (see `workers.calls.inherit`).
        self._initializers = initializers or {}
        self._log_level = log_level
        self._max_memory_mb = max_memory_mb
        self._start_method = start_method
        self._shm_threshold = shm_threshold
        self._block_namespace = block_namespace
        # Host fds a forked worker must not keep open (the journal's single-writer lock).
        self._private_fds = private_fds
        self._context: Any = multiprocessing.get_context(start_method)
        self._leased = True
        # Called when new capacity arrives on its own (never here: local workers are spawned).
        self.on_arrival: Callable[[], None] | None = None
        _helper_lease.acquire()
        if start_method == "forkserver":
            # Started now, beside the host, the server imports the worker side while the host
            # goes on; the first spawn would otherwise wait for all of it on the supervisor's
            # thread. (A spawn meanwhile waits on the server's lock; a failure here, for the spawn.)
            self._starting: threading.Thread | None = threading.Thread(
                target=forkserver.ensure_running, name="orch-forkserver", daemon=True
            )
            self._starting.start()
        else:
            self._starting = None
        if shm_threshold is not None:
            # Workers must share the host's resource tracker (fork children inherit it only if it
            # runs first): a tracker of their own would unlink the host's blocks when they exit.
            resource_tracker.ensure_running()

    def spawn(
        self, worker_id: int, task_type: str | None = None, waiting: bool = True
    ) -> WorkerHandle | None:
        """Start one worker process; it says Hello on its pipe once it is ready for tasks."""
        if not waiting:
            return None  # local processes exist only once started here
        host_end, worker_end = self._context.Pipe(duplex=True)
        task_reader, task_writer = self._context.Pipe(duplex=False)
        # Under fork the child inherits the host's ends of its own pipes; it closes them by number.
        inherited = (
            [host_end.fileno(), task_writer.fileno(), *self._private_fds]
            if self._start_method == "fork"
            else []
        )
        process = self._context.Process(
            target=worker_main,
            args=(worker_end, worker_id, os.getpid(), inherited, self._shm_threshold, self._block_namespace),
            kwargs={
                "task_conn": task_reader,
                "max_memory_mb": self._max_memory_mb,
                "initializers": self._initializers,
                "log_level": self._log_level,
            },
            name=f"orch-worker-{worker_id}",
        )
        process.start()
        worker_end.close()
        task_reader.close()
        logger.debug("spawned worker %d (pid %s)", worker_id, process.pid)
        return WorkerHandle(worker_id, process, host_end, task_writer)

    @property
    def block_namespace(self) -> str:
        """The orchestrator's part of the names of its shared-memory blocks."""
        return self._block_namespace

    @staticmethod
    def may_run(worker: WorkerHandle, task_type: str) -> bool:
        """Whether ``worker`` may take a task of ``task_type`` (locally, any worker may)."""
        return True

    @staticmethod
    def kill(worker: WorkerHandle, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the worker's whole process tree."""
        kill_process_tree(worker.pid, sig)

    @staticmethod
    def connection_lost(worker: WorkerHandle) -> None:
        """The worker's pipe hit EOF (a local process's sentinel reports its death by itself)."""

    @staticmethod
    def forget(worker: WorkerHandle) -> None:
        """Free what the host holds for a reaped worker."""
        worker.conn.close()
        if worker.task_conn is not None:
            worker.task_conn.close()

    def close(self, wait: bool = True) -> None:
        """Release this pool's share of the multiprocessing helpers (see `_HelperLease`)."""
        if self._starting is not None:
            self._starting.join()  # a server started after the release would outlive every pool
        if self._leased:
            self._leased = False
            _helper_lease.release()


def check_not_reimported_main() -> None:
    """Raise `OrchestratorError` when a worker's start-up is re-running the host's main script."""
    main = sys.modules.get("__main__")
    inheriting = getattr(multiprocessing.current_process(), "_inheriting", False)
    if inheriting or getattr(main, "__name__", "__main__") == "__mp_main__":
        raise OrchestratorError(MAIN_GUARD_HELP)


class _HelperLease:
    """Counts this process's pools; the last one out stops the helpers an orchestrator started.

    The fork server and the resource tracker are per-process singletons of multiprocessing,
    started on first use by ``forkserver`` (both) and ``spawn`` (the tracker). Left running,
    they would outlive every orchestrator as child processes of the host. Each is stopped only
    if an orchestrator started it and no other multiprocessing child of the host still runs,
    since any such process may hold the helper's pipe (and stopping the tracker waits for every
    holder).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._started_forkserver = False
        self._started_tracker = False

    def acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                self._started_forkserver = _forkserver_pid() is None
                self._started_tracker = _tracker_pid() is None
                if self._started_forkserver:
                    forkserver.set_forkserver_preload(FORKSERVER_PRELOAD)
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            # Only multiprocessing children may hold a helper's pipe (subprocess closes fds).
            if multiprocessing.active_children():
                return
            if self._started_forkserver and _forkserver_pid() is not None:
                _stop_forkserver()
            if self._started_tracker and _tracker_pid() is not None:
                _stop_tracker()
            self._started_forkserver = self._started_tracker = False
            logger.debug("stopped the multiprocessing helpers this orchestrator started")


# The stdlib stops its helpers by closing their pipe and waiting for them without a limit: a
# process a handler double-forked keeps a copy of that pipe, so the wait would last as long as it
# does. These stops do the same steps, and kill a helper that has not ended after this long.
HELPER_STOP_WAIT: Final = 1.0


def _stop_forkserver() -> None:
    server: Any = forkserver._forkserver
    with server._lock:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
        _end_helper(server._forkserver_pid)
        server._forkserver_pid = None
        if not multiprocessing.util.is_abstract_socket_namespace(server._forkserver_address):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(server._forkserver_address)
        server._forkserver_address = None


def _stop_tracker() -> None:
    tracker: Any = resource_tracker._resource_tracker
    with tracker._lock:
        if tracker._fd is None:
            return
        os.close(tracker._fd)
        tracker._fd = None
        _end_helper(tracker._pid)
        tracker._pid = None


def _end_helper(pid: int) -> None:
    """Reap a helper asked to stop, killing it if it has not ended within `HELPER_STOP_WAIT`."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # no pidfd (an old kernel): the helper gets the same time, looked at less often
        ended = _ended_within(pid, HELPER_STOP_WAIT)
    else:
        try:
            ended = bool(select.select([pidfd], [], [], HELPER_STOP_WAIT)[0])
        finally:
            os.close(pidfd)
    if not ended:
        logger.warning("a multiprocessing helper (pid %d) did not stop; killing it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _ended_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    with contextlib.suppress(ChildProcessError):  # reaped already
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
    return True


def _forkserver_pid() -> int | None:
    return forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined,no-any-return]


def _tracker_pid() -> int | None:
    return resource_tracker._resource_tracker._pid  # type: ignore[attr-defined,no-any-return]


_helper_lease = _HelperLease()
