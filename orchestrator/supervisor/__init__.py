"""The supervisor: the one thread that owns every task's and every worker's mutable state."""

from orchestrator.supervisor.record import TaskRecord as TaskRecord
from orchestrator.supervisor.supervisor import Supervisor as Supervisor

__all__ = ["Supervisor", "TaskRecord"]
