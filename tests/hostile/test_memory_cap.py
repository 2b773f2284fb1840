"""max_memory_mb holds for a fast allocator: the worker's own cap stops it near the limit, where
the host's polling alone let it reach several times the limit first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import ParallelOrchestrator
from tests.conftest import DEADLOCK_TIMEOUT, Recorder

pytestmark = pytest.mark.timeout(60)

LIMIT_MB = 200


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_fast_allocator_stays_within_ten_percent_of_the_limit(
    make_orch: Callable[..., ParallelOrchestrator], tmp_path: Path, recorder: Recorder, start_method: str
) -> None:
    orch = make_orch(max_workers=1, max_memory_mb=LIMIT_MB, start_method=start_method)
    orch.on("worker_exited", recorder)
    peak_file = tmp_path / "peak"
    spec = {"type": "allocate_fast", "config": {"mb": 2000, "peak_file": str(peak_file)}}
    result = orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT)
    assert result.error is not None
    assert result.error.kind == "memory_limit"
    assert f"max_memory_mb={LIMIT_MB}" in result.error.message
    peak = int(peak_file.read_text())
    assert peak <= 1.1 * LIMIT_MB * 2**20, f"the worker reached {peak / 2**20:.0f} MiB"
    recorder.wait_for(lambda events: len(events) == 1)
    assert recorder.events[0].reason == "memory_limit"
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success
