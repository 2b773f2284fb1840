"""Processes a handler started and left running when its task ended: they end with the task.

A worker reads the list of its main thread's children from ``/proc`` after each task (one
``pread`` of a file kept open: about 2 us, so it costs nothing when there are none). Handlers run
on the main thread, sync or async, so the processes they start are its children. What escapes:
a process started from another thread of the handler (it ends with the worker), and a daemon
that forked twice to leave its parent (by design it is nobody's child any more).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Final

_LIST_SIZE: Final = 1 << 16


class StrayReaper:
    """Kills, with their own descendants, the processes the main thread left running."""

    def __init__(self) -> None:
        try:
            self._children = os.open(
                f"/proc/self/task/{threading.get_native_id()}/children", os.O_RDONLY | os.O_CLOEXEC
            )
        except OSError:  # no /proc, or a kernel without CONFIG_PROC_CHILDREN: only kills on death
            self._children = -1

    def reap(self) -> list[int]:
        """Kill every process still below the main thread (SIGKILL); return their pids."""
        if self._children < 0:
            return []
        listed = os.pread(self._children, _LIST_SIZE, 0).split()
        if not listed:
            return []
        pids = [int(pid) for pid in listed]
        for pid in pids:
            _kill_tree(pid)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # one still dying is reaped after the next task
        return pids


def _kill_tree(pid: int) -> None:
    import psutil  # only when a handler left something behind: workers start without it

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for process in reversed(tree):
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)
