"""The pytest plugin the package ships (entry point ``pytest11``): fixtures ``orch`` and ``orch_factory``.

Installed with the package, it needs no ``conftest.py``::

    def test_summaries(orch):
        task_id = orch.submit_task({"type": "analyze", "config": {"data": [1, 2, 3]}})
        assert orch.wait(task_id, timeout=30).success

Each orchestrator a fixture made is shut down after the test (queued tasks cancelled, workers
given 5 seconds), and the test fails if one of its worker processes still runs or one of its
shared-memory blocks is still in ``/dev/shm``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

if TYPE_CHECKING:
    from orchestrator.config import OrchestratorConfig
    from orchestrator.core import ParallelOrchestrator

# How long a shut-down orchestrator's processes get to be reaped before they count as leaked.
LEAK_PATIENCE: Final = 5.0
SHUTDOWN_TIMEOUT: Final = 5.0
_SHM: Final = Path("/dev/shm")

_names = itertools.count(1)


class OrchestratorFactory:
    """Makes initialized orchestrators for one test; `close` shuts them down and lists leaks.

    Calls take an `OrchestratorConfig` and/or its fields; unless given, ``max_workers=2``,
    ``control_socket=False`` and a name unique to the test run.
    """

    def __init__(self) -> None:
        self._made: list[tuple[ParallelOrchestrator, list[int]]] = []

    def __call__(self, config: OrchestratorConfig | None = None, **fields: Any) -> ParallelOrchestrator:
        """A new initialized orchestrator, shut down after the test."""
        # Imported here: every pytest run of a project that installed the package loads this plugin.
        from orchestrator.core import ParallelOrchestrator

        if config is None:
            fields.setdefault("max_workers", 2)
            fields.setdefault("control_socket", False)
            fields.setdefault("name", f"pytest-{os.getpid()}-{next(_names)}")
        orch = ParallelOrchestrator(config, **fields)
        pids: list[int] = []
        orch.on("worker_spawned", lambda event: _remember(event, pids))
        self._made.append((orch, pids))
        orch.initialize()
        return orch

    def close(self) -> list[str]:
        """Shut every orchestrator down; what each left behind, one line per leak."""
        for orch, _ in self._made:
            orch.shutdown(wait=True, cancel_pending=True, timeout=SHUTDOWN_TIMEOUT)
        leaks = [leak for orch, pids in self._made for leak in _leaks(orch, pids)]
        self._made.clear()
        return leaks


def _remember(event: Any, pids: list[int]) -> None:
    if event.pid is not None:
        pids.append(event.pid)


def _leaks(orch: ParallelOrchestrator, pids: list[int]) -> list[str]:
    """Worker processes of ``orch`` still running (after some patience) and its blocks still there."""
    from workers.shm import block_prefix

    deadline = time.monotonic() + LEAK_PATIENCE
    while (alive := _running(pids)) and time.monotonic() < deadline:
        time.sleep(0.02)
    name = orch.config.name
    leaks = [f"orchestrator {name!r}: worker process {pid} still runs" for pid in alive]
    prefix = block_prefix(orch._block_namespace)[:-2]
    if _SHM.is_dir():
        blocks = sorted(entry.name for entry in _SHM.iterdir() if entry.name.startswith(prefix))
        leaks += [
            f"orchestrator {name!r}: shared-memory block /dev/shm/{block} left behind" for block in blocks
        ]
    return leaks


def _running(pids: list[int]) -> list[int]:
    import psutil

    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture
def orch_factory() -> Iterator[OrchestratorFactory]:
    """``orch_factory(**config)``: as many initialized orchestrators as the test wants; all are
    shut down after it, and it fails if one left a worker process or a shared-memory block."""
    factory = OrchestratorFactory()
    yield factory
    leaks = factory.close()
    if leaks:
        pytest.fail("left behind by the test's orchestrators:\n" + "\n".join(leaks), pytrace=False)


@pytest.fixture
def orch(orch_factory: OrchestratorFactory) -> ParallelOrchestrator:
    """An initialized `ParallelOrchestrator` (``max_workers=2``, no control socket), shut down
    after the test, which fails if it left a worker process or a shared-memory block."""
    return orch_factory()
