"""What the supervisor needs from the OS about a worker: memory, CPU time, and killing its tree.

Each function covers a worker and every process below it, since a handler's own subprocesses
count against its limits and must not outlive it. A process that vanished while being measured
is skipped, never an error.
"""

from __future__ import annotations

import contextlib
import signal

import psutil


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_rss(pid: int | None) -> int | None:
    """RSS in bytes of a worker and its descendants, or None if the worker is gone."""
    if pid is None:
        return None
    try:
        processes = _tree(pid)
    except psutil.Error:
        return None
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU seconds used so far by a worker (not its children), or None."""
    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def kill_process_tree(pid: int | None, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal a worker and every process below it (SIGKILL by default), children first."""
    if pid is None:
        return
    try:
        processes = _tree(pid)
    except psutil.Error:
        return
    for process in reversed(processes):
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)
