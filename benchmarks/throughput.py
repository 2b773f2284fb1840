"""Throughput against the peers, in one run: ``python -m benchmarks --only throughput``.

    python -m benchmarks.throughput [--workers 2] [--repeat 5] [--start-method fork]
    python -m benchmarks.throughput --journal [--repeat 5] [--long 200000]

The first form is the suite's throughput benchmark (see benchmarks/suite.py). With ``--journal``
it compares this orchestrator with the SQLite journal on and off in the same run (20,000 no-ops),
then runs ``--long`` tasks with the journal on and eviction at its default, printing host RSS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from benchmarks.suite import main as suite_main

NOOPS = 20_000


def journal_cost(repeat: int, workers: int) -> None:
    """No-op throughput with the journal off and on; the cost of durability."""
    from orchestrator import ParallelOrchestrator

    rates: dict[str, list[float]] = {"journal off": [], "journal on": []}
    for _ in range(repeat):
        for label in rates:
            with tempfile.TemporaryDirectory() as folder:
                journal = f"{folder}/journal.db" if label == "journal on" else None
                with ParallelOrchestrator(max_workers=workers, min_workers=workers, task_queue_size=NOOPS,
                                          journal_path=journal, control_socket=False,
                                          handlers={"noop": "benchmarks.tasks:noop"}) as orch:  # fmt: skip
                    for task_id in [orch.submit_task({"type": "noop"}) for _ in range(workers * 2)]:
                        orch.wait(task_id)
                    started = time.perf_counter()
                    for task_id in [orch.submit_task({"type": "noop"}) for _ in range(NOOPS)]:
                        orch.wait(task_id)
                    rates[label].append(NOOPS / (time.perf_counter() - started))
    off, on = (statistics.median(rates[label]) for label in rates)
    print(f"{NOOPS} no-op tasks, {workers} workers, {repeat} runs")
    for label, series in rates.items():
        median = statistics.median(series)
        print(f"  {label:<12}{median:>9,.0f}/s  (min {min(series):,.0f}, max {max(series):,.0f})")
    print(f"  the journal costs {100 * (1 - on / off):.0f}% of no-op throughput")


def long_run_memory(tasks: int, workers: int) -> None:
    """Host RSS while ``tasks`` no-ops run with the journal on and eviction at its default."""
    import psutil

    from orchestrator import ParallelOrchestrator

    with tempfile.TemporaryDirectory() as folder, ParallelOrchestrator(
        max_workers=workers, min_workers=workers, task_queue_size=10_000, journal_path=f"{folder}/j.db",
        control_socket=False, handlers={"noop": "benchmarks.tasks:noop"},
    ) as orch:  # fmt: skip
        marks = {}
        done = 0
        while done < tasks:
            batch = [orch.submit_task({"type": "noop"}) for _ in range(min(5_000, tasks - done))]
            for task_id in batch:
                orch.wait(task_id)
            done += len(batch)
            if done in (10_000, tasks):
                marks[done] = psutil.Process().memory_info().rss
    growth = (marks[tasks] - marks[10_000]) / 2**20
    print(f"host RSS after 10,000 tasks {marks[10_000] / 2**20:.0f} MiB, after {tasks:,}: "
          f"{marks[tasks] / 2**20:.0f} MiB (growth {growth:.1f} MiB)")  # fmt: skip


def main() -> None:
    if "--journal" not in sys.argv:
        sys.argv[1:1] = ["--only", "throughput"]
        suite_main()
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--journal", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--long", type=int, default=200_000, help="tasks of the memory run")
    args = parser.parse_args()
    journal_cost(args.repeat, args.workers)
    long_run_memory(args.long, args.workers)


if __name__ == "__main__":
    main()
