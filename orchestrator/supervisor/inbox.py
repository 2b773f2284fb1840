"""`Inbox`: reads what workers send, and hands each message to the collaborator that handles its type."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.backends.base import WorkerHandle
from orchestrator.supervisor.fleet import Fleet
from workers import protocol

logger = logging.getLogger(__name__)

# Each message type's handler: called with the worker that sent it and the message.
Handlers = Mapping[type[Any], Callable[[WorkerHandle, Any], None]]


class Inbox:
    """Frames from a worker's pipe, decoded and handled in order.

    A frame that is not a valid message, or a message whose handling fails, is that worker's
    fault: it is killed (`expel`) and its tasks end as crashed; the supervisor goes on. A message
    type the host does not take from workers (one it sends them) is ignored.
    """

    def __init__(self, fleet: Fleet, handlers: Handlers) -> None:
        self._fleet = fleet
        self._handlers = handlers

    def drain(self, worker: WorkerHandle, until_empty: bool = False) -> None:
        """Handle what the worker's pipe holds: one read when the selector found it readable, or
        everything left (``until_empty``, a dead worker's last words; a pipe another process still
        holds open may then be empty without EOF, so it is polled before each read)."""
        while True:
            try:
                if until_empty and not worker.conn.poll(0):
                    return
                frames = worker.frames.read()
            except (EOFError, OSError):
                self._fleet.connection_lost(worker)
                return
            except protocol.ProtocolError as exc:
                if worker.violation is None:
                    self.expel(worker, exc)
                self._fleet.connection_lost(worker)  # its framing is lost: nothing more can be read
                return
            if worker.violation is None:  # an expelled worker's frames are read only to see its end
                self._handle_frames(worker, frames)
            if not until_empty:
                return

    def _handle_frames(self, worker: WorkerHandle, frames: list[bytes]) -> None:
        for frame in frames:
            try:
                msg = protocol.decode(frame)
                handler = self._handlers.get(type(msg))
                if handler is not None:
                    handler(worker, msg)
            except Exception as exc:  # noqa: BLE001 - contained to the worker that sent it
                self.expel(worker, exc)
                return

    def expel(self, worker: WorkerHandle, exc: Exception) -> None:
        """Kill a worker that broke the protocol; nothing more it sends is read."""
        worker.violation = str(exc)[:500] or type(exc).__name__
        logger.error(
            "worker %d (pid %s) broke the protocol: %s; killing it",
            worker.worker_id,
            worker.pid,
            worker.violation,
            exc_info=not isinstance(exc, protocol.ProtocolError),  # ours to debug: its traceback
        )
        self._fleet.kill(worker, "protocol_violation")
