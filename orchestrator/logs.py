"""Log records about tasks, and the handler ``enable_logging=True`` installs.

Every record the library emits about a task carries ``task_id``, ``task_type`` and
``worker_pid`` as attributes (``worker_pid`` is None before the task reached a worker), so any
handler can filter or index by them. A task's lifecycle (queued, started, retried, final) goes to
the ``orchestrator.tasks`` logger: at DEBUG normally, so the hot path logs nothing a default
setup shows, and at INFO (WARNING for errors) with ``log_tasks=True``.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any, Final, Literal

from workers import protocol
from workers.logs import cut_text

LogFormat = Literal["text", "json"]

# A task's (task_id, task_type, worker_pid), kept as a tuple until a record needs it.
TaskRef = tuple[str, str, int | None]
task_logger: Final = logging.getLogger("orchestrator.tasks")
# How far ahead of the host's clock a worker's record may be dated.
_CLOCK_SKEW: Final = 86_400.0
# Where the records that workers' code logs are re-emitted (each keeps its own logger's name).
worker_record_logger: Final = logging.getLogger("orchestrator.task")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def task_extra(task_id: str, task_type: str, worker_pid: int | None) -> dict[str, Any]:
    """The ``extra=`` of a record about one task."""
    return {"task_id": task_id, "task_type": task_type, "worker_pid": worker_pid}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in record.__dict__.items() if key not in _STANDARD}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, every ``extra=``
    attribute (``task_id``, ``task_type``, ``worker_pid`` on task records) and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # a worker's record: its traceback came as text
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class TextLogFormatter(logging.Formatter):
    """``time level logger: message``, then ``key=value`` for each ``extra=`` attribute."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if not extras:
            return text
        first, newline, rest = text.partition("\n")
        fields = " ".join(f"{key}={value}" for key, value in extras.items())
        return f"{first} [{fields}]{newline}{rest}"


def reemit(msg: protocol.Log, task_type: str | None, worker_pid: int | None) -> None:
    """A record a worker's code logged, handled by `worker_record_logger` with the worker's
    logger name, level, message, traceback text and time, plus ``task_id``, ``task_type`` and
    ``worker_pid`` attributes (``task_id`` None: logged outside a task)."""
    if not worker_record_logger.isEnabledFor(msg.level):
        return
    record = logging.LogRecord(msg.logger[:200], msg.level, "(worker)", 0, cut_text(msg.message), None, None)
    # A time no clock can show (a confused or lying worker) would break every formatter: now, then.
    created = msg.created if msg.created < time.time() + _CLOCK_SKEW else record.created
    record.created = created
    record.msecs = (created - int(created)) * 1000
    record.relativeCreated = (created - logging._startTime) * 1000  # type: ignore[attr-defined]
    record.exc_text = cut_text(msg.exc_text) or None
    record.process = worker_pid
    record.processName = "orchestrator-worker"
    record.__dict__.update(task_id=msg.task_id, task_type=task_type, worker_pid=worker_pid)
    worker_record_logger.handle(record)


def enable_logging(log_format: LogFormat) -> None:
    """Print the ``orchestrator`` loggers' records at INFO and above to stderr, in ``log_format``.

    One handler for the process: a second call replaces its format instead of adding another.
    """
    root = logging.getLogger("orchestrator")
    formatter = JsonLogFormatter() if log_format == "json" else TextLogFormatter()
    for handler in root.handlers:
        if getattr(handler, "_orchestrator", False):
            handler.setFormatter(formatter)
            return
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    handler._orchestrator = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
