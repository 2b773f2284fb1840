"""The one door into the supervisor thread: commands and submitted tasks, queued in order, and the
pipe that wakes the thread's select for them (as CPython's ``_ThreadWakeup`` and trio's
``EntryQueue``). Everything else in this package is touched by the supervisor thread only."""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
from collections import deque
from collections.abc import Callable, Iterable

from orchestrator.errors import OrchestratorClosedError
from orchestrator.supervisor.record import TaskRecord

Command = Callable[[], None] | TaskRecord


class CommandQueue:
    """Commands (callables) and submitted tasks (records, queued as they are: a closure per submit
    would be four more objects for the GC to count, and the GC sets the submit's p99)."""

    def __init__(
        self, selector: selectors.BaseSelector, closed: Callable[[], OrchestratorClosedError]
    ) -> None:
        self._items: deque[Command] = deque()
        self._lock = threading.Lock()
        self._closed = closed
        self._exited = False
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        self._wakeup_pending = False
        # Its key's data is None: that is how the loop tells a wake-up from a worker's pipe.
        selector.register(self._wakeup_r, selectors.EVENT_READ, None)

    def put(self, items: Iterable[Command]) -> None:
        """Queue items (any thread) and wake the loop if it may be asleep.

        Raises:
            OrchestratorClosedError: the loop has exited (the error says why).
        """
        with self._lock:
            if self._exited:
                raise self._closed()
            self._items.extend(items)
            # Under the lock: `close` closes the pipe under it too.
            if not self._wakeup_pending:
                self._wakeup_pending = True
                with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
                    os.write(self._wakeup_w, b"\0")

    def expect_wakeup(self) -> None:
        """From here on, a put must wake the loop: one put while it worked is seen by its next check
        of `pending`, so a burst of submits costs a wake-up write per idle spell, not per loop
        (each write hands the GIL over)."""
        self._wakeup_pending = False

    @property
    def pending(self) -> bool:
        """Whether items wait to be taken."""
        return bool(self._items)

    def take(self, woken: bool) -> Iterable[Command]:
        """The waiting items, oldest first, including those queued while they are taken."""
        # Few bytes wait in the pipe (`put` writes only while no wake-up is pending); one written
        # after the select returned wakes the next select, which is harmless.
        if woken:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wakeup_r, 4096)
        while self._items:
            yield self._items.popleft()

    def shut(self) -> list[Command]:
        """Take no more items; return those still waiting."""
        with self._lock:
            self._exited = True
            leftover = list(self._items)
            self._items.clear()
        return leftover

    def close(self) -> None:
        """Close the wake-up pipe (after `shut`, once the selector is closed)."""
        with self._lock:
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
