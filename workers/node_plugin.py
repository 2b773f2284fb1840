"""The Dask worker plugin that keeps our worker processes running on its node.

The host registers a `NodePlugin` on every Dask worker (and on those that join later). It starts
one of our worker processes (`workers.remote`) per thread of the Dask worker, starts one again
when it ends, and stops them all when the host removes the plugin: SIGTERM, then SIGKILL after
the grace period. The processes are started with ``subprocess`` rather than ``multiprocessing``
because a Dask worker process is daemonic and may not have multiprocessing children.
"""

from __future__ import annotations

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

# A process that ends is started again after this long (a crash loop stays slow).
RESTART_DELAY: Final = 0.5


class NodePlugin(WorkerPlugin):
    """Keeps ``nthreads`` of our worker processes running on one Dask worker, for one host."""

    def __init__(self, host: str, port: int, authkey: bytes, grace: float) -> None:
        self._host = host
        self._port = port
        self._authkey = authkey
        self._grace = grace
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = threading.Event()
        self._keeper: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"host": self._host, "port": self._port, "authkey": self._authkey, "grace": self._grace}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["host"], state["port"], state["authkey"], state["grace"])  # type: ignore[misc]

    def setup(self, worker: Any) -> None:
        """Start this node's processes (one per thread of the Dask worker) and keep them running."""
        resources = {str(name): float(amount) for name, amount in worker.state.total_resources.items()}
        command = [
            sys.executable,
            "-m",
            "workers.remote",
            self._host,
            str(self._port),
            self._authkey.hex(),
            worker.address,
            "",
            str(os.getpid()),
            json.dumps(resources),
        ]
        # The Dask worker's import path, so handler modules import the same way in our processes.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}

        def keep_running() -> None:
            while not self._stopping.is_set():
                for index in range(worker.state.nthreads):
                    process = self._processes.get(index)
                    if process is None or process.poll() is not None:
                        command[7] = str(index)
                        self._processes[index] = subprocess.Popen(command, env=env, start_new_session=True)
                self._stopping.wait(RESTART_DELAY)

        self._keeper = threading.Thread(target=keep_running, name="orch-node-keeper", daemon=True)
        self._keeper.start()

    def teardown(self, worker: Any) -> None:
        """Stop this node's processes: SIGTERM, then SIGKILL after the grace period."""
        self._stopping.set()
        if self._keeper is not None:
            self._keeper.join()
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
