"""Shared fixtures: the package's orchestrator fixtures with this suite's defaults, and a check
that no test leaves a child process or a shared-memory block behind."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import settings

from orchestrator import OrchestratorConfig, ParallelOrchestrator
from orchestrator.pytest_plugin import OrchestratorFactory
from tests.helpers.tasks import HANDLERS

# The fuzzing tests' example counts (tests that set their own keep them): "ci" by default, a few
# thousand examples in all; `pytest --hypothesis-profile=long tests/hostile` for a longer hunt.
settings.register_profile("ci", max_examples=1000, deadline=None)
settings.register_profile("long", max_examples=20_000, deadline=None)
settings.load_profile("ci")

# Only ever reached on a deadlock: every wait in the tests passes it, so a hang fails loudly.
DEADLOCK_TIMEOUT = 30.0


@pytest.fixture(autouse=True, scope="session")
def _runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Control sockets of the tests' orchestrators go to a directory of the test run."""
    previous = os.environ.get("ORCH_RUNTIME_DIR")
    os.environ["ORCH_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("orch-runtime"))
    yield
    if previous is None:
        del os.environ["ORCH_RUNTIME_DIR"]
    else:
        os.environ["ORCH_RUNTIME_DIR"] = previous


@pytest.fixture(autouse=True)
def _debug_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="orchestrator")
    # Per-task lifecycle records would pile up in caplog by the thousand in the long runs.
    caplog.set_level(logging.INFO, logger="orchestrator.tasks")


# Processes and /dev/shm entries of the session's shared Dask cluster: they outlive every test.
SHARED_PROCESSES: set[int] = set()
SHARED_SHM: set[str] = set()


def _live_children() -> list[psutil.Process]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in SHARED_PROCESSES:
            continue
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """After the test: no child process and no new /dev/shm block remain (with some patience)."""
    shm_before = set(os.listdir("/dev/shm"))
    yield
    deadline = time.monotonic() + 5.0
    while (children := _live_children()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not children, f"child processes left behind: {[(c.pid, c.cmdline()) for c in children]}"
    left = set(os.listdir("/dev/shm")) - shm_before - SHARED_SHM
    assert not left, f"shared-memory blocks left behind: {sorted(left)}"


@pytest.fixture
def make_orch(orch_factory: OrchestratorFactory, no_leaks: None) -> Callable[..., ParallelOrchestrator]:
    """The package's ``orch_factory`` with this suite's defaults: the test handlers and the
    config's own defaults (a control socket, 5 workers, the name "default")."""

    def make(**overrides: Any) -> ParallelOrchestrator:
        overrides.setdefault("handlers", HANDLERS)
        return orch_factory(OrchestratorConfig(**overrides))

    return make


class Release:
    """A file a `blocker` task waits for; `open()` lets every such task finish."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def config(self) -> dict[str, str]:
        return {"release": str(self.path)}

    def open(self) -> None:
        self.path.touch()


@pytest.fixture
def release(tmp_path: Path) -> Release:
    return Release(tmp_path / "release")


class Recorder:
    """Collects events from the event thread; `wait_for` blocks until a predicate holds."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, event: Any) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = DEADLOCK_TIMEOUT) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.events), timeout):
                raise AssertionError(f"condition not met; events so far: {self.events}")

    def names(self, task_id: str | None = None) -> list[str]:
        with self._cond:
            return [e.event for e in self.events if task_id is None or getattr(e, "task_id", None) == task_id]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def subscribe_all(orch: ParallelOrchestrator, recorder: Recorder) -> None:
    """Send every event kind of ``orch`` to ``recorder``."""
    from orchestrator.models import EVENT_NAMES

    for name in sorted(EVENT_NAMES):
        orch.on(name, recorder)
