"""Dependency-aware dispatch on random DAGs: makespan against its lower bound.

    python -m benchmarks.graphs [--tasks 1000] [--workers 2 4] [--repeat 3] [--seed 0]

Each DAG has ``--tasks`` tasks sleeping 5-20 ms; each task depends on up to 3 of the 50 tasks
before it. The lower bound of the makespan is max(critical path, total work / workers); the
overhead per task is (makespan - bound) / tasks.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any


def random_dag(tasks: int, seed: int) -> list[dict[str, Any]]:
    """A plan of ``tasks`` sleeping tasks, each depending on up to 3 of the 50 before it."""
    rng = random.Random(seed)
    plan = []
    for index in range(tasks):
        window = range(max(0, index - 50), index)
        parents = rng.sample(window, k=min(len(window), rng.randint(0, 3)))
        plan.append(
            {
                "id": f"t{index}",
                "type": "sleep",
                "config": {"ms": rng.randint(5, 20)},
                "depends_on": [f"t{p}" for p in sorted(parents)],
            }
        )
    return plan


def lower_bound(plan: list[dict[str, Any]], workers: int) -> float:
    """max(critical path, total work / workers), in seconds."""
    finish: dict[str, float] = {}
    for task in plan:
        start = max((finish[d] for d in task["depends_on"]), default=0.0)
        finish[task["id"]] = start + task["config"]["ms"] / 1000
    total = sum(task["config"]["ms"] for task in plan) / 1000
    return max(max(finish.values()), total / workers)


def makespan(plan: list[dict[str, Any]], workers: int) -> float:
    from orchestrator import ParallelOrchestrator

    with ParallelOrchestrator(
        max_workers=workers,
        min_workers=workers,
        task_queue_size=len(plan),
        handlers={"sleep": "benchmarks.tasks:sleep"},
    ) as orch:
        warm = [orch.submit_task({"type": "sleep", "config": {"ms": 1}}) for _ in range(workers * 2)]
        for task_id in warm:
            orch.wait(task_id)
        started = time.perf_counter()
        results = orch.submit_plan(plan).wait()
        elapsed = time.perf_counter() - started
        assert all(r.success for r in results.values())
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"random DAGs of {args.tasks} tasks (5-20 ms each), {args.repeat} runs, different seeds")
    header = ("workers", 8), ("bound s", 10), ("makespan s", 12), ("ratio", 8), ("min", 7), ("max", 7)
    print("".join(f"{name:>{width}}" for name, width in header) + f"{'overhead/task':>15}")
    for workers in args.workers:
        ratios, spans, bounds = [], [], []
        for run in range(args.repeat):
            plan = random_dag(args.tasks, args.seed + run)
            bound = lower_bound(plan, workers)
            span = makespan(plan, workers)
            ratios.append(span / bound)
            spans.append(span)
            bounds.append(bound)
        overhead = (statistics.median(spans) - statistics.median(bounds)) / args.tasks
        ratio = statistics.median(ratios)
        print(
            f"{workers:>8}{statistics.median(bounds):>10.3f}{statistics.median(spans):>12.3f}"
            f"{ratio:>8.3f}{min(ratios):>7.3f}{max(ratios):>7.3f}{overhead * 1e6:>12.0f} us"
        )


if __name__ == "__main__":
    main()
