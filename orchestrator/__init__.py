"""parallel-orchestrator: an embeddable, brokerless multiprocess task orchestrator.

The public API is exactly ``__all__``. Names are imported lazily (PEP 562), so that a light
consumer such as the ``orch`` command line pays only for what it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.config import OrchestratorConfig, TaskSpec
    from orchestrator.core import ParallelOrchestrator
    from orchestrator.errors import (
        ConfigError,
        GroupNotFoundError,
        InvalidTaskError,
        JournalError,
        MemoryLimitError,
        OrchestratorClosedError,
        OrchestratorError,
        OrchestratorFailedError,
        QueueFullError,
        ScheduleError,
        TaskFailedError,
        TaskNotFoundError,
        TaskTimeoutError,
        UnknownTaskTypeError,
        WorkerCrashedError,
        WorkerInitError,
    )
    from orchestrator.executor import TaskExecutor, TaskFuture
    from orchestrator.logs import JsonLogFormatter, TextLogFormatter
    from orchestrator.models import (
        CollectionCompletedEvent,
        Event,
        GroupStatus,
        Message,
        OrchestratorStatus,
        Progress,
        ScheduleFiredEvent,
        ScheduleInfo,
        ScheduleMissedEvent,
        TaskError,
        TaskFinishedEvent,
        TaskPartialEvent,
        TaskProgressEvent,
        TaskQueuedEvent,
        TaskResult,
        TaskStartedEvent,
        TaskStatus,
        WorkerExitedEvent,
        WorkerInfo,
        WorkerSpawnedEvent,
    )
    from orchestrator.plan_handle import PlanHandle
    from orchestrator.plans import PlanError
    from orchestrator.pool_executor import ProcessPoolExecutor
    from orchestrator.track import track

_EXPORTS: dict[str, str] = {
    "ParallelOrchestrator": "orchestrator.core",
    "OrchestratorConfig": "orchestrator.config",
    "TaskSpec": "orchestrator.config",
    "TaskResult": "orchestrator.models",
    "TaskError": "orchestrator.models",
    "TaskStatus": "orchestrator.models",
    "Progress": "orchestrator.models",
    "WorkerInfo": "orchestrator.models",
    "OrchestratorStatus": "orchestrator.models",
    "Event": "orchestrator.models",
    "TaskQueuedEvent": "orchestrator.models",
    "TaskStartedEvent": "orchestrator.models",
    "TaskProgressEvent": "orchestrator.models",
    "TaskPartialEvent": "orchestrator.models",
    "TaskFinishedEvent": "orchestrator.models",
    "WorkerSpawnedEvent": "orchestrator.models",
    "WorkerExitedEvent": "orchestrator.models",
    "OrchestratorError": "orchestrator.errors",
    "ConfigError": "orchestrator.errors",
    "InvalidTaskError": "orchestrator.errors",
    "JournalError": "orchestrator.errors",
    "QueueFullError": "orchestrator.errors",
    "TaskNotFoundError": "orchestrator.errors",
    "UnknownTaskTypeError": "orchestrator.errors",
    "OrchestratorClosedError": "orchestrator.errors",
    "OrchestratorFailedError": "orchestrator.errors",
    "GroupNotFoundError": "orchestrator.errors",
    "PlanError": "orchestrator.plans",
    "PlanHandle": "orchestrator.plan_handle",
    "GroupStatus": "orchestrator.models",
    "CollectionCompletedEvent": "orchestrator.models",
    "ScheduleError": "orchestrator.errors",
    "Message": "orchestrator.models",
    "ScheduleInfo": "orchestrator.models",
    "ScheduleFiredEvent": "orchestrator.models",
    "ScheduleMissedEvent": "orchestrator.models",
    "JsonLogFormatter": "orchestrator.logs",
    "TaskFailedError": "orchestrator.errors",
    "TaskTimeoutError": "orchestrator.errors",
    "WorkerCrashedError": "orchestrator.errors",
    "MemoryLimitError": "orchestrator.errors",
    "WorkerInitError": "orchestrator.errors",
    "ProcessPoolExecutor": "orchestrator.pool_executor",
    "TaskExecutor": "orchestrator.executor",
    "TaskFuture": "orchestrator.executor",
    "TextLogFormatter": "orchestrator.logs",
    "track": "orchestrator.track",
}

__all__ = [
    "CollectionCompletedEvent",
    "ConfigError",
    "Event",
    "GroupNotFoundError",
    "GroupStatus",
    "InvalidTaskError",
    "JournalError",
    "JsonLogFormatter",
    "MemoryLimitError",
    "Message",
    "OrchestratorClosedError",
    "OrchestratorConfig",
    "OrchestratorError",
    "OrchestratorFailedError",
    "OrchestratorStatus",
    "ParallelOrchestrator",
    "PlanError",
    "PlanHandle",
    "ProcessPoolExecutor",
    "Progress",
    "QueueFullError",
    "ScheduleError",
    "ScheduleFiredEvent",
    "ScheduleInfo",
    "ScheduleMissedEvent",
    "TaskError",
    "TaskExecutor",
    "TaskFailedError",
    "TaskFinishedEvent",
    "TaskFuture",
    "TaskNotFoundError",
    "TaskPartialEvent",
    "TaskProgressEvent",
    "TaskQueuedEvent",
    "TaskResult",
    "TaskSpec",
    "TaskStartedEvent",
    "TaskStatus",
    "TaskTimeoutError",
    "TextLogFormatter",
    "UnknownTaskTypeError",
    "WorkerCrashedError",
    "WorkerExitedEvent",
    "WorkerInfo",
    "WorkerInitError",
    "WorkerSpawnedEvent",
    "track",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
