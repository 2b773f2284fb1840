"""`InitGuard`: per task type, how many workers in a row failed to initialize; past a few, the
type's tasks fail at once instead of killing worker after worker."""

from __future__ import annotations

from typing import Final

# Initializer failures in a row after which a type's tasks fail without a worker.
MAX_INIT_FAILURES: Final = 3


class InitGuard:
    """Counts initializer failures in a row by task type (on the supervisor's thread).

    A worker of the type that finishes a task (its initializer ran cleanly) resets the count;
    so does `reset` (a handler was registered: what the initializer needed may be there now).
    """

    def __init__(self) -> None:
        self._failures: dict[str, tuple[int, str]] = {}

    def failed(self, task_type: str, message: str) -> None:
        """A worker's initializer for ``task_type`` raised, as ``message`` says."""
        count = self._failures.get(task_type, (0, ""))[0]
        self._failures[task_type] = (count + 1, message)

    def succeeded(self, task_type: str) -> None:
        """A worker of ``task_type`` finished a task: its initializer (if any) ran cleanly."""
        if self._failures:
            self._failures.pop(task_type, None)

    def broken(self, task_type: str) -> str | None:
        """Why tasks of ``task_type`` fail at once now, or None while workers may still try."""
        count, message = self._failures.get(task_type, (0, ""))
        if count < MAX_INIT_FAILURES:
            return None
        return (
            f"{message} (the initializer of {task_type!r} failed in {count} workers in a row; its "
            "tasks fail at once until a handler is registered or the orchestrator is restarted)"
        )

    def reset(self) -> None:
        """Let every type try again."""
        self._failures.clear()
