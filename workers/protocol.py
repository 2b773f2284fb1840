"""Wire messages between the host and its workers: msgpack frames on a multiprocessing pipe.

Both sides share this module, with `workers.payload` (user data), `workers.framing` (frames on a
pipe) and `workers.shm` (shared memory). Each message is a slotted dataclass; on the wire it is
a msgpack array ``[tag, field, ...]`` framed by ``Connection.send_bytes``. User data (a task's
config, a partial or final result) travels as an already-packed ``bytes`` field, so a result the
host cannot decode is reported against its task as a ``serialization`` error instead of breaking
the pipe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, Final

import msgpack

from workers.framing import MAX_FRAME_BYTES as MAX_FRAME_BYTES
from workers.framing import FrameReader as FrameReader
from workers.framing import ProtocolError as ProtocolError
from workers.payload import MAX_PAYLOAD_DEPTH as MAX_PAYLOAD_DEPTH
from workers.payload import PayloadError as PayloadError
from workers.payload import check_payload as check_payload
from workers.payload import pack_payload as pack_payload
from workers.payload import unpack_payload as unpack_payload

PROTOCOL_VERSION: Final = 3


@dataclass(slots=True)
class RunTask:
    """Host -> worker: run one task.

    ``deps`` packs ``[results, errors]``: dependency id -> result data for those that completed,
    and id -> TaskError fields for failed ones (when the task runs despite failures).
    """

    TAG: ClassVar[int] = 1
    task_id: str
    task_type: str
    handler: str
    description: str
    config: bytes
    deps: bytes
    attempt: int
    group: str | None = None
    # False once the host knows the worker runs one task at a time: it then counts a task as
    # started when those sent before it have ended, and needs no `TaskStarted` (one message less
    # per task). A `Revoke` that comes too late is still answered with one.
    report_start: bool = True
    # This worker's count of tasks sent to it, this one included: a `Revoke` names it.
    seq: int = 0
    # A ``"module:function"`` the worker calls once, with no arguments, before its first task
    # that names it (``OrchestratorConfig.worker_init``); empty for none.
    init: str = ""


@dataclass(slots=True)
class StopTask:
    """Host -> worker: raise the stop exception inside this task's handler (cancel or timeout)."""

    TAG: ClassVar[int] = 2
    task_id: str
    reason: str


@dataclass(slots=True)
class Revoke:
    """Host -> worker: give this task back if it has not started (another worker is free).

    ``seq`` is the task's `RunTask.seq`: the worker may not have read that RunTask yet, and
    knows by the number whether it has taken it.
    """

    TAG: ClassVar[int] = 4
    task_id: str
    seq: int


@dataclass(slots=True)
class Shutdown:
    """Host -> worker: finish and exit."""

    TAG: ClassVar[int] = 3


@dataclass(slots=True)
class Reply:
    """Host -> worker: the answer to a `Call`; ``error`` names an exception class, or is empty."""

    TAG: ClassVar[int] = 5
    call_id: int
    error: str
    message: str
    value: bytes


@dataclass(slots=True)
class Deliver:
    """Host -> worker: a published message for one of the worker's subscriptions.

    ``message_id`` is non-zero when ``data`` refers to shared-memory blocks: the worker copies
    them out and answers `Received` so that the host can unlink them.
    """

    TAG: ClassVar[int] = 6
    sub_id: int
    topic: str
    data: bytes
    sender: str | None
    message_id: int


@dataclass(slots=True)
class Measure:
    """Host -> worker: report your memory and CPU time (a node the host cannot measure itself)."""

    TAG: ClassVar[int] = 7


@dataclass(slots=True)
class Hello:
    """Worker -> host: the worker is up and reads its pipe."""

    TAG: ClassVar[int] = 10
    worker_id: int
    pid: int
    version: int


@dataclass(slots=True)
class TaskStarted:
    """Worker -> host: the handler is about to be called (a timeout's clock starts here), when the
    RunTask asked for it; also the answer to a `Revoke` that came after the task was taken.

    ``concurrent`` is True for an ``async def`` handler: such a worker can take more tasks at once.
    """

    TAG: ClassVar[int] = 11
    task_id: str
    concurrent: bool


