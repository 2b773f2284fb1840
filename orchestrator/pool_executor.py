"""`ProcessPoolExecutor`: a drop-in for the stdlib's class, on an orchestrator of its own."""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

from orchestrator.core import ParallelOrchestrator
from orchestrator.executor import TaskExecutor, TaskFuture

T = TypeVar("T")

_executors = itertools.count(1)
# Executors not shut down yet, which an exit waits for.
_open: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()


class ProcessPoolExecutor(Executor):
    """A drop-in for `concurrent.futures.ProcessPoolExecutor`, on an orchestrator of its own.

    ``max_workers`` (default ``os.cpu_count()``), ``mp_context`` (its start method is used),
    ``initializer`` and ``initargs``, and ``max_tasks_per_child`` mean what they mean in the
    stdlib; any other keyword is an `OrchestratorConfig` field. As in the stdlib, each worker
    gets ``initargs`` as it starts (so they may hold a multiprocessing Queue or Lock), and work
    submitted finishes before the interpreter exits even without `shutdown`. The orchestrator
    is visible in ``orch status`` and shuts down with the executor. See `TaskExecutor` for what
    differs from the stdlib (cancel stops running calls, a crash fails one future, priorities
    and timeouts).

    Raises:
        ValueError: ``max_workers`` or ``max_tasks_per_child`` below 1, or a bad ``mp_context``.
        ConfigError: a config field that does not validate.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        **config: Any,
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_child is not None:
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
            config["max_tasks_per_worker"] = max_tasks_per_child
        if mp_context is not None:
            config["start_method"] = _start_method(mp_context)
        config.setdefault("name", f"executor-{os.getpid()}-{next(_executors)}")
        self._orchestrator = ParallelOrchestrator(max_workers=max_workers, **config)
        # Made before the workers start, so each gets the initializer as it starts.
        self._executor = self._orchestrator.executor(initializer=initializer, initargs=initargs)
        self._orchestrator.initialize()
        _open.add(self)

    @property
    def orchestrator(self) -> ParallelOrchestrator:
        """The orchestrator this executor owns."""
        return self._orchestrator

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture[T]:
        """Run ``fn(*args, **kwargs)`` in a worker; see `TaskExecutor.submit`."""
        return self._executor.submit(fn, *args, **kwargs)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """``fn`` over the iterables' items, results in order; see `TaskExecutor.map`."""
        return self._executor.map(fn, *iterables, timeout=timeout, chunksize=chunksize, buffersize=buffersize)

    def options(self, **task_defaults: Any) -> TaskExecutor:
        """An executor on the same workers whose tasks take these `TaskSpec` defaults
        (``priority``, ``timeout``, ``retries``...); it shares this one's futures and shutdown."""
        return self._executor.options(**task_defaults)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As the stdlib's; then the executor's orchestrator shuts down too."""
        _open.discard(self)
        self._executor.shutdown(wait, cancel_futures=cancel_futures)
        self._orchestrator.shutdown(wait=wait, cancel_pending=cancel_futures)

    def __reduce__(self) -> Any:
        raise TypeError("an executor cannot be pickled; pass the function and its arguments instead")


def _finish_at_exit() -> None:
    """As the stdlib's pool: what was submitted finishes before the interpreter exits."""
    for executor in list(_open):
        executor.shutdown(wait=True)


# The hook the stdlib's pool uses: it runs before every atexit hook (the orchestrators' own, and
# a user's that would submit after the pool is closed gets the stdlib's RuntimeError).
threading._register_atexit(_finish_at_exit)  # type: ignore[attr-defined]


def _start_method(mp_context: Any) -> str:
    method = mp_context.get_start_method() if hasattr(mp_context, "get_start_method") else None
    if method not in ("fork", "forkserver", "spawn"):
        raise ValueError(f"mp_context must be a multiprocessing context, not {mp_context!r}")
    return str(method)
