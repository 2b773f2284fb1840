"""The Dask worker plugin that runs our worker processes on its node.

The host registers a `NodePlugin` on every Dask worker (and on those that join later). At setup it
starts one of our worker processes (`workers.remote`) per thread of the Dask worker; later the host
asks for more with `start_processes` when it needs capacity there (after idle processes retired,
or one crashed), never beyond the thread count. Removing the plugin stops them all: SIGTERM, then
SIGKILL after the grace period. The processes are started with ``subprocess`` rather than
``multiprocessing`` because a Dask worker process is daemonic and may not have multiprocessing
children.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Final

from distributed import WorkerPlugin

# How long a request for a process waits for a slot whose process is still exiting.
SLOT_WAIT: Final = 2.0
# Where a process's slot number goes in its command line.
_INDEX_ARG: Final = 6


async def start_processes(name: str, count: int, dask_worker: Any = None) -> int:
    """Run on a Dask worker by the host (``Client.run``, fire-and-forget, which Dask allows only
    for coroutines): start up to ``count`` more processes."""
    plugin = dask_worker.plugins.get(name) if dask_worker is not None else None
    if not isinstance(plugin, NodePlugin):
        return 0
    # The host asks as soon as it sees a process's connection close, which can be a moment
    # before that process has exited and freed its slot.
    for _ in range(int(SLOT_WAIT / 0.02)):
        started = plugin.start(count)
        if started:
            return started
        await asyncio.sleep(0.02)
    return 0


class NodePlugin(WorkerPlugin):
    """Our worker processes on one Dask worker, for one host: at most one per thread."""

    def __init__(self, host: str, port: int, authkey: bytes, grace: float) -> None:
        self._host = host
        self._port = port
        self._authkey = authkey
        self._grace = grace
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._command: list[str] = []
        self._env: dict[str, str] = {}
        self._threads = 0
        self._stopping = False

    def __getstate__(self) -> dict[str, Any]:
        return {"host": self._host, "port": self._port, "authkey": self._authkey, "grace": self._grace}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["host"], state["port"], state["authkey"], state["grace"])  # type: ignore[misc]

    def setup(self, worker: Any) -> None:
        """Start one process per thread of the Dask worker."""
        resources = {str(name): float(amount) for name, amount in worker.state.total_resources.items()}
        # The authkey goes on each process's stdin: a command line (and the environment) can be read
        # by every local user of the node, in /proc.
        self._command = [
            sys.executable,
            "-m",
            "workers.remote",
            self._host,
            str(self._port),
            worker.address,
            "",
            str(os.getpid()),
            json.dumps(resources),
        ]
        # The Dask worker's import path, so handler modules import the same way in our processes.
        self._env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._threads = worker.state.nthreads
        self.start(self._threads)

    def start(self, count: int) -> int:
        """Start up to ``count`` processes in free slots (ended ones are reaped); how many started."""
        started = 0
        with self._lock:
            for index in range(self._threads):
                process = self._processes.get(index)
                if self._stopping or started == count or (process is not None and process.poll() is None):
                    continue
                command = [*self._command]
                command[_INDEX_ARG] = str(index)
                process = subprocess.Popen(
                    command, env=self._env, stdin=subprocess.PIPE, start_new_session=True
                )
                assert process.stdin is not None
                with contextlib.suppress(BrokenPipeError):  # it died at once: it is reaped as any other
                    process.stdin.write(self._authkey.hex().encode() + b"\n")
                process.stdin.close()
                self._processes[index] = process
                started += 1
        return started

    def teardown(self, worker: Any) -> None:
        """Stop this node's processes: SIGTERM, then SIGKILL after the grace period."""
        with self._lock:
            self._stopping = True
        processes = [p for p in self._processes.values() if p.poll() is None]
        for process in processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + self._grace
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
