"""Work for the benchmarks: handlers for the orchestrator and plain functions for the peers."""

from __future__ import annotations

import time
from typing import Any


def noop(ctx: Any) -> None:
    """An orchestrator handler that does nothing."""


def noop_plain(value: int = 0) -> None:
    """A peer's task that does nothing."""


def cpu(ctx: Any) -> None:
    """An orchestrator handler that keeps the CPU busy for config['ms'] milliseconds."""
    cpu_plain(ctx.config["ms"])


def cpu_plain(ms: float) -> None:
    """A peer's task that keeps the CPU busy for ``ms`` milliseconds."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def echo(ctx: Any) -> Any:
    """An orchestrator handler that returns config['x']."""
    return ctx.config["x"]


def echo_plain(value: Any) -> Any:
    """A peer's task that returns its argument."""
    return value


def sleep(ctx: Any) -> None:
    """An orchestrator handler that sleeps config['ms'] milliseconds."""
    sleep_plain(ctx.config["ms"])


def sleep_plain(ms: float) -> None:
    """A peer's task that sleeps ``ms`` milliseconds."""
    time.sleep(ms / 1000)


def collect(ctx: Any) -> None:
    """An orchestrator handler that runs a full garbage collection in its worker."""
    collect_plain()


def collect_plain(value: int = 0) -> None:
    """A peer's task that runs a full garbage collection in its worker."""
    import gc

    gc.collect()
