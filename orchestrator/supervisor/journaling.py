"""`JournalLink`: the journal the supervisor's collaborators write to, until journaling stops."""

from __future__ import annotations

from orchestrator.journal import Journal
from orchestrator.supervisor.record import TaskRecord


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

    def started(self, record: TaskRecord) -> None:
        """The task runs its next attempt."""
        if self.journal is not None and record.journaled:
            self.journal.started(record.task_id, record.attempts)

    def requeued(self, record: TaskRecord) -> None:
        """The task is queued again, after the attempts it made."""
        if self.journal is not None and record.journaled:
            self.journal.requeued(record.task_id, record.attempts)

    def of(self, record: TaskRecord) -> Journal | None:
        """The journal to write this task's changes to (None: journaling stopped, or a task the
        journal never holds)."""
        return self.journal if record.journaled else None
