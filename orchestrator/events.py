"""The event bus: every callback runs on one event thread, in order, never on the supervisor's.

The supervisor posts deliveries and returns at once, so a slow callback delays only the callbacks
queued behind it, never scheduling. Back-pressure: progress reports coalesce, so while a task's
latest queued item is an undelivered progress report, a newer report replaces it instead of
queueing behind it. Partial results beyond `MAX_PENDING_PARTIALS` undelivered ones are dropped for
callbacks (and counted); everything else (started, final, worker events) is bounded by the number
of tasks and workers.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from orchestrator.logs import TaskRef, task_extra
from orchestrator.models import EVENT_NAMES

logger = logging.getLogger(__name__)

# Enough for any reasonable burst; past it a slow partial-result callback must lose data or the
# host must grow without bound, and losing callback deliveries is the lesser harm.
MAX_PENDING_PARTIALS: Final = 10_000

Callback = Callable[[Any], object]


class _Delivery:
    __slots__ = ("args", "coalescible", "deliver", "partial", "task_id")

    def __init__(
        self,
        task_id: str | None,
        deliver: Callable[..., None],
        args: tuple[Any, ...],
        coalescible: bool,
        partial: bool,
    ) -> None:
        self.task_id = task_id
        self.deliver = deliver
        self.args = args
        self.coalescible = coalescible
        self.partial = partial


class EventBus:
    """Subscriptions by event name, and the thread that runs deliveries in FIFO order."""

    def __init__(self, name: str) -> None:
        self._listeners: dict[str, tuple[Callback, ...]] = {}
        self._queue: deque[_Delivery] = deque()
        self._last_of_task: dict[str, _Delivery] = {}
        self._pending_partials = 0
        self._dropped = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"orch-events-{name}", daemon=True)

    def start(self) -> None:
        """Start delivering; deliveries posted before this wait for it."""
        if not self._thread.is_alive() and not self._closing:
            self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        """The thread every callback runs on."""
        return self._thread

    @property
    def dropped(self) -> int:
        """Partial-result deliveries dropped because callbacks fell too far behind."""
        return self._dropped

    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        """Subscribe ``callback`` to ``event``; returns a function that unsubscribes it."""
        if event not in EVENT_NAMES:
            raise ValueError(f"unknown event {event!r}; events are: {', '.join(sorted(EVENT_NAMES))}")
        if not callable(callback):
            raise TypeError(f"callback for {event!r} must be callable, not {type(callback).__name__}")
        with self._cond:
            self._listeners[event] = (*self._listeners.get(event, ()), callback)

        def unsubscribe() -> None:
            with self._cond:
                current = list(self._listeners.get(event, ()))
                if callback in current:
                    current.remove(callback)
                    self._listeners[event] = tuple(current)

        return unsubscribe

    def listeners(self, event: str) -> tuple[Callback, ...]:
        """The callbacks subscribed to ``event`` now (an immutable snapshot)."""
        return self._listeners.get(event, ())

    def post(
        self,
        task_id: str | None,
        deliver: Callable[..., None],
        *args: Any,
        coalescible: bool = False,
        partial: bool = False,
    ) -> None:
        """Queue ``deliver(*args)`` for the event thread; never blocks on callbacks."""
        with self._cond:
            if task_id is not None and coalescible:
                last = self._last_of_task.get(task_id)
                if last is not None and last.coalescible:
                    last.args = args
                    return
            if partial:
                if self._pending_partials >= MAX_PENDING_PARTIALS:
                    self._dropped += 1
                    return
                self._pending_partials += 1
            delivery = _Delivery(task_id, deliver, args, coalescible, partial)
            self._queue.append(delivery)
            if task_id is not None:
                self._last_of_task[task_id] = delivery
            self._cond.notify()

    def close(self, wait: bool = True) -> None:
        """Deliver what is queued, then stop the thread; ``wait`` joins it (never from itself)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if wait and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                delivery = self._queue.popleft()
                if delivery.task_id is not None and self._last_of_task.get(delivery.task_id) is delivery:
                    del self._last_of_task[delivery.task_id]
                if delivery.partial:
                    self._pending_partials -= 1
            try:
                delivery.deliver(*delivery.args)
            except Exception:
                logger.exception("event delivery %r failed", delivery.deliver)
            # Not kept while the thread waits: it holds the event's values (a function's result).
            del delivery


def call_each(callbacks: tuple[Callback, ...], value: Any, what: str, about: TaskRef | None = None) -> None:
    """Call every callback with ``value``; one that raises is logged (with the task ``about``
    when the value concerns one) and the rest still run."""
    for callback in callbacks:
        try:
            callback(value)
        except Exception:
            extra = task_extra(*about) if about is not None else None
            logger.exception("callback %r for %s raised; ignored", callback, what, extra=extra)
