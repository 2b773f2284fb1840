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

The collaborators, each owning one thing:

- ``record``: `TaskRecord`, a task as the host tracks it, and its wire form for ``ctx.wait``.
- ``loop``: `CommandQueue`, the commands and submitted tasks other threads hand in, and the
  wake-up pipe.
- ``graph``: `TaskGraph`, who waits for whom (dependencies, groups, plans).
- ``capacity``: `Capacity`, running tasks per type against their caps, AIMD limits and lent slots.
- ``results``: `Results`, settled results, their waiters and watchers, retention and group counts.
- ``resources``: `ResourceLimits`, measuring busy workers against max_memory_mb and max_cpu_seconds.
- ``announce``: `Announcer`, every event, task log line and metric hook, built once.
- ``supervisor``: `Supervisor`, which builds them and runs the loop: dispatch, worker messages, a
  task's lifecycle, the worker fleet, tasks that talk, the schedule host and shutdown (still to be
  split into collaborators of their own).
"""

from orchestrator.supervisor.record import TaskRecord as TaskRecord
from orchestrator.supervisor.supervisor import Supervisor as Supervisor

__all__ = ["Supervisor", "TaskRecord"]
