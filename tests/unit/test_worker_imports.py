"""What is imported up front: little on the worker side (every fork server imports it before its
first worker), and on the host nothing that only some features use."""

from __future__ import annotations

import subprocess
import sys


def test_the_worker_side_leaves_asyncio_and_shared_memory_to_the_tasks_that_need_them() -> None:
    code = (
        "import sys, workers.runtime, workers.registry; "
        "print(sorted(m for m in ('asyncio', 'multiprocessing.shared_memory') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_the_host_imports_the_cron_parser_only_for_a_cron_schedule() -> None:
    code = (
        "import sys; from orchestrator import ParallelOrchestrator; print('croniter' in sys.modules); "
        "from orchestrator.schedules import check_cron; check_cron('*/5 * * * *'); "
        "print('croniter' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "True"]
