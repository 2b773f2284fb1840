"""Work for the benchmarks: a handler for the orchestrator and a plain function for the peers."""

from __future__ import annotations

from typing import Any


def noop(ctx: Any) -> None:
    """An orchestrator handler that does nothing."""


def noop_plain(value: int = 0) -> None:
    """A peer's task that does nothing."""


def sleep_ms(ctx: Any) -> None:
    """An orchestrator handler that sleeps config['ms'] milliseconds."""
    import time

    time.sleep(ctx.config["ms"] / 1000)
