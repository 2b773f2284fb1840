"""Wire messages between the host and its workers: msgpack frames on a multiprocessing pipe.

This is the only module both sides share. Each message is a slotted dataclass; on the wire it is
a msgpack array ``[tag, field, ...]`` framed by ``Connection.send_bytes``. User data (a task's
config, a partial or final result) travels as an already-packed ``bytes`` field, so a result the
host cannot decode is reported against its task as a ``serialization`` error instead of breaking
the pipe.
"""

from __future__ import annotations

import math
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Final

import msgpack

from workers.shm import decode_extension, pack

if TYPE_CHECKING:
    from workers.shm import BlockReader, BlockWriter

PROTOCOL_VERSION: Final = 1


class ProtocolError(Exception):
    """A frame that is not a message of this protocol version."""


class PayloadError(ValueError):
    """User data that msgpack cannot carry (a set, an object, an integer beyond 64 bits...)."""


def pack_payload(
    value: Any,
    writer: BlockWriter | None = None,
    created: list[str] | None = None,
    lent: dict[int, msgpack.ExtType] | None = None,
) -> bytes:
    """Pack user data; raise `PayloadError` naming the offending type when msgpack cannot.

    With a ``writer``, large buffers go to shared-memory blocks (their names land in ``created``),
    except those in ``lent``: buffers the receiver's own blocks back, named back to it.
    """
    try:
        if writer is not None:
            return writer.pack(value, created, lent)
        return pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(
            f"not msgpack-serialisable: {exc}; use dicts with str keys, lists, str, bytes, "
            "int (64-bit), float, bool and None"
        ) from exc


# Deepest nesting of lists and maps a payload may have: msgpack's packer stops at 511, and a walk
# this deep (a frame per level) stays far from Python's recursion limit of 1,000 frames.
MAX_PAYLOAD_DEPTH: Final = 256


# Exact types that always travel: the common leaves, checked without a call.
_LEAVES: Final = frozenset({str, bytes, bytearray, memoryview, float, bool, type(None)})


def check_payload(value: Any, where: str = "config") -> None:
    """Raise `PayloadError` naming the first thing in ``value`` that cannot travel.

    A walk over the structure, never over the bytes: a 64 MiB buffer costs no more than a small one.
    Plain data passes a quick walk; anything else gets the walk that keeps the path for the message.
    Nesting deeper than `MAX_PAYLOAD_DEPTH` is refused (msgpack could not pack it either).
    """
    if not _plainly_fits(value, 0):
        _check_closely(value, where, 0)


