"""What the supervisor needs from the OS about a worker: memory, CPU time, and killing its tree.

Each function covers a worker and every process below it, since a handler's own subprocesses
count against its limits and must not outlive it. A process that vanished while being measured
is skipped, never an error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

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


def process_tree(pid: int | None) -> list[psutil.Process]:
    """A worker and every process below it, as of now (empty if the worker is gone)."""
    if pid is None:
        return []
    try:
        return _tree(pid)
    except psutil.Error:
        return []


def signal_processes(processes: list[psutil.Process], sig: signal.Signals) -> None:
    """Signal each process of a snapshot that still runs, children first; psutil checks that a pid
    still names the process it named (a reused pid is left alone)."""
    for process in reversed(processes):
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


def kill_process_tree(pid: int | None, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal a worker and every process below it (SIGKILL by default), children first, and its
    process group (a worker leads its own): that reaches what the tree no longer shows, such as a
    child whose parent exited. Only for a worker not yet reaped, whose pid is still its own."""
    if pid is None:
        return
    signal_processes(process_tree(pid), sig)
    with contextlib.suppress(OSError):
        os.killpg(pid, sig)


class CpuMeter:
    """CPU% of processes between two looks (the first look: the average since the process began)."""

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}

    def percent(self, pid: int | None) -> float | None:
        """The CPU% of ``pid`` since the previous call for it; None when it is gone."""
        if pid is None:
            return None
        try:
            process = self._processes.get(pid)
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
                times = process.cpu_times()
                elapsed = max(time.time() - process.create_time(), 1e-6)
                process.cpu_percent(interval=None)
                return round(100 * (times.user + times.system) / elapsed, 1)
            return float(process.cpu_percent(interval=None))
        except psutil.Error:
            self._processes.pop(pid, None)
            return None