@dataclass(slots=True)
class TaskProgress:
    """Worker -> host: ``ctx.progress(completed, total, message)``."""

    TAG: ClassVar[int] = 12
    task_id: str
    completed: float
    total: float | None
    message: str


@dataclass(slots=True)
class TaskPartial:
    """Worker -> host: ``ctx.emit(data)``, a streamed partial result (packed)."""

    TAG: ClassVar[int] = 13
    task_id: str
    data: bytes


@dataclass(slots=True)
class TaskDone:
    """Worker -> host: the handler returned; ``data`` is its packed return value, ``run_s`` how
    long the handler ran by the worker's clock (the host sizes prefetch by it)."""

    TAG: ClassVar[int] = 14
    task_id: str
    data: bytes
    run_s: float = 0.0


@dataclass(slots=True)
class Revoked:
    """Worker -> host: the task was given back unstarted, as asked."""

    TAG: ClassVar[int] = 16
    task_id: str


@dataclass(slots=True)
class TaskFailed:
    """Worker -> host: the task ended without a result; ``kind`` says why."""

    TAG: ClassVar[int] = 15
    task_id: str
    kind: str
    message: str
    traceback: str
    exception_type: str
    retry_after: float | None = None
    # A ``call`` task's exception, pickled (see `workers.calls`); empty for other tasks.
    detail: bytes = b""


@dataclass(slots=True)
class Publish:
    """Worker -> host: ``ctx.publish(topic, data)``."""

    TAG: ClassVar[int] = 17
    task_id: str
    topic: str
    data: bytes


@dataclass(slots=True)
class Call:
    """Worker -> host: a request on behalf of a task, answered by a `Reply` (none when ``call_id``
    is 0). ``op`` is ``subscribe``, ``unsubscribe``, ``submit``, ``wait`` or ``forget`` (a wait the
    handler stopped waiting for); ``args`` is packed."""

    TAG: ClassVar[int] = 18
    task_id: str
    call_id: int
    op: str
    args: bytes


@dataclass(slots=True)
class Waiting:
    """Worker -> host: the task blocks in a wait or a receive (True), or goes on (False)."""

    TAG: ClassVar[int] = 19
    task_id: str
    waiting: bool


@dataclass(slots=True)
class Received:
    """Worker -> host: a subscription copied out the blocks of a delivered message."""

    TAG: ClassVar[int] = 20
    sub_id: int
    message_id: int


@dataclass(slots=True)
class Usage:
    """Worker -> host: RSS of the worker and its children (bytes), and its CPU seconds so far."""

    TAG: ClassVar[int] = 21
    rss: int
    cpu: float


@dataclass(slots=True)
class Log:
    """Worker -> host: a `logging` record emitted in the worker, formatted there; ``task_id`` is
    the task it ran in (None outside a task), ``created`` its time (epoch seconds)."""

    TAG: ClassVar[int] = 22
    task_id: str | None
    logger: str
    level: int
    message: str
    exc_text: str
    created: float


Message = (
    RunTask
    | StopTask
    | Revoke
    | Shutdown
    | Hello
    | TaskStarted
    | TaskProgress
    | TaskPartial
    | TaskDone
    | Revoked
    | TaskFailed
    | Reply
    | Deliver
    | Publish
    | Call
    | Waiting
    | Received
    | Measure
    | Usage
    | Log
)

_CLASSES: Final[dict[int, type[Any]]] = {
    cls.TAG: cls
    for cls in (
        RunTask,
        StopTask,
        Revoke,
        Revoked,
        Shutdown,
        Hello,
        TaskStarted,
        TaskProgress,
        TaskPartial,
        TaskDone,
        TaskFailed,
        Reply,
        Deliver,
        Publish,
        Call,
        Waiting,
        Received,
        Measure,
        Usage,
        Log,
    )
}
_FIELD_NAMES: Final[dict[type[Any], tuple[str, ...]]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in _CLASSES.values()
}
_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def encode(msg: Message) -> bytes:
    """Serialise one message for ``Connection.send_bytes``."""
    cls = type(msg)
    return _packb([cls.TAG, *[getattr(msg, name) for name in _FIELD_NAMES[cls]]])  # type: ignore[no-any-return]


