"""Throughput against the peers, in one run: ``python -m benchmarks --only throughput``.

    python -m benchmarks.throughput [--workers 2] [--repeat 5] [--start-method fork]
    python -m benchmarks.throughput --journal [--repeat 5] [--long 200000]
    python -m benchmarks.throughput --features [--repeat 5]

The first form is the suite's throughput benchmark (see benchmarks/suite.py). With ``--journal``
it compares this orchestrator with the SQLite journal on and off in the same run (20,000 no-ops),
then runs ``--long`` tasks with the journal on and eviction at its default, printing host RSS.
With ``--features`` it measures the cost of each optional feature alone: the journal, Prometheus
metrics (``metrics_port``) and per-task log records (``log_tasks``, no handler installed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from benchmarks.suite import main as suite_main

NOOPS = 20_000


# What each feature adds to the config; "{folder}" becomes a fresh temporary directory.
FEATURES: dict[str, dict[str, object]] = {
    "journal": {"journal_path": "{folder}/journal.db"},
    "metrics": {"metrics_port": 0},
    "log_tasks": {"log_tasks": True},
}


def feature_cost(features: list[str], repeat: int, workers: int) -> None:
    """No-op throughput with nothing on, then with each feature on, in alternation."""
    from orchestrator import ParallelOrchestrator

    rates: dict[str, list[float]] = {label: [] for label in ["off", *features]}
    for _ in range(repeat):
        for label in rates:
            with tempfile.TemporaryDirectory() as folder:
                overrides = {
                    key: value.format(folder=folder) if isinstance(value, str) else value
                    for key, value in FEATURES.get(label, {}).items()
                }
                # Every result stays in memory: waits never read evicted ones back from the journal.
                config = {"max_workers": workers, "min_workers": workers, "task_queue_size": NOOPS,
                          "max_results_in_memory": NOOPS, "control_socket": False,
                          "handlers": {"noop": "benchmarks.tasks:noop"}, **overrides}  # fmt: skip
                with ParallelOrchestrator(**config) as orch:
                    for task_id in [orch.submit_task({"type": "noop"}) for _ in range(workers * 2)]:
                        orch.wait(task_id)
                    started = time.perf_counter()
                    for task_id in [orch.submit_task({"type": "noop"}) for _ in range(NOOPS)]:
                        orch.wait(task_id)
                    rates[label].append(NOOPS / (time.perf_counter() - started))
    print(f"{NOOPS} no-op tasks, {workers} workers, {repeat} runs")
    for label, series in rates.items():
        median = statistics.median(series)
        # Each run is paired with the "off" run just before it, so slow drifts of a shared
        # machine cancel out; the cost is the median of those paired ratios.
        ratios = [on / off for on, off in zip(series, rates["off"], strict=True)]
        cost = "" if label == "off" else f"  costs {100 * (1 - statistics.median(ratios)):.0f}% (paired runs)"
        print(f"  {label:<12}{median:>9,.0f}/s  (min {min(series):,.0f}, max {max(series):,.0f}){cost}")


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
    if not {"--journal", "--features"} & set(sys.argv):
        sys.argv[1:1] = ["--only", "throughput"]
        suite_main()
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--journal", action="store_true", help="the journal's cost and a long run's memory")
    parser.add_argument(
        "--features", action="store_true", help="the cost of each feature: journal, metrics, logs"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--long", type=int, default=200_000, help="tasks of the memory run")
    args = parser.parse_args()
    if args.features:
        feature_cost(list(FEATURES), args.repeat, args.workers)
    else:
        feature_cost(["journal"], args.repeat, args.workers)
        long_run_memory(args.long, args.workers)


if __name__ == "__main__":
    main()
