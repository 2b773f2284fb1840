"""`orchestrator.track`: a batch's results in completion order, with a bar only on a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import ParallelOrchestrator, TaskNotFoundError, TaskStatus, track
from tests.conftest import DEADLOCK_TIMEOUT
from tests.helpers import functions

ROOT = Path(__file__).parents[2]

TERMINAL_SCRIPT = """
from orchestrator import ParallelOrchestrator, track
from tests.helpers.tasks import HANDLERS

if __name__ == "__main__":
    with ParallelOrchestrator(max_workers=2, handlers=HANDLERS, control_socket=False) as orch:
        ids = [orch.submit_task({"type": "steps", "config": {"n": 5}}) for _ in range(3)]
        ids.append(orch.submit_task({"type": "fail"}))
        results = list(track(orch, ids, description="crunching"))
    print(len(results), sum(not r.success for r in results))
"""


def test_in_a_pipe_it_draws_nothing_and_yields_every_result(
    make_orch: Callable[..., ParallelOrchestrator], capsys: pytest.CaptureFixture[str], release
) -> None:
    orch = make_orch(max_workers=2)
    blocked = orch.submit_task({"type": "blocker", "config": release.config})
    quick = [orch.submit_task({"type": "echo", "config": {"i": i}}) for i in range(3)]
    results = track(orch, [blocked, *quick], description="batch")
    first = [next(results).task_id for _ in quick]
    assert sorted(first) == sorted(quick)  # completion order: the blocked one comes last
    release.open()
    assert next(results).task_id == blocked
    assert list(results) == []
    assert capsys.readouterr().err == ""


def test_an_unknown_id_is_refused_before_anything(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    orch = make_orch(max_workers=1)
    known = orch.submit_task({"type": "echo"})
    with pytest.raises(TaskNotFoundError):
        next(track(orch, [known, "no-such-task"]))
    with pytest.raises(TypeError, match="task ids and TaskFutures, not int"):
        next(track(orch, [3]))  # type: ignore[list-item]


def test_futures_yield_results_with_the_functions_values(
    make_orch: Callable[..., ParallelOrchestrator],
) -> None:
    orch = make_orch(max_workers=2)
    executor = orch.executor()
    futures = [executor.submit(functions.square, x) for x in range(4)]
    unpicklable = executor.submit(functions.square, lambda: 1)
    results = list(track(orch, [*futures, unpicklable]))
    assert results[0].task_id == ""
    assert results[0].status is TaskStatus.ERROR
    assert "pickle" in results[0].error.message.lower()  # type: ignore[union-attr]
    assert sorted(r.data for r in results[1:]) == [0, 1, 4, 9]
    executor.shutdown()


def test_in_a_terminal_it_draws_the_bar(no_leaks: None) -> None:
    controller, terminal = pty.openpty()
    script = subprocess.Popen(
        [sys.executable, "-c", TERMINAL_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=terminal,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm", "COLUMNS": "120"},
    )
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the script ended: the terminal's other side is closed
            break
        if not chunk:
            break
        drawn += chunk
    out, _ = script.communicate(timeout=DEADLOCK_TIMEOUT)
    os.close(controller)
    assert script.returncode == 0
    assert out.split() == [b"4", b"1"]
    text = drawn.decode(errors="replace")
    assert "crunching" in text
    assert "4/4" in text
    assert "1 failed" in text
