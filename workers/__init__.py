"""The worker side of parallel-orchestrator: what runs inside a worker process.

Handlers receive a `TaskContext`; a stop request raises `TaskCancelled` (or its subclass
`TaskTimeout`) inside them. Nothing here imports the host side, so a worker starts light.
"""

from workers.context import CapacityError as CapacityError
from workers.context import RateLimitError as RateLimitError
from workers.context import TaskCancelled as TaskCancelled
from workers.context import TaskContext as TaskContext
from workers.context import TaskError as TaskError
from workers.context import TaskTimeout as TaskTimeout
from workers.messaging import AsyncSubscription as AsyncSubscription
from workers.messaging import ChildResult as ChildResult
from workers.messaging import Message as Message
from workers.messaging import QueueFullError as QueueFullError
from workers.messaging import Subscription as Subscription
from workers.messaging import UnknownTaskTypeError as UnknownTaskTypeError

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
]
