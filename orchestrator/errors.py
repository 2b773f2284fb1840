"""The exceptions the orchestrator's API raises, all rooted at `OrchestratorError`.

::

    OrchestratorError
    ├── ConfigError            an OrchestratorConfig that does not validate
    ├── InvalidTaskError       a task spec that does not validate (also a ValueError)
    ├── UnknownTaskTypeError   a task type with no handler (also a ValueError)
    ├── QueueFullError         task_queue_size tasks already wait
    ├── TaskNotFoundError      an id this orchestrator never issued (also a KeyError)
    ├── GroupNotFoundError     a group name no task was submitted with (also a KeyError)
    ├── PlanError              a plan rejected before anything was queued (also a ValueError)
    ├── ScheduleError          a bad run_at, delay, cron expression or schedule (also a ValueError)
    ├── JournalError           the journal cannot record a task (a full or failing disk); nothing queued
    ├── OrchestratorClosedError  submit after shutdown (also a RuntimeError, as the stdlib's executors raise)
    │   └── OrchestratorFailedError  submit after the supervisor failed (a bug of ours, logged CRITICAL)
    └── TaskFailedError        a task ended without a result (raised by `TaskResult.raise_for_error`)
        ├── TaskTimeoutError   it ran past its timeout (also a TimeoutError)
        └── WorkerCrashedError its worker died (also concurrent.futures.process.BrokenProcessPool)
            ├── MemoryLimitError   ... killed over max_memory_mb
            └── WorkerInitError    ... its worker initializer raised

A task that fails is not an exception of the API: its `TaskResult` says so, with a `TaskError`
whose ``kind`` tells timeout from crash from exception. `TaskResult.raise_for_error` and an
executor's futures turn it into one of the exceptions above (a cancelled task into
`concurrent.futures.CancelledError`).
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from typing import Any


class OrchestratorError(Exception):
    """Base of every error the orchestrator's API raises."""


class ConfigError(OrchestratorError, ValueError):
    """An `OrchestratorConfig` (or override) that does not validate; ``__cause__`` has the details."""


class InvalidTaskError(OrchestratorError, ValueError):
    """A task spec rejected at submit, before anything was queued; the message names the field."""


class UnknownTaskTypeError(OrchestratorError, ValueError):
    """A task whose type is neither built in nor registered through ``handlers``."""


class ScheduleError(OrchestratorError, ValueError):
    """A delayed or recurring task rejected before anything was queued; the message names the argument."""


class JournalError(OrchestratorError):
    """The journal could not record a submitted task (a full or failing disk): nothing was queued.

    Tasks accepted before go on running, and their results stay readable in memory.
    """


class QueueFullError(OrchestratorError):
    """`submit_task` found ``task_queue_size`` tasks already queued; nothing was queued."""


class TaskNotFoundError(OrchestratorError, KeyError):
    """A task id that this orchestrator never issued."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not found"


class GroupNotFoundError(OrchestratorError, KeyError):
    """A group name no task was ever submitted with."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "group not found"


class OrchestratorClosedError(OrchestratorError, RuntimeError):
    """The orchestrator was shut down (or is shutting down) and takes no new tasks."""


class OrchestratorFailedError(OrchestratorClosedError):
    """The orchestrator's supervisor failed, by a fault of the orchestrator's own, and takes no new
    tasks. The message says why; the CRITICAL log record has the traceback. With a journal every
    open task stays recoverable: a new orchestrator on the same journal runs them again."""


class TaskFailedError(OrchestratorError):
    """A task ended without a result; ``result`` is its `TaskResult` (``result.error`` says why).

    Raised by `TaskResult.raise_for_error`, and by an executor's future for a failure that is not
    its function's own exception (a failed dependency, a result that could not be decoded...).
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        # The task's `TaskResult` (typed loosely: the models import this module).
        self.result = result

    @property
    def kind(self) -> str | None:
        """The `TaskError.kind` of the failure (None when there is no result)."""
        error = getattr(self.result, "error", None)
        return getattr(error, "kind", None)


class TaskTimeoutError(TaskFailedError, TimeoutError):
    """The task ran past its timeout (``timeout``, ``default_task_timeout`` or ``max_cpu_seconds``)."""


class WorkerCrashedError(TaskFailedError, BrokenProcessPool):
    """The worker running the task died (a segfault, ``os._exit``, a kill).

    A `concurrent.futures.process.BrokenProcessPool`, so ``except BrokenProcessPool`` keeps
    working; unlike the stdlib's pool, the executor is not broken and the next submit runs.
    ``exitcode`` is the worker's exit code (negative: killed by that signal), when known.
    """

    def __init__(self, message: str, result: Any = None, exitcode: int | None = None) -> None:
        super().__init__(message, result)
        self.exitcode = exitcode


class MemoryLimitError(WorkerCrashedError):
    """The task's worker went over ``max_memory_mb`` and was killed (or hit its own cap)."""


class WorkerInitError(WorkerCrashedError):
    """A worker initializer raised: the task did not run.

    An executor whose ``initializer`` raised is broken, as the stdlib's: its pending futures fail
    with this error and later submits raise it.
    """
