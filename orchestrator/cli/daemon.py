"""``orch run``: a standalone orchestrator in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

from orchestrator.core import ParallelOrchestrator

logger = logging.getLogger("orchestrator")


def run_daemon(fields: dict[str, Any], name: str | None, grace: float) -> None:
    """Serve until a stop signal: then take nothing new, cancel the queue, give running tasks
    ``grace`` seconds, kill the rest and remove the control socket."""
    # Handler modules import from the daemon's working directory, as with `python -m`.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if name is not None:
        fields = {**fields, "name": name}
    orchestrator = ParallelOrchestrator(**fields)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    orchestrator.initialize()
    control_path = orchestrator.control_socket_path
    where = str(control_path) if control_path is not None else "no control socket"
    if orchestrator.metrics_url:
        where += f", metrics on {orchestrator.metrics_url}"
    print(f"orchestrator {orchestrator.config.name!r} running (pid {os.getpid()}, {where})", flush=True)
    while not stop.wait(3600):
        pass
    print("stopping: cancelling queued tasks, waiting for running ones", flush=True)
    orchestrator.shutdown(wait=True, cancel_pending=True, timeout=grace)
