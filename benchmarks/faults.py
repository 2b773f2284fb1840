"""Faults, measured against the peers in one run: crash recovery, timeout reporting, lost tasks.

    python -m benchmarks.faults [--workers 2] [--repeat 5] [--tasks 1000]

1. recovery: a worker is SIGKILLed while running a task; time until a task submitted right after
   the kill has its result (ProcessPoolExecutor is broken by the kill and must be rebuilt); and
   time until the killed task's own future or result says so (this orchestrator under each start
   method: forkserver is its default).
2. timeout: a task sleeping 10 s with a 0.2 s timeout; time from the timeout to the error
   (ProcessPoolExecutor has no per-task timeout).
3. lost: 1,000 tasks of which 10% crash their worker (os._exit) at random; how many of the 900
   healthy tasks did not get their result. Every task must end with a result of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from benchmarks.tasks import noop_plain

TIMEOUT = 0.2


def sleep_plain(seconds: float) -> None:
    """A peer's task that sleeps."""
    time.sleep(seconds)


def report_pid_then_sleep(path: str, seconds: float) -> None:
    """A peer's task that writes its worker's pid to ``path``, then sleeps."""
    with open(f"{path}.tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(f"{path}.tmp", path)
    time.sleep(seconds)


def maybe_crash_plain(crash: bool) -> int:
    """A peer's task that kills its worker when told to."""
    if crash:
        os._exit(1)
    return 1


def maybe_crash(ctx: Any) -> int:
    """The orchestrator's version of `maybe_crash_plain`."""
    return maybe_crash_plain(ctx.config["crash"])


def sleep(ctx: Any) -> None:
    """The orchestrator's version of `sleep_plain`."""
    time.sleep(ctx.config["seconds"])


HANDLERS = {
    "noop": "benchmarks.tasks:noop",
    "sleep": "benchmarks.faults:sleep",
    "crash": "benchmarks.faults:maybe_crash",
}


def _orchestrator(workers: int, start_method: str = "forkserver") -> Any:
    from orchestrator import ParallelOrchestrator

    orch = ParallelOrchestrator(
        max_workers=workers,
        task_queue_size=10_000,
        handlers=HANDLERS,
        timeout_grace=1.0,
        start_method=start_method,
    )
    orch.initialize()
    return orch


# ----------------------------------------------------------------------------------- recovery


def recovery_orchestrator(workers: int) -> float:
    orch = _orchestrator(workers)
    try:
        started = []
        orch.on("task_started", lambda event: started.append(event.pid))
        orch.submit_task({"type": "sleep", "config": {"seconds": 30}})
        while not started:
            time.sleep(0.001)
        orch.wait(orch.submit_task({"type": "noop"}))
        kill_at = time.perf_counter()
        os.kill(started[0], signal.SIGKILL)
        orch.wait(orch.submit_task({"type": "noop"}))
        return time.perf_counter() - kill_at
    finally:
        orch.shutdown(cancel_pending=True, timeout=0)


def killed_task_orchestrator(workers: int, start_method: str) -> float:
    orch = _orchestrator(workers, start_method)
    try:
        started = []
        orch.on("task_started", lambda event: started.append(event.pid))
        task_id = orch.submit_task({"type": "sleep", "config": {"seconds": 30}})
        while not started:
            time.sleep(0.001)
        kill_at = time.perf_counter()
        os.kill(started[0], signal.SIGKILL)
        result = orch.wait(task_id)
        elapsed = time.perf_counter() - kill_at
        assert result.error is not None
        assert result.error.kind == "worker_crashed"
        return elapsed
    finally:
        orch.shutdown(cancel_pending=True, timeout=0)


def killed_task_peer(submit: Callable[[str], Future[Any]], error: type[BaseException]) -> float:
    """Seconds from SIGKILL of the worker running a peer's task to that task's future failing."""
    with tempfile.TemporaryDirectory() as tmp:
        future = submit(f"{tmp}/pid")
        victim = _victim(f"{tmp}/pid")
    kill_at = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    with contextlib.suppress(error):
        future.result()
    return time.perf_counter() - kill_at


def killed_task_ppe(workers: int) -> float:
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
    try:
        wait([pool.submit(noop_plain) for _ in range(workers * 2)])
        return killed_task_peer(lambda path: pool.submit(report_pid_then_sleep, path, 30), BrokenProcessPool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def killed_task_pebble(workers: int) -> float:
    from pebble import ProcessExpired, ProcessPool

    with ProcessPool(max_workers=workers, context=multiprocessing.get_context("forkserver")) as pool:
        wait([pool.schedule(noop_plain) for _ in range(workers * 2)])
        elapsed = killed_task_peer(
            lambda path: pool.schedule(report_pid_then_sleep, args=(path, 30)), ProcessExpired
        )
        pool.stop()
        return elapsed


def _victim(path: str) -> int:
    """The pid a `report_pid_then_sleep` task wrote, once it is there."""
    while not os.path.exists(path):
        time.sleep(0.001)
    with open(path) as handle:
        return int(handle.read())


def recovery_ppe(workers: int) -> float:
    context = multiprocessing.get_context("forkserver")
    pool = ProcessPoolExecutor(workers, mp_context=context)
    wait([pool.submit(noop_plain) for _ in range(workers * 2)])
    with tempfile.TemporaryDirectory() as tmp:
        pool.submit(report_pid_then_sleep, f"{tmp}/pid", 30)
        victim = _victim(f"{tmp}/pid")
    kill_at = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    try:
        pool.submit(noop_plain).result()
    except BrokenProcessPool:
        pool.shutdown(wait=False, cancel_futures=True)
        pool = ProcessPoolExecutor(workers, mp_context=context)
        pool.submit(noop_plain).result()
    elapsed = time.perf_counter() - kill_at
    pool.shutdown(wait=True)
    return elapsed


def recovery_pebble(workers: int) -> float:
    from pebble import ProcessPool

    with ProcessPool(max_workers=workers, context=multiprocessing.get_context("forkserver")) as pool:
        wait([pool.schedule(noop_plain) for _ in range(workers * 2)])
        with tempfile.TemporaryDirectory() as tmp:
            pool.schedule(report_pid_then_sleep, args=(f"{tmp}/pid", 30))
            victim = _victim(f"{tmp}/pid")
        kill_at = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        pool.schedule(noop_plain).result()
        elapsed = time.perf_counter() - kill_at
        pool.stop()
        return elapsed


# ----------------------------------------------------------------------------------- timeout


def timeout_orchestrator(workers: int) -> float:
    orch = _orchestrator(workers)
    try:
        result = orch.wait(orch.submit_task({"type": "sleep", "config": {"seconds": 10}, "timeout": TIMEOUT}))
        assert result.error is not None
        assert result.error.kind == "timeout"
        return (result.duration_s or 0.0) - TIMEOUT
    finally:
        orch.shutdown(cancel_pending=True, timeout=1)


def timeout_pebble(workers: int) -> float:
    from pebble import ProcessPool

    with ProcessPool(max_workers=workers, context=multiprocessing.get_context("forkserver")) as pool:
        wait([pool.schedule(noop_plain) for _ in range(workers * 2)])
        started = time.perf_counter()
        future = pool.schedule(sleep_plain, args=(10,), timeout=TIMEOUT)
        with contextlib.suppress(TimeoutError):
            future.result()
        return time.perf_counter() - started - TIMEOUT


# ----------------------------------------------------------------------------------- lost tasks


def _crash_plan(tasks: int) -> list[bool]:
    rng = random.Random(42)
    return [rng.random() < 0.1 for _ in range(tasks)]


def lost_orchestrator(workers: int, tasks: int) -> int:
    orch = _orchestrator(workers)
    try:
        plan = _crash_plan(tasks)
        ids = [orch.submit_task({"type": "crash", "config": {"crash": crash}}) for crash in plan]
        results = [orch.wait(task_id) for task_id in ids]
        return sum(1 for crash, r in zip(plan, results, strict=True) if not crash and r.data != 1)
    finally:
        orch.shutdown()


def lost_peer(
    workers: int, tasks: int, submit: Callable[[Any, bool], Future[int]], make: Callable[[], Any]
) -> int:
    plan = _crash_plan(tasks)
    pool = make()
    futures: list[Future[int]] = []
    for crash in plan:
        try:
            futures.append(submit(pool, crash))
        except BrokenProcessPool:  # broken by a crash while the rest were being submitted
            break
    wait(futures)
    lost = sum(1 for crash in plan[len(futures) :] if not crash)
    for crash, future in zip(plan, futures, strict=False):
        if not crash and (future.exception() is not None or future.result() != 1):
            lost += 1
    pool.shutdown(wait=True) if hasattr(pool, "shutdown") else (pool.close(), pool.join())
    return lost


def lost_ppe(workers: int, tasks: int) -> int:
    return lost_peer(
        workers,
        tasks,
        lambda pool, crash: pool.submit(maybe_crash_plain, crash),
        lambda: ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")),
    )


def lost_pebble(workers: int, tasks: int) -> int:
    from pebble import ProcessPool

    return lost_peer(
        workers,
        tasks,
        lambda pool, crash: pool.schedule(maybe_crash_plain, args=(crash,)),
        lambda: ProcessPool(max_workers=workers, context=multiprocessing.get_context("forkserver")),
    )


# ----------------------------------------------------------------------------------- report


def _row(name: str, series: list[float], unit: str = "ms", scale: float = 1000.0) -> str:
    values = [v * scale for v in series]
    return f"  {name:<24}{statistics.median(values):>10.1f}{min(values):>10.1f}{max(values):>10.1f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    header = f"  {'contender':<24}{'median':>10}{'min':>10}{'max':>10}"
    print(f"faults, {args.workers} workers, forkserver, {args.repeat} runs")
    print("1. SIGKILL of a busy worker -> result of the next task")
    print(header)
    for name, run in (
        ("parallel-orchestrator", recovery_orchestrator),
        ("ProcessPoolExecutor", recovery_ppe),
        ("pebble", recovery_pebble),
    ):
        print(_row(name, [run(args.workers) for _ in range(args.repeat)]))
    print("   SIGKILL of a busy worker -> that task's error")
    print(header)
    for name, run in (
        ("parallel-orchestrator", lambda workers: killed_task_orchestrator(workers, "forkserver")),
        ("orchestrator, fork", lambda workers: killed_task_orchestrator(workers, "fork")),
        ("orchestrator, spawn", lambda workers: killed_task_orchestrator(workers, "spawn")),
        ("ProcessPoolExecutor", killed_task_ppe),
        ("pebble", killed_task_pebble),
    ):
        print(_row(name, [run(args.workers) for _ in range(args.repeat)]))
    print(f"2. task timeout ({TIMEOUT} s) -> its error (ProcessPoolExecutor: no per-task timeout)")
    print(header)
    for name, run in (("parallel-orchestrator", timeout_orchestrator), ("pebble", timeout_pebble)):
        print(_row(name, [run(args.workers) for _ in range(args.repeat)]))
    print(f"3. healthy tasks without their result, {args.tasks} tasks with 10% crashing their worker")
    for name, lost in (
        ("parallel-orchestrator", lost_orchestrator),
        ("ProcessPoolExecutor", lost_ppe),
        ("pebble", lost_pebble),
    ):
        print(f"  {name:<24}{lost(args.workers, args.tasks):>10} lost")


if __name__ == "__main__":
    main()
