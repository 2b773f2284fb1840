"""`LogForwarder`: a worker's `logging` records, sent to the host with the task they came from.

The host re-emits each through its own `logging` (see ``orchestrator.logs.reemit``). Records are
formatted here, so nothing but text crosses: a record whose arguments cannot be formatted is sent
as the text of its template and arguments instead. At most `MAX_RECORDS_PER_SECOND` go out per
second; the rest are counted, and one record says how many were dropped.
"""

from __future__ import annotations

import logging
import reprlib
import threading
import time
import traceback
from collections.abc import Callable
from typing import Final

from workers import protocol
from workers.context import current_context

MAX_RECORDS_PER_SECOND: Final = 1000
# Longer messages and tracebacks are cut: a record is news, not a payload.
MAX_TEXT: Final = 64 * 1024
DROPPED_LOGGER: Final = "workers.logs"


class LogForwarder(logging.Handler):
    """A handler on the worker's root logger that sends each record to the host."""

    def __init__(self, send: Callable[[protocol.Message], None], level: int) -> None:
        super().__init__(level)
        self._send = send
        self._window_start = time.monotonic()
        self._sent_in_window = 0
        self._dropped = 0
        # A record emitted while one is being formatted or sent (a __repr__ that logs) is dropped.
        self._inside = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        """Send ``record`` unless this second's share is spent (then count it)."""
        if getattr(self._inside, "active", False):
            return
        self._inside.active = True
        try:
            self._roll_window()
            if self._sent_in_window >= MAX_RECORDS_PER_SECOND:
                self._dropped += 1
                return
            self._sent_in_window += 1
            self._send(_log_message(record))
        finally:
            self._inside.active = False

    def flush(self) -> None:
        """Say how many records were dropped, if any."""
        context = current_context()
        self.task_ended(context.task_id if context is not None else None)

    def task_ended(self, task_id: str | None) -> None:
        """Say how many records were dropped, if any, as a record of the task that just ended."""
        with self.lock:  # type: ignore[union-attr]  # a Handler's lock exists once it is made
            self._report_dropped(task_id)

    def _roll_window(self) -> None:
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._sent_in_window = 0
            context = current_context()
            self._report_dropped(context.task_id if context is not None else None)

    def _report_dropped(self, task_id: str | None) -> None:
        if not self._dropped:
            return
        dropped, self._dropped = self._dropped, 0
        self._send(
            protocol.Log(
                task_id,
                DROPPED_LOGGER,
                logging.WARNING,
                f"{dropped:,} log records of this worker were dropped: it logged more than "
                f"{MAX_RECORDS_PER_SECOND:,} a second",
                "",
                time.time(),
            )
        )


def forward_logs(send: Callable[[protocol.Message], None], level: str) -> LogForwarder:
    """Make the root logger send records at ``level`` and above to the host, and nowhere else (a
    forked worker's copies of the host's handlers would print them a second time)."""
    forwarder = LogForwarder(send, logging.getLevelName(level))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(forwarder)
    root.setLevel(forwarder.level)
    return forwarder


def _log_message(record: logging.LogRecord) -> protocol.Log:
    context = current_context()
    return protocol.Log(
        context.task_id if context is not None else None,
        str(record.name),
        max(0, int(record.levelno)),
        cut_text(_message_of(record)),
        cut_text(_exception_text(record)),
        float(record.created),
    )


def _message_of(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as exc:  # noqa: BLE001 - a bad template or argument: send what there is
        return (
            f"{reprlib.repr(record.msg)} % {reprlib.repr(record.args)} "
            f"(could not be formatted: {type(exc).__name__}: {exc})"
        )


def _exception_text(record: logging.LogRecord) -> str:
    parts = []
    if record.exc_info and record.exc_info[1] is not None:
        try:
            parts.append("".join(traceback.format_exception(record.exc_info[1])).rstrip("\n"))
        except Exception as exc:  # noqa: BLE001 - an exception whose __str__ raises
            parts.append(f"{type(record.exc_info[1]).__name__} (its traceback failed: {exc!r})")
    elif record.exc_text:
        parts.append(str(record.exc_text))
    if record.stack_info:
        parts.append(str(record.stack_info))
    return "\n".join(parts)


def cut_text(text: str) -> str:
    """``text``, cut to `MAX_TEXT` characters with a note saying how many went."""
    if len(text) <= MAX_TEXT:
        return text
    return f"{text[:MAX_TEXT]}... ({len(text) - MAX_TEXT:,} characters cut)"
