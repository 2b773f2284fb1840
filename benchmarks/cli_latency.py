"""How long ``orch status`` takes end to end with one orchestrator running (median of 20 runs).

    python -m benchmarks.cli_latency [--runs 20]

Runs the installed ``orch`` script itself (found next to this interpreter, so no shell shim is
timed) against an orchestrator started here, in a private runtime dir.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    script = Path(sysconfig.get_path("scripts")) / "orch"
    with tempfile.TemporaryDirectory() as runtime:
        os.environ["ORCH_RUNTIME_DIR"] = runtime
        from orchestrator import ParallelOrchestrator

        with ParallelOrchestrator(name="bench", max_workers=2, min_workers=2):
            rows = {}
            for label, command in (("orch status", [str(script), "status"]),
                                   ("orch status --json", [str(script), "status", "--json"])):  # fmt: skip
                times = []
                for _ in range(args.runs):
                    started = time.perf_counter()
                    subprocess.run(command, check=True, capture_output=True)
                    times.append(time.perf_counter() - started)
                rows[label] = times
            started = time.perf_counter()
            for _ in range(args.runs):
                subprocess.run([sys.executable, "-c", "pass"], check=True)
            baseline = (time.perf_counter() - started) / args.runs
    print(
        f"{args.runs} runs, one orchestrator with 2 workers; `python -c pass` alone: {baseline * 1000:.0f} ms"
    )
    print(f"{'command':<22}{'median ms':>10}{'min':>8}{'max':>8}")
    for label, times in rows.items():
        ms = [t * 1000 for t in times]
        print(f"{label:<22}{statistics.median(ms):>10.0f}{min(ms):>8.0f}{max(ms):>8.0f}")


if __name__ == "__main__":
    main()
