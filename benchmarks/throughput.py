"""Throughput of no-op tasks submitted one by one: this orchestrator against its peers, same run.

    python -m benchmarks.throughput [--tasks 20000] [--workers 2] [--repeat 3] [--start-method forkserver]

Each contender gets a warmed pool of ``--workers`` processes, then the clock runs from the first
submit to the last result. Prints median, min and max tasks/s and the ratio of medians to
ProcessPoolExecutor.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait

from benchmarks.tasks import noop_plain

Contender = Callable[[int, int, str], float]


def run_orchestrator(tasks: int, workers: int, method: str) -> float:
    from orchestrator import ParallelOrchestrator

    with ParallelOrchestrator(
        max_workers=workers,
        min_workers=workers,
        task_queue_size=tasks,
        start_method=method,
        handlers={"noop": "benchmarks.tasks:noop"},
    ) as orch:
        for task_id in [orch.submit_task({"type": "noop"}) for _ in range(workers * 4)]:
            orch.wait(task_id)
        started = time.perf_counter()
        ids = [orch.submit_task({"type": "noop"}) for _ in range(tasks)]
        for task_id in ids:
            orch.wait(task_id)
        return time.perf_counter() - started


def run_process_pool_executor(tasks: int, workers: int, method: str) -> float:
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        wait([pool.submit(noop_plain) for _ in range(workers * 4)])
        started = time.perf_counter()
        wait([pool.submit(noop_plain) for _ in range(tasks)])
        return time.perf_counter() - started


def run_multiprocessing_pool(tasks: int, workers: int, method: str) -> float:
    with multiprocessing.get_context(method).Pool(workers) as pool:
        for result in [pool.apply_async(noop_plain) for _ in range(workers * 4)]:
            result.get()
        started = time.perf_counter()
        for result in [pool.apply_async(noop_plain) for _ in range(tasks)]:
            result.get()
        return time.perf_counter() - started


def run_loky(tasks: int, workers: int, method: str) -> float:
    from loky import get_reusable_executor

    pool = get_reusable_executor(max_workers=workers)
    wait([pool.submit(noop_plain) for _ in range(workers * 4)])
    started = time.perf_counter()
    wait([pool.submit(noop_plain) for _ in range(tasks)])
    elapsed = time.perf_counter() - started
    pool.shutdown(wait=True)
    return elapsed


def run_pebble(tasks: int, workers: int, method: str) -> float:
    from pebble import ProcessPool

    with ProcessPool(max_workers=workers, context=multiprocessing.get_context(method)) as pool:
        wait([pool.schedule(noop_plain) for _ in range(workers * 4)])
        started = time.perf_counter()
        wait([pool.schedule(noop_plain) for _ in range(tasks)])
        return time.perf_counter() - started


CONTENDERS: dict[str, Contender] = {
    "parallel-orchestrator": run_orchestrator,
    "ProcessPoolExecutor": run_process_pool_executor,
    "multiprocessing.Pool": run_multiprocessing_pool,
    "loky": run_loky,
    "pebble": run_pebble,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--start-method", default="forkserver", choices=["forkserver", "spawn", "fork"])
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(args.repeat):
        for name, contender in CONTENDERS.items():
            rates[name].append(args.tasks / contender(args.tasks, args.workers, args.start_method))
    baseline = statistics.median(rates["ProcessPoolExecutor"])
    print(
        f"{args.tasks} no-op tasks, {args.workers} workers, start method {args.start_method}, "
        f"{args.repeat} runs (loky uses its own start method)"
    )
    print(f"{'contender':<24}{'median/s':>10}{'min/s':>10}{'max/s':>10}{'vs PPE':>9}")
    for name, series in rates.items():
        median = statistics.median(series)
        print(
            f"{name:<24}{median:>10,.0f}{min(series):>10,.0f}{max(series):>10,.0f}{median / baseline:>8.2f}x"
        )


if __name__ == "__main__":
    main()
