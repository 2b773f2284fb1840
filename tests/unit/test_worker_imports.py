"""The worker side imports little, since every fork server imports it before its first worker."""

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
