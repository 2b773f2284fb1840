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
    └── OrchestratorClosedError  submit after shutdown
        └── OrchestratorFailedError  submit after the supervisor failed (a bug of ours, logged CRITICAL)

A task that fails is not an exception of the API: its `TaskResult` says so, with a `TaskError`
whose ``kind`` tells timeout from crash from exception.
"""

from __future__ import annotations


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


class OrchestratorClosedError(OrchestratorError):
    """The orchestrator was shut down (or is shutting down) and takes no new tasks."""


class OrchestratorFailedError(OrchestratorClosedError):
    """The orchestrator's supervisor failed, by a fault of the orchestrator's own, and takes no new
    tasks. The message says why; the CRITICAL log record has the traceback. With a journal every
    open task stays recoverable: a new orchestrator on the same journal runs them again."""
