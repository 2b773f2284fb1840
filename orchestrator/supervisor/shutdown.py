"""`Shutdown`: how open tasks end when the orchestrator shuts down, gracefully or at a deadline."""

from __future__ import annotations

from orchestrator.models import TaskStatus
from orchestrator.scheduler import Timers
from orchestrator.supervisor.fleet import Fleet
from orchestrator.supervisor.journaling import JournalLink
from orchestrator.supervisor.lifecycle import Lifecycle
from orchestrator.supervisor.record import TaskRecord, is_delayed
from orchestrator.supervisor.schedule_host import TaskScheduleHost, clocks

_DELAYED_AT_SHUTDOWN = "cancelled by shutdown before its delay ended (keep_queued keeps it)"


class Shutdown:
    """Stops new work, ends queued and delayed tasks as asked, and at a deadline ends the rest."""

    def __init__(
        self,
        tasks: dict[str, TaskRecord],
        timers: Timers,
        *,
        lifecycle: Lifecycle,
        fleet: Fleet,
        schedule_host: TaskScheduleHost,
        journaling: JournalLink,
    ) -> None:
        self._tasks = tasks
        self._timers = timers
        self._lifecycle = lifecycle
        self._fleet = fleet
        self._schedule_host = schedule_host
        self._journaling = journaling

    def begin(self, cancel_pending: bool, deadline: float | None, keep_queued: bool = False) -> None:
        """Take no new work; cancel the queue if asked; at ``deadline``, cancel and kill the rest.

        ``keep_queued`` (with a journal): stop now, and leave every open task in the journal, as it
        stands, for the next process (the upgrade case).
        """
        self._fleet.stop_growing()
        self._schedule_host.disarm()
        journal = self._journaling.journal if keep_queued else None
        if journal is not None:
            journal.flush(wait=False)  # the rest moves at close, on the caller's thread
            self._journaling.stop()
            self._on_deadline()
            self._fleet.retire_unneeded()
            return
        if cancel_pending:
            self._cancel_all(TaskStatus.QUEUED, "cancelled by shutdown(cancel_pending=True)")
        # Waiting for a delay to end would hold shutdown for as long as the delay.
        now_mono, now_wall = clocks()
        delayed = [r for r in self._tasks.values() if r.result is None and is_delayed(r, now_mono, now_wall)]
        for record in delayed:
            self._lifecycle.cancel(record, _DELAYED_AT_SHUTDOWN)
        if deadline is not None:
            self._timers.schedule(deadline, self._on_deadline)
        self._fleet.retire_unneeded()

    def _cancel_all(self, status: TaskStatus, message: str) -> None:
        for record in [r for r in self._tasks.values() if r.status is status and r.result is None]:
            self._lifecycle.cancel(record, message)

    def _on_deadline(self) -> None:
        self._cancel_all(TaskStatus.QUEUED, "cancelled: shutdown timed out before the task ran")
        self._cancel_all(TaskStatus.RUNNING, "cancelled: shutdown timed out while the task ran")
        for worker in list(self._fleet.workers.values()):
            if worker.tasks:
                self._fleet.kill(worker, "shutdown")

    def end_open_tasks(self, failure: str | None) -> None:
        """The loop ended: every task still open ends now, cancelled, or interrupted by ``failure``."""
        if failure is None:
            kind, message = "cancelled", "the orchestrator shut down before the task finished"
        else:
            kind, message = "interrupted", f"the orchestrator failed before the task finished: {failure}"
        for record in list(self._tasks.values()):
            if record.result is None:
                self._lifecycle.fail(record, kind, message)
