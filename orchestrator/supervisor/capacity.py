"""How many tasks of each type may run now.

Three things decide it: the configured caps (``worker_type_limits``, else ``max_workers`` times the
type's ``worker_concurrency``); the lower limit a rate limit sets, halved on each one and regrown by
one after as many successes in a row as the limit (AIMD); and the slots that tasks blocked in a wait
lend to other work (at most ``max_waiting_tasks`` at once).
"""

from __future__ import annotations

import logging

from orchestrator.config import OrchestratorConfig

logger = logging.getLogger("orchestrator.supervisor")


class Capacity:
    """Running tasks per type against their limits; the supervisor thread's own."""

    def __init__(self, config: OrchestratorConfig) -> None:
        self._config = config
        self._running: dict[str, int] = {}
        # Types throttled after a rate limit, and their successes in a row since.
        self._throttled: dict[str, int] = {}
        self._successes: dict[str, int] = {}
        lend_limit = config.max_waiting_tasks
        self._lend_limit = config.max_workers if lend_limit is None else lend_limit
        self._lent = 0

    def has_room(self, task_type: str) -> bool:
        """Whether one more task of the type may start."""
        cap = self._throttled.get(task_type, self._config.worker_type_limits.get(task_type))
        return cap is None or self._running.get(task_type, 0) < cap

    def occupy(self, task_type: str) -> None:
        """A task of the type took a slot (sent to a worker, or back from a wait)."""
        self._running[task_type] = self._running.get(task_type, 0) + 1

    def vacate(self, task_type: str) -> None:
        """A task of the type gave its slot up."""
        self._running[task_type] -= 1

    def lend(self, task_type: str) -> bool:
        """A task blocked in a wait lends its slot out; False when ``max_waiting_tasks`` already do."""
        if self._lent >= self._lend_limit:
            return False
        self._lent += 1
        self.vacate(task_type)
        return True

    def take_back(self, task_type: str) -> None:
        """A waiting task goes on: it takes its slot back, even above the limits (they regrow)."""
        self._lent -= 1
        self.occupy(task_type)

    def rate_limited(self, task_type: str) -> None:
        """A rate limit: halve the type's parallelism (not below 1)."""
        current = self._throttled.get(task_type, self.cap(task_type))
        self._throttled[task_type] = max(1, current // 2)
        self._successes[task_type] = 0
        logger.info("task type %r rate limited: parallelism now %d", task_type, self._throttled[task_type])

    def succeeded(self, task_type: str) -> None:
        """A success: a throttled type regrows by one after as many in a row as its limit."""
        limit = self._throttled.get(task_type)
        if limit is None:
            return
        self._successes[task_type] = self._successes.get(task_type, 0) + 1
        if self._successes[task_type] >= limit:
            self._successes[task_type] = 0
            if limit + 1 >= self.cap(task_type):
                del self._throttled[task_type]
            else:
                self._throttled[task_type] = limit + 1

    def cap(self, task_type: str) -> int:
        """The most tasks of the type that may ever run at once."""
        cap = self._config.worker_type_limits.get(task_type)
        if cap is not None:
            return cap
        return self._config.max_workers * self._config.worker_concurrency.get(task_type, 1)

    def limits(self) -> dict[str, int]:
        """The types with a limit now, configured or set by a rate limit (`orch status`)."""
        return {**self._config.worker_type_limits, **self._throttled}

    def allowed(self, task_types: list[str]) -> dict[str, int]:
        """The parallelism each of the types is allowed now (metrics)."""
        return {t: self._throttled.get(t, self.cap(t)) for t in task_types}
