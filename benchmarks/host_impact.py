"""What a pool costs the host that embeds it, and what the host's own work costs the pool.

Three measurements, each on a warmed pool:

1. host CPU per no-op task: the host process's CPU time (every thread: caller, the pool's own
   threads) over 5,000 no-ops kept 64 in flight, divided by the tasks.
2. busy host: the host's main thread runs a fixed pure-Python job while another host thread keeps
   64 no-ops in flight; the tasks finished per second during the job, and how much longer the job
   took than with the pool idle (its slowdown, in %).
3. round trips while another host thread spins: 300 sequential submit-then-wait no-ops from the
   main thread while a second thread runs pure Python without pause (p50 and p99).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import deque
from typing import Any

from benchmarks.contenders import Contender

IN_FLIGHT = 64
CPU_TASKS = 5_000
ROUND_TRIPS = 300
JOB_ROUNDS = 3_000_000


def host_impact(kind: type[Contender], args: argparse.Namespace) -> dict[str, float]:
    """Host CPU per task (64 in flight); tasks/s while the host computes and its job's slowdown;
    round trips beside a spinning thread."""
    with kind(args.workers, args.start_method) as pool:
        figures = {"host CPU us per no-op task": _host_cpu_per_task(pool)}
        figures.update(_busy_host(pool))
        figures.update(_round_trips_beside_a_spinner(pool))
    return figures


def _host_cpu_per_task(pool: Contender) -> float:
    import psutil

    me = psutil.Process()
    before = me.cpu_times()
    _keep_in_flight(pool, CPU_TASKS, lambda: False)
    after = me.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return used / CPU_TASKS * 1e6


def _keep_in_flight(pool: Contender, tasks: int | None, stop: Any, done: list[int] | None = None) -> None:
    """Keep ``IN_FLIGHT`` no-ops running until ``tasks`` are done (or ``stop()``); ``done[0]``
    counts those that ended, as they end."""
    done = done if done is not None else [0]
    handles: deque[Any] = deque(pool.submit("noop", 0) for _ in range(IN_FLIGHT))
    while handles:
        pool.wait(handles.popleft())
        done[0] += 1
        if (tasks is None or done[0] + len(handles) < tasks) and not stop():
            handles.append(pool.submit("noop", 0))


def _job() -> float:
    """A fixed pure-Python job; its duration in seconds."""
    started = time.perf_counter()
    total = 0
    for value in range(JOB_ROUNDS):
        total += value * value % 7
    return time.perf_counter() - started


def _busy_host(pool: Contender) -> dict[str, float]:
    alone = _job()
    stop = threading.Event()
    done = [0]
    feeder = threading.Thread(target=_keep_in_flight, args=(pool, None, stop.is_set, done))
    feeder.start()
    while done[0] < IN_FLIGHT:  # flowing before the job starts
        time.sleep(0.001)
    before = done[0]
    beside = _job()
    during = done[0] - before
    stop.set()
    feeder.join()
    return {"busy host tasks/s": during / beside, "host job slowdown %": (beside / alone - 1) * 100}


def _round_trips_beside_a_spinner(pool: Contender) -> dict[str, float]:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1_000))

    spinner = threading.Thread(target=spin)
    spinner.start()
    times = []
    try:
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            pool.wait(pool.submit("noop", 0))
            times.append((time.perf_counter() - started) * 1e6)
    finally:
        stop.set()
        spinner.join()
    times.sort()
    return {
        "spinner round trip p50 us": statistics.median(times),
        "spinner round trip p99 us": times[int(len(times) * 0.99) - 1],
    }
