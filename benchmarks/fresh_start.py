"""Cold start in fresh interpreters: what a script that starts a pool and needs one answer waits.

``fresh_start`` runs each contender in new ``python`` processes, so that nothing is imported or
started beforehand (the fork server of ``forkserver`` included). It measures:

- import ms: the import of the contender's pool class, alone in its interpreter;
- first result ms: from constructing the pool to the first no-op's result (its start included);
- first result at +0.2 s ms: from a first submit made 0.2 s after the pool started (as a host
  that starts its pool at startup and submits later does) to that task's result.

The children are started with ``python -c`` so that their ``__main__`` has no file for a fork
server to preload: every contender pays for what it imports itself. This project's packages are
byte-compiled first, as ``pip install`` leaves them: a checkout run with PYTHONDONTWRITEBYTECODE
would compile every module in every fresh interpreter (about 30 ms of the worker side's import).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import subprocess
import sys
import time
from typing import Any

PAUSE_S = 0.2


def fresh_start(kind: type[Any], args: argparse.Namespace) -> dict[str, float]:
    """Cold start in fresh interpreters: the import, then construct, start and a first result."""
    _byte_compile()
    importing = f"import time; t = time.perf_counter(); {kind.library}; print(time.perf_counter() - t)"
    figures = {"import ms": float(_run(importing)) * 1000}
    for pause, label in ((0.0, "first result ms"), (PAUSE_S, f"first result at +{PAUSE_S} s ms")):
        starting = (
            "from benchmarks.fresh_start import child; "
            f"child({kind.name!r}, {args.start_method!r}, {args.workers}, {pause})"
        )
        figures[label] = float(_run(starting))
    return figures


def _byte_compile() -> None:
    import orchestrator
    import workers

    for package in (orchestrator, workers):
        compileall.compile_dir(os.path.dirname(package.__file__ or ""), quiet=1)


def _run(code: str) -> str:
    command = [sys.executable, "-c", code]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode:
        raise RuntimeError(f"fresh interpreter failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def child(name: str, method: str, workers: int, pause: float) -> None:
    """In the fresh interpreter: start the pool, submit (after ``pause``), print the ms to the result."""
    from benchmarks.contenders import by_name

    kind = by_name(name)
    exec(kind.library)
    started = time.perf_counter()
    pool = kind(workers, method)
    pool.start()
    if pause:
        time.sleep(pause)
        started = time.perf_counter()
    pool.wait(pool.submit("noop", 0))
    print(json.dumps((time.perf_counter() - started) * 1000))
    pool.stop()
