"""`JournalLink`: the journal the supervisor's collaborators write to, until journaling stops."""

from __future__ import annotations

from orchestrator.journal import Journal


class JournalLink:
    """The one place that says whether task changes are still journaled.

    ``journal`` is None without a journal, and from the moment journaling stops (the supervisor
    failed, or a ``keep_queued`` shutdown): what is open then stays open in the journal, as it
    stands, for the next process to recover.
    """

    def __init__(self, journal: Journal | None) -> None:
        self.journal = journal

    def stop(self) -> Journal | None:
        """Journal nothing more; return the journal that was written to, if any."""
        journal, self.journal = self.journal, None
        return journal

    def started(self, task_id: str, attempt: int) -> None:
        """The task runs its ``attempt``-th attempt."""
        if self.journal is not None:
            self.journal.started(task_id, attempt)

    def requeued(self, task_id: str, attempts: int) -> None:
        """The task is queued again, after ``attempts`` attempts."""
        if self.journal is not None:
            self.journal.requeued(task_id, attempts)
