"""Workers that cannot start: one forked while another thread held a lock it needs, and one stuck
before it says Hello. Neither leaves its task hanging."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from multiprocessing import resource_tracker
from pathlib import Path

import pytest

from orchestrator import ParallelOrchestrator
from tests.conftest import DEADLOCK_TIMEOUT, Recorder

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


def test_a_worker_forked_while_a_caller_holds_the_tracker_lock(
    make_orch: Callable[..., ParallelOrchestrator], recorder: Recorder
) -> None:
    """What a submit creating a shared-memory block does for a moment, held here on purpose: the
    worker forked meanwhile used to inherit the lock held and hang in its first block."""
    orch = make_orch(max_workers=1, start_method="fork")
    orch.on("worker_spawned", recorder)
    with resource_tracker._resource_tracker._lock:
        task_id = orch.submit_task({"type": "payload", "config": {"size": 1 << 20}})
        recorder.wait_for(lambda events: len(events) == 1)
    result = orch.wait(task_id, DEADLOCK_TIMEOUT)
    assert result.success, result.error
    assert len(result.data["back"]) == 1 << 20


STUCK_HOST = """
import os, sys, time
sys.path.insert(0, {root!r})
if __name__ == "__mp_main__" and not os.path.exists({flag!r}):
    open({flag!r}, "w").close()
    time.sleep(3600)  # the first worker is stuck before it can say Hello

from orchestrator import ParallelOrchestrator
from tests.helpers.tasks import HANDLERS

if __name__ == "__main__":
    with ParallelOrchestrator(max_workers=1, handlers=HANDLERS, start_method="spawn", worker_start_timeout=2.0,
                              control_socket=False, enable_logging=True) as orch:
        result = orch.wait(orch.submit_task({{"type": "echo", "config": {{"x": 1}}}}), 60)
        print(result.success, result.attempts, flush=True)
"""


def test_a_worker_that_never_starts_is_replaced_and_its_task_runs(tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(STUCK_HOST.format(root=str(ROOT), flag=str(tmp_path / "stuck-once"))))
    host = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=50)
    assert host.returncode == 0, host.stderr[-2000:]
    assert host.stdout.split() == ["True", "1"], "the task ran once the next worker started, uncharged"
    assert "did not start within worker_start_timeout=2 s" in host.stderr
