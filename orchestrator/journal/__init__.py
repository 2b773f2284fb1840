"""The optional SQLite journal: accepted tasks and their results survive a crash of the host.

Every write goes first to an *intake log*, a memory-mapped file (``<journal>-intake0`` or
``-intake1``) that each record is copied into: ``submit_task`` appends its task before it
returns, and the supervisor appends the state changes and results of each wake-up as one record
(its group commit). Stores to a shared file mapping are in the kernel's page cache the moment
they are made, so they survive a kill of the process; and a copy makes no system call, so a
submitter never hands the GIL to the supervisor mid-submit (with an SQLite commit per submit and
per wake-up, those hand-offs cost more than the writes themselves).

Every ``MOVE_INTERVAL`` the supervisor moves the intake into SQLite in one transaction (new rows
and changes together as multi-row upserts): the two intake files alternate, submitters appending
to one while the other is moved and then reset. A record carries its length, a CRC and its file's
generation (a counter shared by both files and bumped at each reset), so a torn or stale record is
never read back; at open, what a dead host left in the intake is replayed into SQLite, oldest
generation first, before anything else reads the journal. The promise is durability against a
crash of the host process (SIGKILL, the OOM killer), not against power loss (SQLite runs with
``synchronous=NORMAL`` and the intake is never fsynced).

One writer at a time: an exclusive ``flock`` on ``<journal>.lock``, taken at open. The lock's fd is
close-on-exec and is closed in forked workers, so a dead host's lock is released even while its
orphaned workers are still exiting.
"""

from orchestrator.journal.counts import journal_counts as journal_counts
from orchestrator.journal.journal import MOVE_INTERVAL as MOVE_INTERVAL
from orchestrator.journal.journal import Journal as Journal
from orchestrator.journal.store import APPLICATION_ID as APPLICATION_ID
from orchestrator.journal.store import JournalRow as JournalRow
from orchestrator.journal.store import NewTask as NewTask
from orchestrator.journal.store import UnreadableRow as UnreadableRow
from orchestrator.journal.store import journal_result as journal_result
from orchestrator.journal.store import restore_result as restore_result

__all__ = [
    "APPLICATION_ID",
    "MOVE_INTERVAL",
    "Journal",
    "JournalRow",
    "NewTask",
    "UnreadableRow",
    "journal_counts",
    "journal_result",
    "restore_result",
]