def decode(frame: bytes) -> Message:
    """Parse one frame and check every field (types, ranges); raise `ProtocolError` when it is not a
    valid message of this protocol. The peer may be another machine's process: nothing is trusted."""
    try:
        tag, *values = msgpack.unpackb(frame, raw=False)
        cls = _CLASSES[tag]
    except Exception as exc:
        raise ProtocolError(f"undecodable frame of {len(frame)} bytes: {exc!r}") from exc
    _check_fields(cls, values)
    msg = cls(*values)
    check = _MESSAGE_CHECKS.get(cls)
    if check is not None:
        check(msg)
    return msg  # type: ignore[no-any-return]


# How a field's annotation travels: the exact types msgpack gives back for it (a float may come
# as an int; a bool is never taken for an int).
_WIRE_TYPES: Final[dict[str, tuple[type[Any], ...]]] = {
    "str": (str,),
    "bytes": (bytes,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "None": (type(None),),
}
# Fields that count, measure or number something: never negative.
_NON_NEGATIVE: Final = frozenset(
    {"worker_id", "pid", "version", "attempt", "seq", "call_id", "sub_id", "message_id", "rss", "cpu"}
    | {"retry_after", "completed", "total", "level", "created", "run_s"}
)
# The failures a worker may report for a task; the rest (crash, memory kill...) only the host decides.
WORKER_FAILURE_KINDS: Final = frozenset(
    {"exception", "timeout", "cancelled", "serialization", "rate_limit", "memory_limit", "worker_init"}
)

_Schema = tuple[int, tuple[tuple[str, tuple[type[Any], ...], bool], ...]]


def _schema(cls: type[Any]) -> _Schema:
    """How many fields ``cls`` requires, and each field's name, wire types and sign rule."""
    required = sum(1 for f in fields(cls) if f.default is MISSING)
    checks = []
    for f in fields(cls):
        kinds = tuple(kind for part in str(f.type).split(" | ") for kind in _WIRE_TYPES[part])
        checks.append((f.name, kinds, f.name in _NON_NEGATIVE))
    return required, tuple(checks)


def _check_fields(cls: type[Any], values: list[Any]) -> None:
    required, schema = _SCHEMAS[cls]
    if not required <= len(values) <= len(schema):
        raise ProtocolError(
            f"{cls.__name__} carries {len(values)} fields; it has {required} to {len(schema)}"
        )
    for value, (name, kinds, non_negative) in zip(values, schema, strict=False):
        kind = type(value)
        if kind not in kinds:
            expected = " or ".join(k.__name__ for k in kinds)
            raise ProtocolError(f"{cls.__name__}.{name} is a {kind.__name__}; expected {expected}")
        if kind is float and not math.isfinite(value):
            raise ProtocolError(f"{cls.__name__}.{name} is {value}; expected a finite number")
        if non_negative and value is not None and value < 0:
            raise ProtocolError(f"{cls.__name__}.{name} is {value}; expected a number >= 0")


def _check_hello(msg: Hello) -> None:
    if msg.version != PROTOCOL_VERSION or msg.pid == 0:
        raise ProtocolError(
            f"Hello from pid {msg.pid} speaks protocol version {msg.version}; this side speaks "
            f"{PROTOCOL_VERSION} (a worker of another release?)"
        )


def _check_failure(msg: TaskFailed) -> None:
    if msg.kind not in WORKER_FAILURE_KINDS:
        known = ", ".join(sorted(WORKER_FAILURE_KINDS))
        raise ProtocolError(f"TaskFailed.kind is {msg.kind[:40]!r}; a worker reports {known}")


_SCHEMAS: Final[dict[type[Any], _Schema]] = {cls: _schema(cls) for cls in _CLASSES.values()}
_MESSAGE_CHECKS: Final[dict[type[Any], Callable[[Any], None]]] = {
    Hello: _check_hello,
    TaskFailed: _check_failure,
}
