"""One interface over this orchestrator and its peers, so that every benchmark runs them all alike.

Each contender is a context manager around a warmed pool with ``submit(kind, arg)`` returning a
handle and ``wait(handle)`` returning the task's value. Kinds: ``noop``, ``cpu`` (arg: ms of CPU),
``echo`` (arg: the value to return), ``collect`` (a full garbage collection in the worker),
``sleep`` (arg: ms to sleep).
"""

from __future__ import annotations

import multiprocessing
import os
from abc import ABC, abstractmethod
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Self

from benchmarks import tasks

PLAIN = {
    "noop": tasks.noop_plain,
    "cpu": tasks.cpu_plain,
    "echo": tasks.echo_plain,
    "collect": tasks.collect_plain,
    "sleep": tasks.sleep_plain,
}
HANDLERS = {kind: "benchmarks.tasks:" + fn.__name__.removesuffix("_plain") for kind, fn in PLAIN.items()}


class Contender(ABC):
    """Base: a pool of ``workers`` processes started with ``method``."""

    name = ""
    library = ""  # the import a user writes to get this pool
    own_method: str | None = None  # a start method this contender always uses, whatever the run's

    def __init__(self, workers: int, method: str, queue: int = 200_000) -> None:
        self.workers = workers
        self.method = self.own_method or method
        self.queue = queue

    def __enter__(self) -> Self:
        self.start()
        for handle in [self.submit("noop", 0) for _ in range(self.workers * 2)]:
            self.wait(handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @abstractmethod
    def start(self) -> None:
        """Start the pool."""

    @abstractmethod
    def stop(self) -> None:
        """Finish queued work and stop the pool."""

    @abstractmethod
    def submit(self, kind: str, arg: Any) -> Any:
        """Submit one task; returns what `wait` takes."""

    def wait(self, handle: Any) -> Any:
        return handle.result()

    def map(self, kind: str, args: list[Any], chunksize: int) -> list[Any]:
        """``map`` of the kind's plain function over ``args`` (executor-like contenders)."""
        return list(self.pool.map(PLAIN[kind], args, chunksize=chunksize))

    def abandon(self) -> None:
        """Stop at once, dropping queued tasks (the scale benchmark does not drain 100,000)."""
        self.stop()

    def worker_pids(self) -> list[int]:
        import psutil

        helpers = ("resource_tracker", "forkserver", "semaphore_tracker")
        pids = []
        me = os.getpid()
        for child in psutil.Process().children(recursive=True):
            try:
                # A fork server's children share its command line: only the helpers themselves
                # (this process's own children) are left out.
                helper = any(helper in " ".join(child.cmdline()) for helper in helpers)
                if not (helper and child.ppid() == me):
                    pids.append(child.pid)
            except psutil.Error:
                continue
        return pids


class Orchestrator(Contender):
    """This orchestrator as users get it: its default start method, forkserver."""

    name = "parallel-orchestrator"
    library = "from orchestrator import ParallelOrchestrator"
    own_method = "forkserver"
    options: dict[str, Any] = {}  # noqa: RUF012 - read only

    def start(self) -> None:
        from orchestrator import ParallelOrchestrator

        self.orch = ParallelOrchestrator(
            max_workers=self.workers,
            min_workers=self.workers,
            task_queue_size=self.queue,
            max_results_in_memory=self.queue,
            start_method=self.method,
            handlers=HANDLERS,
            control_socket=False,
            **self.options,
        )
        self.orch.initialize()

    def stop(self) -> None:
        self.orch.shutdown()

    def abandon(self) -> None:
        self.orch.shutdown(cancel_pending=True, timeout=0)

    def submit(self, kind: str, arg: Any) -> Any:
        key = "ms" if kind in ("cpu", "sleep") else "x"
        return self.orch.submit_task({"type": kind, "config": {key: arg}})

    def wait(self, handle: Any) -> Any:
        result = self.orch.wait(handle)
        if not result.success:
            raise RuntimeError(f"benchmark task failed: {result.error}")
        return result.data

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.orch.get_workers() if w.pid is not None]


