"""The worker side of parallel-orchestrator: what runs inside a worker process.

Handlers receive a `TaskContext`; a stop request raises `TaskCancelled` (or its subclass
`TaskTimeout`) inside them. Nothing here imports the host side, so a worker starts light.
"""

from workers.context import TaskContext as TaskContext
from workers.context import current_context as current_context
from workers.errors import CapacityError as CapacityError
from workers.errors import QueueFullError as QueueFullError
from workers.errors import RateLimitError as RateLimitError
from workers.errors import TaskCancelled as TaskCancelled
from workers.errors import TaskTimeout as TaskTimeout
from workers.errors import UnknownTaskTypeError as UnknownTaskTypeError
from workers.messaging import AsyncSubscription as AsyncSubscription
from workers.messaging import Subscription as Subscription
from workers.values import ChildResult as ChildResult
from workers.values import Message as Message
from workers.values import TaskError as TaskError

__all__ = [
    "AsyncSubscription",
    "CapacityError",
    "ChildResult",
    "Message",
    "QueueFullError",
    "RateLimitError",
    "Subscription",
    "TaskCancelled",
    "TaskContext",
    "TaskError",
    "TaskTimeout",
    "UnknownTaskTypeError",
    "current_context",
]
