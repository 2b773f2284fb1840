"""Every benchmark, this orchestrator against its peers in the same run.

    python -m benchmarks [--workers 2] [--repeat 5] [--start-method fork] [--only NAME ...] [--json PATH]

``--start-method`` is the peers'; this orchestrator runs with its default (forkserver), and as
"orchestrator, fork" beside it.

Each measurement is repeated ``--repeat`` times per contender; the table shows the median, min and
max and the ratio of medians to ProcessPoolExecutor (for rates: higher is better; for times and
sizes: lower is better).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from benchmarks.ceiling import IdealHost
from benchmarks.contenders import (
    ALL,
    EXECUTORS,
    HANDLERS,
    PPE,
    Contender,
    Orchestrator,
    OrchestratorViews,
    import_all,
)
from benchmarks.fresh_start import fresh_start
from benchmarks.host_impact import host_impact

MIB = 2**20
Measure = Callable[[type[Contender], argparse.Namespace], dict[str, float]]


def warm_up(pool: Contender, task: str, arg: Any) -> None:
    """Run a few tasks of this kind first: typed workers start on their first task of a type."""
    for handle in [pool.submit(task, arg) for _ in range(pool.workers * 2)]:
        pool.wait(handle)


def throughput(kind: type[Contender], args: argparse.Namespace) -> dict[str, float]:
    """Tasks per second: 20,000 no-ops submitted one by one, and 2,000 tasks of 1 ms CPU."""
    figures = {}
    with kind(args.workers, args.start_method) as pool:
        for label, task, arg, count in (
            ("no-op tasks/s", "noop", 0, 20_000),
            ("1 ms CPU tasks/s", "cpu", 1.0, 2_000),
        ):
            warm_up(pool, task, arg)
            started = time.perf_counter()
            handles = [pool.submit(task, arg) for _ in range(count)]
            for handle in handles:
                pool.wait(handle)
            figures[label] = count / (time.perf_counter() - started)
    return figures


def latency(kind: type[Contender], args: argparse.Namespace) -> dict[str, float]:
    """Round trip of 2,000 sequential submit-then-wait no-ops (p50, p99), and submit time while busy."""
    with kind(args.workers, args.start_method) as pool:
        trips = []
        for _ in range(2_000):
            started = time.perf_counter()
            pool.wait(pool.submit("noop", 0))
            trips.append(time.perf_counter() - started)
        busy = [pool.submit("cpu", 200.0) for _ in range(args.workers)]
        submits = []
        handles = []
        for _ in range(10_000):
            started = time.perf_counter()
            handles.append(pool.submit("noop", 0))
            submits.append(time.perf_counter() - started)
        for handle in busy + handles:
            pool.wait(handle)
    trips.sort()
    submits.sort()
    return {
        "round trip p50 us": trips[len(trips) // 2] * 1e6,
        "round trip p99 us": trips[int(len(trips) * 0.99)] * 1e6,
        "submit p50 us": submits[len(submits) // 2] * 1e6,
        "submit p99 us": submits[int(len(submits) * 0.99)] * 1e6,
    }


def cold_start(kind: type[Contender], args: argparse.Namespace) -> dict[str, float]:
    """Construct, start and get a first result (no warm-up)."""
    started = time.perf_counter()
    pool = kind(args.workers, args.start_method)
    pool.start()
    pool.wait(pool.submit("noop", 0))
    elapsed = time.perf_counter() - started
    pool.stop()
    figures = {"cold start ms": elapsed * 1000}
    if kind is Orchestrator:
        figures["one more worker ms"] = _one_more_worker(args.workers)
    return figures


def _one_more_worker(workers: int) -> float:
    """With forkserver: a task of a new type while there is room, so a worker is spawned for it."""
    from orchestrator import ParallelOrchestrator

    settings = {"max_workers": workers + 1, "start_method": "forkserver", "control_socket": False}
    with ParallelOrchestrator(**settings, handlers=HANDLERS) as orch:
        for task_id in [orch.submit_task({"type": "noop"}) for _ in range(workers)]:
            orch.wait(task_id)
        started = time.perf_counter()
        orch.wait(orch.submit_task({"type": "echo", "config": {"x": 1}}))
        return (time.perf_counter() - started) * 1000


def payloads(kind: type[Contender], args: argparse.Namespace) -> dict[str, float]:
    """Echo of 1 MiB and 64 MiB of bytes (and a 64 MiB NumPy array when NumPy is there)."""
    figures = {}
    cases: list[tuple[str, Any]] = [("echo 1 MiB ms", bytes(MIB)), ("echo 64 MiB ms", bytes(64 * MIB))]
    try:
        import numpy

        cases.append(("echo 64 MiB array ms", numpy.zeros(8 * MIB)))
    except ImportError:
        pass
    with kind(args.workers, args.start_method) as pool:
        warm_up(pool, "echo", b"")
        for label, value in cases:
            started = time.perf_counter()
            back = pool.wait(pool.submit("echo", value))
            figures[label] = (time.perf_counter() - started) * 1000
            assert len(back) == len(value)
    return figures


def memory(kind: type[Contender], args: argparse.Namespace) -> dict[str, float]:
    """USS and RSS of an idle worker, in MiB (RSS counts pages shared with the forked host), and
    its USS once it has run a full garbage collection (which writes to every object it walks)."""
    with kind(args.workers, args.start_method) as pool:
        warm_up(pool, "echo", b"")  # pools that start workers on demand (forkserver, spawn) have some
        time.sleep(0.2)
        infos = _memory_of_workers(pool)
        figures = {
            "idle worker USS MiB": statistics.median(i.uss for i in infos) / MIB,
            "idle worker RSS MiB": statistics.median(i.rss for i in infos) / MIB,
        }
        warm_up(pool, "collect", 0)
        collected = [info.uss for info in _memory_of_workers(pool)]
        figures["USS after a collection MiB"] = statistics.median(collected) / MIB
    return figures


def _memory_of_workers(pool: Contender) -> list[Any]:
    """Each live worker's memory; one that exits meanwhile (this orchestrator retires an idle
    worker of another type to start one for a new type) is left out."""
    import psutil

    infos = []
    for pid in pool.worker_pids():
        try:
            infos.append(psutil.Process(pid).memory_full_info())
        except psutil.NoSuchProcess:
            continue
    return infos


def scale(kind: type[Contender], args: argparse.Namespace) -> dict[str, float]:
    """Submit rate with 100,000 tasks queued behind busy workers; Python heap per queued task."""
    pool = kind(args.workers, args.start_method)
    pool.__enter__()
    try:
        # Busy for longer than the measurement takes (a few seconds), so that every task submitted
        # stays queued; not much longer, since ProcessPoolExecutor's shutdown waits for them.
        busy = [pool.submit("sleep", 15_000.0) for _ in range(args.workers)]
        started = time.perf_counter()
        for _ in range(100_000):
            pool.submit("noop", 0)
        rate = 100_000 / (time.perf_counter() - started)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        handles = [pool.submit("noop", 0) for _ in range(20_000)]
        per_task = (tracemalloc.get_traced_memory()[0] - before) / len(handles)
        tracemalloc.stop()
        del busy, handles
    finally:
        pool.abandon()
    return {"submits/s with 100k queued": rate, "heap bytes per queued task": per_task}


def executor(kind: type[Contender], args: argparse.Namespace) -> dict[str, float]:
    """The concurrent.futures surface: 20,000 submits of a module-level no-op, and map over 20,000 items."""
    figures = {}
    with kind(args.workers, args.start_method) as pool:
        started = time.perf_counter()
        for future in [pool.submit("noop", 0) for _ in range(20_000)]:
            future.result()
        figures["submit no-ops/s"] = 20_000 / (time.perf_counter() - started)
        for chunksize in (1, 100):
            started = time.perf_counter()
            pool.map("noop", [0] * 20_000, chunksize)
            figures[f"map chunksize {chunksize} items/s"] = 20_000 / (time.perf_counter() - started)
    return figures


BENCHMARKS: dict[str, Measure] = {
    "throughput": throughput,
    "latency": latency,
    "cold_start": cold_start,
    "fresh_start": fresh_start,
    "payloads": payloads,
    "memory": memory,
    "scale": scale,
    "executor": executor,
    "host_impact": host_impact,
}
# Who runs each benchmark (all contenders unless named here).
CONTENDERS: dict[str, list[type[Contender]]] = {
    "executor": EXECUTORS,
    "payloads": [*ALL, OrchestratorViews],
    "host_impact": [*ALL, IdealHost],
}
Results = dict[str, dict[str, dict[str, list[float]]]]  # benchmark -> figure -> contender -> values


def run(args: argparse.Namespace) -> Results:
    """Every selected benchmark, each contender ``--repeat`` times; tables printed as they finish."""
    results: Results = {}
    for name in args.only or list(BENCHMARKS):
        measure = BENCHMARKS[name]
        figures = results.setdefault(name, {})
        for _ in range(args.repeat):
            for kind in CONTENDERS.get(name, ALL):
                for figure, value in measure(kind, args).items():
                    figures.setdefault(figure, {}).setdefault(kind.name, []).append(value)
        print_table(name, (measure.__doc__ or "").strip(), figures)
    return results


def print_table(name: str, doc: str, figures: dict[str, dict[str, list[float]]]) -> None:
    """One benchmark's figures: median, min, max and the ratio of medians to ProcessPoolExecutor."""
    print(f"\n## {name}: {doc}")
    print(f"{'figure':<30}{'contender':<24}{'median':>11}{'min':>11}{'max':>11}{'vs PPE':>8}")
    for figure, by_contender in figures.items():
        base = statistics.median(by_contender[PPE.name]) if PPE.name in by_contender else 0.0
        for contender, values in by_contender.items():
            median = statistics.median(values)
            ratio = f"{median / base:>7.2f}x" if base else "       -"
            print(
                f"{figure:<30}{contender:<24}{median:>11,.1f}{min(values):>11,.1f}{max(values):>11,.1f}{ratio}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--start-method", default="fork", choices=["fork", "forkserver", "spawn"])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS))
    parser.add_argument("--json", dest="json_path", default=None, help="write every figure to this file")
    args = parser.parse_args()
    print(
        f"{args.workers} workers, start method {args.start_method} for the peers, {args.repeat} runs "
        "each, in the same run; parallel-orchestrator runs with its default (forkserver), "
        "'orchestrator, fork' beside it"
    )
    import_all()
    started = time.perf_counter()
    results = run(args)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(
                {"workers": args.workers, "start_method": args.start_method, "results": results},
                handle,
                indent=1,
            )


if __name__ == "__main__":
    main()
