"""Plain functions for the executor tests; module-level so that pickle finds them by reference."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from workers import TaskCancelled, TaskContext, current_context

# Set by `remember_init` in a worker process: what its initializer was given.
initialized_with: tuple[Any, ...] | None = None


def square(x: int) -> int:
    return x * x


def add(x: int, y: int = 0) -> int:
    return x + y


def pid() -> int:
    return os.getpid()


def raise_value_error(text: str) -> None:
    raise ValueError(text)


class NeedsTwoArguments(Exception):
    """An exception that pickle cannot rebuild (its __init__ takes two arguments, args has one)."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} {second}")


def raise_unrebuildable() -> None:
    raise NeedsTwoArguments("one", "two")


def exit_hard(code: int) -> None:
    os._exit(code)


def return_unpicklable() -> Any:
    return lambda: None


def wait_for_file(path: str) -> int:
    """Run until ``path`` exists (the test creates it); then this worker's pid."""
    while not Path(path).exists():
        time.sleep(0.005)
    return os.getpid()


def wait_until_stopped(started: str, stopped: str) -> None:
    """Say it started (creates ``started``), run until a stop request, then create ``stopped``."""
    Path(started).touch()
    try:
        while True:
            time.sleep(0.005)
    except TaskCancelled:
        Path(stopped).touch()
        raise


def report_progress(steps: int, release: str) -> int:
    """Report ``steps`` progress, then wait for ``release`` to exist."""
    context = current_context()
    assert context is not None
    context.progress(steps, steps * 2, "halfway")
    while not Path(release).exists():
        time.sleep(0.005)
    return steps


def context_of_task() -> str | None:
    """The task id `current_context` gives inside a function."""
    context = current_context()
    return None if context is None else context.task_id


def remember_init(*args: Any) -> None:
    global initialized_with
    initialized_with = args


def initialized() -> tuple[Any, ...] | None:
    return initialized_with


def failing_init(*args: Any) -> None:
    raise RuntimeError("the model file is missing")


def double_in_place(array: Any) -> Any:
    array *= 2
    return array


def ones(n: int) -> Any:
    import numpy

    return numpy.ones(n)


# For OrchestratorConfig.worker_init: a marker the handlers below read.
_ready: list[str] = []


def init_ok() -> None:
    _ready.append("ready")


def init_fails() -> None:
    raise ConnectionError("the database is down")


def report_ready(ctx: TaskContext) -> Any:
    """A handler: how many times this worker's initializer ran before it."""
    return len(_ready)


def _exit_now() -> None:
    raise SystemExit(1)


class ExitsWhenUnpickled:
    """A value whose unpickling (on the host) raises SystemExit."""

    def __reduce__(self) -> Any:
        return (_exit_now, ())


class ExitingError(Exception):
    """An exception whose unpickling (on the host) raises SystemExit."""

    def __reduce__(self) -> Any:
        return (_exit_now, ())


def return_exiting() -> Any:
    return ExitsWhenUnpickled()


def raise_exiting() -> None:
    raise ExitingError("never rebuilt")


class FailsWhenPickled:
    """A value whose pickling (in the worker) raises SystemExit."""

    def __reduce__(self) -> Any:
        raise SystemExit(3)


def return_unpicklable_exiting() -> Any:
    return FailsWhenPickled()


def put_pid_on(queue: Any) -> None:
    """An initializer whose argument (a multiprocessing Queue) passes only by inheritance."""
    global inherited_queue
    inherited_queue = queue
    queue.put(os.getpid())


def put_on_inherited_queue(value: Any) -> int:
    inherited_queue.put(value)
    return os.getpid()


class Payload:
    """A result whose lifetime a test follows with a weak reference."""

    def __init__(self, n: int) -> None:
        self.n = n


def payload(n: int) -> Payload:
    return Payload(n)
