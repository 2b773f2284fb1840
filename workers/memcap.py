"""A worker's own hard cap on memory, beside the host's polling of its process tree, and its report
of what it uses (`usage`) to a host that cannot measure it (a Dask node's worker).

The host measures a worker's RSS every ``resource_check_interval``; a fast allocator gets far past
``max_memory_mb`` in that time. So a worker also caps its data segment (``RLIMIT_DATA``: heap and
private writable mappings) at what it has at start plus the room ``max_memory_mb`` leaves above its
RSS then: an allocation past that raises `MemoryError` inside the handler, reported as
``memory_limit``, and the worker is replaced.

What the cap does not cover: a handler's child processes (the polling does), files written to
/dev/shm or other tmpfs (memory, but not the worker's data), and memory mapped from files. What it
counts that RSS does not: the address space of threads a handler starts (8 MiB of stack each).
"""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

from workers import protocol


def cap_memory(limit_mb: float | None) -> int | None:
    """Cap this process's data so that its RSS stays near ``limit_mb``; return the cap in bytes."""
    if limit_mb is None:
        return None
    try:
        status = _status_kib(Path("/proc/self/status").read_text())
        data, rss = status["VmData"] * 1024, status["VmRSS"] * 1024
    except (OSError, KeyError, ValueError):
        return None  # no /proc: the host's polling alone applies
    cap = data + max(0, int(limit_mb * 2**20) - rss)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    return cap


def _status_kib(text: str) -> dict[str, int]:
    """The ``kB`` fields of /proc/self/status."""
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if value.endswith("kB"):
            fields[name] = int(value.split()[0])
    return fields


def usage() -> protocol.Usage:
    """This process's RSS with its children's, and its CPU seconds (psutil, loaded on first use)."""
    import psutil

    me = psutil.Process()
    rss = me.memory_info().rss
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            rss += child.memory_info().rss
    times = me.cpu_times()
    return protocol.Usage(rss, times.user + times.system)
