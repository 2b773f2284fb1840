"""`Pace`: how long each type's tasks run, and so how many a worker holds queued behind its running one."""

from __future__ import annotations

from typing import Final

# The work a worker holds queued: enough to last while the supervisor reads its results and sends
# it more, also when another host thread holds the GIL for a switch interval or two (5 ms each).
WINDOW_S: Final = 0.01
MAX_DEPTH: Final = 64
# How far one shorter run moves a type's estimate (a longer one replaces it at once).
_WEIGHT: Final = 0.25


class Pace:
    """Run times by task type, as the workers measure them, and the prefetch depth they call for.

    A worker with nothing queued idles from the end of each task until the supervisor has read
    its result and sent the next: a few hundred microseconds, and whole switch intervals while
    another host thread computes. Short tasks are therefore queued in their worker up to about
    `WINDOW_S` of work (at most `MAX_DEPTH`), so that workers never wait for the host and the
    supervisor reads results and sends tasks in batches. A type not measured yet, or whose tasks
    run `WINDOW_S` or longer, is held one task ahead. The estimate becomes cautious at once (a long
    run replaces it) and bold slowly (each shorter run moves it a quarter of the way).
    """

    def __init__(self) -> None:
        self._run_s: dict[str, float] = {}

    def observe(self, task_type: str, run_s: float) -> None:
        """A task of ``task_type`` ran for ``run_s`` seconds in its worker."""
        estimate = self._run_s.get(task_type)
        if estimate is None or run_s >= estimate:
            self._run_s[task_type] = run_s
        else:
            self._run_s[task_type] = estimate + _WEIGHT * (run_s - estimate)

    def depth(self, task_type: str) -> int:
        """How many tasks of ``task_type`` a busy worker holds queued behind its running one."""
        estimate = self._run_s.get(task_type)
        if estimate is None or estimate >= WINDOW_S:
            return 1
        if estimate * MAX_DEPTH <= WINDOW_S:
            return MAX_DEPTH
        return int(WINDOW_S / estimate)