def _plainly_fits(value: Any, depth: int) -> bool:
    """True for plain data that can travel (exact built-in types only); False means look closer."""
    kind = type(value)
    if kind in _LEAVES:
        return True
    if kind is int:
        return -(2**63) <= value < 2**64  # type: ignore[no-any-return]
    if depth >= MAX_PAYLOAD_DEPTH:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str and (type(key) is not int or not -(2**63) <= key < 2**64):
                return False
            if type(item) not in _LEAVES and not _plainly_fits(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:  # noqa: SIM110 - all(...) would add a generator's frame per level
            if type(item) not in _LEAVES and not _plainly_fits(item, depth + 1):
                return False
        return True
    return False


def _check_closely(value: Any, where: str, depth: int) -> None:
    kind = type(value)
    if kind in _LEAVES:
        return
    if kind is int:
        if not -(2**63) <= value < 2**64:
            raise PayloadError(f"not msgpack-serialisable: {where} is an integer beyond 64 bits")
        return
    if kind is dict or kind is list or kind is tuple:
        if depth >= MAX_PAYLOAD_DEPTH:
            raise PayloadError(
                f"not msgpack-serialisable: {where[:200]}... nests more than {MAX_PAYLOAD_DEPTH} levels deep"
            )
        if kind is dict:
            _check_map(value, where, depth)
        else:
            for index, item in enumerate(value):
                _check_closely(item, f"{where}[{index}]", depth + 1)
        return
    numpy = sys.modules.get("numpy")
    if numpy is not None and kind is numpy.ndarray and value.dtype.kind in "biufc":
        return
    raise PayloadError(f"not msgpack-serialisable: {where} is {_what(value)}")


def _check_map(value: dict[Any, Any], where: str, depth: int) -> None:
    for key, item in value.items():
        if type(key) is not str and type(key) is not int:
            raise PayloadError(f"not msgpack-serialisable: {where} has a key that is {_what(key)}")
        if type(key) is int and not -(2**63) <= key < 2**64:
            raise PayloadError(f"not msgpack-serialisable: {where} has an integer key beyond 64 bits")
        _check_closely(item, f"{where}[{key!r}]", depth + 1)


def _what(value: Any) -> str:
    """How a refused value is named: its type, and the plain type it subclasses, if one."""
    kind = type(value)
    plain = next((base for base in (*_LEAVES, int, dict, list, tuple) if isinstance(value, base)), None)
    if plain is not None:
        # A subclass can carry what the plain type cannot (msgpack.ExtType is a tuple: the
        # library's own shared-memory references).
        return f"a {kind.__name__}, a subclass of {plain.__name__}; use a plain {plain.__name__}"
    return (
        f"a {kind.__name__}; use dicts with str keys, lists, str, bytes, int (64-bit), float, bool, "
        "None and NumPy arrays"
    )


def unpack_payload(data: bytes, reader: BlockReader | None = None) -> Any:
    """Unpack user data packed by `pack_payload`; raise `PayloadError` when it cannot be."""
    try:
        if reader is not None:
            return reader.unpack(data)
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=decode_extension)
    except (TypeError, ValueError, OSError, msgpack.UnpackException) as exc:
        raise PayloadError(f"cannot be decoded: {exc}") from exc


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
    """Worker -> host: the handler returned; ``data`` is its packed return value."""

    TAG: ClassVar[int] = 14
    task_id: str
    data: bytes


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
    is 0). ``op`` is ``subscribe``, ``unsubscribe``, ``submit`` or ``wait``; ``args`` is packed."""

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
    | {"retry_after", "completed", "total"}
)
# The failures a worker may report for a task; the rest (crash, memory kill...) only the host decides.
WORKER_FAILURE_KINDS: Final = frozenset(
    {"exception", "timeout", "cancelled", "serialization", "rate_limit", "memory_limit"}
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


# `Connection.send_bytes` framing: a signed 32-bit big-endian length, or -1 then an unsigned 64-bit one.
_SHORT_HEADER: Final = struct.Struct("!i")
_LONG_HEADER: Final = struct.Struct("!Q")
_READ_SIZE: Final = 1 << 16
# The most one read asks for, however long the frame a peer announces: a header is the peer's word,
# and os.read allocates what it is asked for before anything arrives.
_MAX_READ: Final = 1 << 26
# The longest frame taken from a peer (a larger announced length is a protocol violation).
MAX_FRAME_BYTES: Final = 1 << 32


class FrameReader:
    """Every frame `Connection.send_bytes` wrote to a pipe, in one system call per wake-up.

    `Connection.recv_bytes` reads a frame's header and its body separately: two system calls per
    message, each a point where another thread of the process may take the GIL and keep it for a
    whole switch interval. This reads what has arrived at once and splits it into frames.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        # The start of a frame not yet whole, kept in pieces so that a large frame is joined once.
        self._parts: list[bytes] = []
        self._held = 0
        self._wanted = 0

    def read(self) -> list[bytes]:
        """Read once and return the frames now whole (maybe none); blocks only while nothing arrived.

        Raises EOFError when the other end has closed, `ProtocolError` on a corrupt header.
        """
        data = os.read(self._fd, min(_MAX_READ, max(_READ_SIZE, self._wanted - self._held)))
        if not data:
            raise EOFError("the pipe was closed")
        if self._parts:
            self._parts.append(data)
            self._held += len(data)
            if self._held < self._wanted:
                return []
            data = b"".join(self._parts)
            self._parts = []
        frames, rest, self._wanted = _split_frames(data)
        if rest < len(data):
            self._parts = [data[rest:]]
        self._held = len(data) - rest
        return frames


def _split_frames(data: bytes) -> tuple[list[bytes], int, int]:
    """The whole frames in ``data``, where the rest starts, and how long the rest must grow to."""
    frames: list[bytes] = []
    start = 0
    size = len(data)
    while True:
        if size - start < _SHORT_HEADER.size:
            return frames, start, _SHORT_HEADER.size
        (length,) = _SHORT_HEADER.unpack_from(data, start)
        header = _SHORT_HEADER.size
        if length < 0:
            if length != -1:
                raise ProtocolError(f"corrupt frame header (length {length})")
            header += _LONG_HEADER.size
            if size - start < header:
                return frames, start, header
            (length,) = _LONG_HEADER.unpack_from(data, start + _SHORT_HEADER.size)
            if length > MAX_FRAME_BYTES:
                raise ProtocolError(f"a frame of {length} bytes announced; the most is {MAX_FRAME_BYTES}")
        end = start + header + length
        if end > size:
            return frames, start, header + length
        frames.append(data[start + header : end])
        start = end