class PPE(Contender):
    name = "ProcessPoolExecutor"
    library = "from concurrent.futures import ProcessPoolExecutor"

    def start(self) -> None:
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(self.method))

    def stop(self) -> None:
        self.pool.shutdown(wait=True)

    def abandon(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, kind: str, arg: Any) -> Future[Any]:
        return self.pool.submit(PLAIN[kind], arg)


class OrchestratorExecutor(PPE):
    """This orchestrator through its concurrent.futures facade, running the peers' plain functions."""

    name = "orchestrator executor"
    library = "from orchestrator import ProcessPoolExecutor"
    own_method = "forkserver"

    def start(self) -> None:
        from orchestrator import ProcessPoolExecutor as Facade

        self.pool = Facade(  # type: ignore[assignment]
            self.workers,
            mp_context=multiprocessing.get_context(self.method),
            min_workers=self.workers,
            max_results_in_memory=self.queue,
            control_socket=False,
        )


class MPPool(Contender):
    name = "multiprocessing.Pool"
    library = "from multiprocessing.pool import Pool"

    def start(self) -> None:
        self.pool = multiprocessing.get_context(self.method).Pool(self.workers)

    def stop(self) -> None:
        self.pool.close()
        self.pool.join()

    def abandon(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def submit(self, kind: str, arg: Any) -> Any:
        return self.pool.apply_async(PLAIN[kind], (arg,))

    def wait(self, handle: Any) -> Any:
        return handle.get()


class Loky(Contender):
    name = "loky"
    library = "from loky import get_reusable_executor"

    def start(self) -> None:
        from loky import get_reusable_executor

        self.pool = get_reusable_executor(max_workers=self.workers, reuse=False)

    def stop(self) -> None:
        self.pool.shutdown(wait=True)

    def abandon(self) -> None:
        self.pool.shutdown(wait=True, kill_workers=True)

    def submit(self, kind: str, arg: Any) -> Any:
        return self.pool.submit(PLAIN[kind], arg)


class Pebble(Contender):
    name = "pebble"
    library = "from pebble import ProcessPool"

    def start(self) -> None:
        from pebble import ProcessPool

        self.pool = ProcessPool(max_workers=self.workers, context=multiprocessing.get_context(self.method))

    def stop(self) -> None:
        self.pool.close()
        self.pool.join()

    def abandon(self) -> None:
        self.pool.stop()
        self.pool.join()

    def submit(self, kind: str, arg: Any) -> Any:
        return self.pool.schedule(PLAIN[kind], args=(arg,))

    def map(self, kind: str, args: list[Any], chunksize: int) -> list[Any]:
        return list(self.pool.map(PLAIN[kind], args, chunksize=chunksize).result())


class OrchestratorFork(Orchestrator):
    """The orchestrator with the fork start method, beside its default."""

    name = "orchestrator, fork"
    own_method = "fork"


class OrchestratorViews(Orchestrator):
    """The orchestrator handing large results out as views of their shared memory."""

    name = "orchestrator, views"
    options = {"result_buffers": "view"}  # noqa: RUF012 - read only


ALL: list[type[Contender]] = [Orchestrator, OrchestratorFork, PPE, MPPool, Loky, Pebble]
# The concurrent.futures-style pools, for the executor benchmark.
EXECUTORS: list[type[Contender]] = [OrchestratorExecutor, PPE, Loky, Pebble]


def by_name(name: str) -> type[Contender]:
    """The contender called ``name``."""
    for kind in [*ALL, *EXECUTORS, OrchestratorViews]:
        if kind.name == name:
            return kind
    raise ValueError(f"no contender named {name!r}")


def import_all() -> None:
    """Import every contender's library up front, so that no timing includes an import."""
    import loky  # noqa: F401
    import pebble  # noqa: F401

    import orchestrator.core  # noqa: F401
