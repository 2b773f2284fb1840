"""The local backend next to the Dask backend on a local cluster, in one run.

    python -m benchmarks.backends [--workers 2] [--tasks 5000] [--round-trips 500] [--repeat 3]

For each backend: no-op throughput (tasks submitted one by one, then waited for), round-trip
latency of sequential submit-then-wait no-ops (p50, p99), and the time to start (initialize and
a first result). The Dask backend starts a local cluster of ``--workers`` single-thread workers
on 127.0.0.1; its tasks run in our processes on those nodes, reached over a local TCP connection.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from orchestrator import ParallelOrchestrator

HANDLERS = {"noop": "benchmarks.tasks:noop"}


def measure(backend: str, workers: int, tasks: int, round_trips: int) -> dict[str, float]:
    """One run of every figure on one backend."""
    started = time.perf_counter()
    config = {"max_workers": workers, "min_workers": workers, "task_queue_size": tasks}
    with ParallelOrchestrator(backend=backend, handlers=HANDLERS, control_socket=False, **config) as orch:
        orch.wait(orch.submit_task({"type": "noop"}))
        start_s = time.perf_counter() - started
        for task_id in [orch.submit_task({"type": "noop"}) for _ in range(workers * 4)]:
            orch.wait(task_id)
        began = time.perf_counter()
        for task_id in [orch.submit_task({"type": "noop"}) for _ in range(tasks)]:
            orch.wait(task_id)
        rate = tasks / (time.perf_counter() - began)
        latencies = []
        for _ in range(round_trips):
            sent = time.perf_counter()
            orch.wait(orch.submit_task({"type": "noop"}))
            latencies.append(time.perf_counter() - sent)
    latencies.sort()
    return {
        "start_s": start_s,
        "tasks_per_s": rate,
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"local": [], "dask": []}
    for _ in range(args.repeat):
        for backend, found in runs.items():
            found.append(measure(backend, args.workers, args.tasks, args.round_trips))
    print(f"{args.workers} workers, {args.tasks} no-ops, {args.round_trips} round trips, "
          f"medians of {args.repeat} runs (min-max)")  # fmt: skip
    print(f"{'backend':<8}{'tasks/s':>22}{'round trip p50':>24}{'p99':>22}{'start':>20}")
    for backend, found in runs.items():
        print(f"{backend:<8}" + "".join(_cell(found, key, unit) for key, unit in
              (("tasks_per_s", "/s"), ("p50_us", " us"), ("p99_us", " us"), ("start_s", " s"))))  # fmt: skip
    local, dask = (statistics.median(r["tasks_per_s"] for r in runs[b]) for b in ("local", "dask"))
    print(f"dask/local throughput: {dask / local:.2f}x")


def _cell(found: list[dict[str, Any]], key: str, unit: str) -> str:
    values = [run[key] for run in found]
    median = statistics.median(values)
    digits = 2 if unit == " s" else 0
    text = f"{median:,.{digits}f}{unit} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"
    return f"{text:>24}"


if __name__ == "__main__":
    main()
