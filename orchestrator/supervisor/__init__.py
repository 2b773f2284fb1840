"""The supervisor: the one thread that owns every task's and every worker's mutable state.

::

    caller threads              supervisor thread                          worker processes
    --------------              -----------------                          ----------------
    submit_task ──accept──▶ loop.CommandQueue ─┐
    cancel / status ─call─▶  (wake-up pipe)    ├─ select() ◀── pipes: Hello, Started, Progress, Done
                                               │           ◀── sentinels: a worker died
                                               │           ◀── Timers: timeout, grace, idle, limits
                                               ├─ dispatch ──RunTask / StopTask──────────────▶
                                               ├─ results.Results ──▶ waiters, streams
                                               └─ announce.Announcer ──▶ EventBus thread ──▶ callbacks

Only the command queue is touched from other threads; everything else lives on the supervisor
thread and shares its one `Timers` and one selector. Messages are drained before deaths are
handled, so a worker that sent its result and then exited is not a crash.

The collaborators, each owning one thing, listed from the bottom up (each imports only those
above it in this list; a lower one that must reach a higher one is handed a callable):

- ``record``: `TaskRecord`, a task as the host tracks it (a result's wire form, for ``ctx.wait``
  and the journal alike, is `orchestrator.models.result_wire`).
- ``loop``: `CommandQueue`, the commands and submitted tasks other threads hand in, and the
  wake-up pipe.
- ``journaling``: `JournalLink`, whether task changes are still journaled (never an executor's).
- ``init_guard``: `InitGuard`, worker initializer failures in a row, by task type.
- ``graph``: `TaskGraph`, who waits for whom (dependencies, groups, plans).
- ``capacity``: `Capacity`, running tasks per type against their caps, AIMD limits and lent slots.
- ``announce``: `Announcer`, every event, task log line and metric hook, built once.
- ``results``: `Results`, settled results, their waiters and watchers, retention and group counts.
- ``resources``: `ResourceLimits`, measuring busy workers against max_memory_mb and max_cpu_seconds.
- ``line``: `Line`, ready tasks by type and priority, and delayed ones behind their timers.
- ``fleet``: `Fleet`, the worker processes from spawn to burial (idle timeouts, retiring, killing).
- ``conversation``: `Conversation`, tasks that talk: topics, sub-tasks, waits, lent slots.
- ``lifecycle``: `Lifecycle`, a task from acceptance to its final result, and the count per state.
- ``reports``: `Reports`, what workers say about their tasks, and what a worker's death means.
- ``dispatch``: `Dispatcher`, ready tasks to workers, prefetch and revoke.
- ``inbox``: `Inbox`, frames from workers, each message handed on through a type -> handler table.
- ``schedule_host``: `TaskScheduleHost`, what the schedule runner does to tasks.
- ``shutdown``: `Shutdown`, how open tasks end when the orchestrator shuts down.
- ``supervisor``: `Supervisor`, which builds them and runs the loop as named steps.
"""

from orchestrator.supervisor.record import TaskRecord as TaskRecord
from orchestrator.supervisor.record import add_waiter as add_waiter
from orchestrator.supervisor.supervisor import Supervisor as Supervisor

__all__ = ["Supervisor", "TaskRecord", "add_waiter"]
