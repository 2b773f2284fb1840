"""The five built-in task types, each a handler module: monitor, research, learn, optimize and
analyze, with the checking of their config keys (`options`). A worker imports one only when a task
of its type runs; naming them here imports none of them."""

from __future__ import annotations

from typing import Final

BUILTIN_HANDLERS: Final[dict[str, str]] = {
    "monitor": "workers.builtin.monitor:run",
    "research": "workers.builtin.research:run",
    "learn": "workers.builtin.learn:run",
    "optimize": "workers.builtin.optimize:run",
    "analyze": "workers.builtin.analyze:run",
}
