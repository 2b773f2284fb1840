"""Large payloads through shared memory: only a block's name crosses the pipe.

Bytes-like values (``bytes``, ``bytearray``, ``memoryview``) and NumPy arrays of at least the
threshold, anywhere in a config, partial result or result, are written to a
`multiprocessing.shared_memory` block and replaced by a msgpack extension type naming it.

Lifetimes: on the receiving side a worker sees a read-only ``memoryview`` (or an array viewing
the block) valid until its handler returns; the host copies a block out once (``bytes`` or an
array) and unlinks it at once. The host unlinks every block it knows of, and after a worker's
crash every block named with that worker's prefix, so none is left in /dev/shm.

Blocks stay registered with multiprocessing's resource tracker, which host and workers share:
should the host die, the tracker unlinks what is left once the last worker is gone.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import re
import sys
import threading
from typing import TYPE_CHECKING, Any, Final

import msgpack

if TYPE_CHECKING:
    from multiprocessing.shared_memory import SharedMemory

# What may follow an orchestrator's prefix in a block name (no '/', no '.'), and the longest name.
_NAME_TAIL: Final = re.compile(r"[A-Za-z0-9_]+")
_MAX_NAME: Final = 200
BYTES_BLOCK: Final = 1
ARRAY_BLOCK: Final = 2
INLINE_ARRAY: Final = 3  # a NumPy array small enough to travel on the pipe
# A block the receiver made, named back to it (a handler returned a buffer it was given): the
# receiver copies it out as usual but leaves unlinking to its owner (the task's end).
LENT_BLOCK: Final = 4
NAME_PREFIX: Final = "orch"
SHM_DIRECTORY: Final = "/dev/shm"  # where Linux keeps the blocks, as files


def block_prefix(namespace: str, worker_id: int | None = None) -> str:
    """The name prefix of the blocks of one orchestrator (``namespace``): made by the host
    (``worker_id`` None) or by one of its workers. ``block_prefix(namespace, None)[:-2]`` is the
    prefix of them all."""
    owner = "h" if worker_id is None else f"w{worker_id}"
    return f"{NAME_PREFIX}_{namespace}_{owner}_"


# Checked first, by exact type: most of a payload's leaves, and never anything to move.
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_SEQUENCES: Final = (list, tuple)
_BUFFERS: Final = (bytes, bytearray, memoryview)


class BlockWriter:
    """Creates named blocks for one process and packs values, moving large buffers into blocks."""

    def __init__(self, prefix: str, threshold: int) -> None:
        self._prefix = prefix
        self._threshold = threshold
        self._numbers = itertools.count()

    def pack(
        self, value: Any, created: list[str] | None = None, lent: dict[int, msgpack.ExtType] | None = None
    ) -> bytes:
        """msgpack of ``value``; names of the blocks made are appended to ``created``. A buffer
        found in ``lent`` (`BlockReader.lent`) is named back to its block, not copied."""
        names: list[str] = created if created is not None else []
        return pack(self._move_large(value, names, lent or {}))

    def _move_large(self, value: Any, names: list[str], lent: dict[int, msgpack.ExtType]) -> Any:
        """``value`` with its large buffers replaced by block references (itself when none are)."""
        if type(value) in _SCALARS:
            return value
        if isinstance(value, dict):
            moved = {
                key: self._move_large(item, names, lent)
                for key, item in value.items()
                if type(item) not in _SCALARS
            }
            return {**value, **moved} if any(moved[key] is not value[key] for key in moved) else value
        if isinstance(value, _SEQUENCES):
            items = [self._move_large(item, names, lent) for item in value]
            return items if any(new is not old for new, old in zip(items, value, strict=True)) else value
        if id(value) in lent:
            return lent[id(value)]
        if isinstance(value, _BUFFERS) and memoryview(value).nbytes >= self._threshold:
            return self._block(BYTES_BLOCK, memoryview(value).cast("B"), [], names)
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(value, numpy.ndarray) and value.nbytes >= self._threshold:
            array = numpy.ascontiguousarray(value)
            return self._block(
                ARRAY_BLOCK, memoryview(array).cast("B"), [array.dtype.str, list(array.shape)], names
            )
        return value

    def _block(self, code: int, data: memoryview, extra: list[Any], names: list[str]) -> msgpack.ExtType:
        name = f"{self._prefix}{next(self._numbers)}"
        block = _shared_memory(name, create=True, size=max(1, data.nbytes))
        try:
            _fill(block, data)
        finally:
            block.close()
        names.append(name)
        return msgpack.ExtType(code, msgpack.packb([name, data.nbytes, *extra]))


def _fill(block: SharedMemory, data: memoryview) -> None:
    """Copy ``data`` into a new block: through its file where there is one (Linux), so that the
    kernel allocates the pages in one pass; a first write through the mapping takes a page fault
    per 4 KiB page, three times slower here (64 MiB: 100 ms against 30)."""
    try:
        fd = os.open(os.path.join(SHM_DIRECTORY, block.name), os.O_WRONLY)
    except OSError:
        assert block.buf is not None
        block.buf[: data.nbytes] = data
        return
    try:
        written = 0
        while written < data.nbytes:
            written += os.pwrite(fd, data[written:], written)
    finally:
        os.close(fd)


def _copy_out(name: str, size: int, code: int, extra: list[Any]) -> Any:
    """A block's content copied into this process (``bytes`` or an array): through its file where
    there is one (Linux), without mapping it, so no page fault per page of the block."""
    try:
        fd = _open_block_file(name, os.O_RDONLY)
    except FileNotFoundError:
        if os.path.isdir(SHM_DIRECTORY):
            raise
        block = _shared_memory(name)  # no /dev/shm: shm_open, which never follows a link
        try:
            assert block.buf is not None
            view = block.buf[:size]
            value = _as_array(view, extra, copy=True) if code == ARRAY_BLOCK else bytes(view)
            view.release()
        finally:
            block.close()
        return value
    try:
        if code == ARRAY_BLOCK:
            import numpy

            dtype, shape = extra
            array = numpy.empty(shape, dtype=numpy.dtype(dtype))
            target = array.data.cast("B")
            done = 0
            while done < size:
                done += _check_read(os.preadv(fd, [target[done:size]], done))
            return array
        parts = []
        done = 0
        while done < size:  # one read unless the block is beyond 2 GiB, a single read's limit
            parts.append(os.pread(fd, size - done, done))
            done += _check_read(len(parts[-1]))
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


def _map_out(name: str, size: int, code: int, extra: list[Any]) -> Any:
    """A block's content as a read-only view of a private mapping of it: no copy, and no page
    touched until the caller reads it. The mapping goes when the last view of it does."""
    try:
        fd = _open_block_file(name, os.O_RDONLY)
    except FileNotFoundError:
        if os.path.isdir(SHM_DIRECTORY):
            raise
        return _copy_out(name, size, code, extra)  # no /dev/shm to map by file
    try:
        if os.fstat(fd).st_size < size:
            raise ValueError("a shared-memory block is shorter than its reference says")
        view = memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ)) if size else memoryview(b"")
    finally:
        os.close(fd)
    return _as_array(view, extra, copy=False) if code == ARRAY_BLOCK else view


def _check_read(count: int) -> int:
    if count == 0:
        raise ValueError("a shared-memory block is shorter than its reference says")
    return count


class BlockReader:
    """Unpacks values whose large buffers live in blocks.

    ``copy=True`` (the host): each block is copied out and unlinked at once (unless ``unlink`` is
    False: a worker copying a delivered message out of a block the host owns); with ``views``,
    it is mapped read-only instead and handed out as a read-only memoryview (or array) over the
    mapping, which lasts as long as the value does, its name unlinked at once all the same.
    ``copy=False`` (a worker): each block is mapped read-only and kept open until `close`.

    A reference names a block, and the peer that sent it may lie: only names that start with
    ``accept`` (one orchestrator's prefix, see `block_prefix`) and hold nothing but letters, digits
    and ``_`` are opened, never through a symlink. ``accept=None`` refuses every reference (a
    remote peer, or shared memory off). A refused reference fails the unpack with `ValueError`.
    """

    def __init__(self, copy: bool, accept: str | None, unlink: bool = True, views: bool = False) -> None:
        self._copy = copy
        self._views_out = views
        self._accept = accept
        self._unlink = unlink
        self._open: list[SharedMemory] = []
        self._views: list[memoryview] = []
        # What a worker handed out (by id; `_kept` keeps each alive, so no id is reused), and the
        # reference that names each one's block back to the host.
        self.lent: dict[int, msgpack.ExtType] = {}
        self._kept: list[Any] = []

    def unpack(self, data: bytes) -> Any:
        """The value packed in ``data``, its blocks mapped (worker) or copied out (host)."""
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=self._ext)

    def close(self) -> None:
        """Release the mappings of a worker's blocks.

        A view the handler still holds (or an array made from one) keeps its block mapped for
        the life of the process; the block's name is unlinked by the host all the same.
        """
        for view in self._views:
            with contextlib.suppress(BufferError):
                view.release()
        for block in self._open:
            try:
                block.close()
            except BufferError:
                _still_mapped.append(block)
        self._open.clear()
        self._views.clear()
        self.lent.clear()
        self._kept.clear()

    def _ext(self, code: int, payload: bytes) -> Any:
        if code not in (BYTES_BLOCK, ARRAY_BLOCK, LENT_BLOCK):
            return decode_extension(code, payload)
        fields = msgpack.unpackb(payload, raw=False)
        unlink = self._unlink
        if code == LENT_BLOCK:
            (code, *fields), unlink = fields, False
        name, size, *extra = _checked_reference(code, fields, self._accept)
        if self._copy:
            value = (
                _map_out(name, size, code, extra) if self._views_out else _copy_out(name, size, code, extra)
            )
            if unlink:
                unlink_block(name)
            return value
        block = _shared_memory(name)
        assert block.buf is not None
        view = block.buf[:size]
        self._open.append(block)
        readonly = view.toreadonly()
        self._views += [readonly, view]
        handed = _as_array(readonly, extra, copy=False) if code == ARRAY_BLOCK else readonly
        self._kept.append(handed)
        self.lent[id(handed)] = msgpack.ExtType(LENT_BLOCK, msgpack.packb([code, name, size, *extra]))
        return handed


def _checked_reference(code: Any, fields: Any, accept: str | None) -> list[Any]:
    """The fields of a block reference, if it names a block this orchestrator made."""
    if accept is None:
        raise ValueError("a shared-memory reference from a peer that may send none; refused")
    if code not in (BYTES_BLOCK, ARRAY_BLOCK) or not isinstance(fields, list) or len(fields) < 2:
        raise ValueError("a malformed shared-memory reference; refused")
    name, size = fields[0], fields[1]
    if not (
        type(name) is str
        and len(name) <= _MAX_NAME
        and name.startswith(accept)
        and _NAME_TAIL.fullmatch(name[len(accept) :])
    ):
        raise ValueError(
            f"a shared-memory reference to {str(name)[:80]!r}, a block this orchestrator did not make"
        )
    if type(size) is not int or size < 0:
        raise ValueError(f"a shared-memory reference of size {size!r}; refused")
    return fields


def _open_block_file(name: str, flags: int) -> int:
    """Open a block's file in /dev/shm by a checked name, never following a symlink."""
    directory = os.open(SHM_DIRECTORY, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    finally:
        os.close(directory)


# Blocks a handler kept a view of past its end: closing them would fail, and so would __del__.
_still_mapped: list[SharedMemory] = []


_packers = threading.local()


def pack(value: Any) -> bytes:
    """msgpack of ``value``, NumPy arrays inline, with this thread's packer (making one per call
    costs more than packing a small config; a packer is not shared between threads, since its
    ``default`` runs Python code in mid-pack)."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, autoreset=True, default=encode_extension)
    return packer.pack(value)  # type: ignore[no-any-return]


def encode_extension(value: Any) -> msgpack.ExtType:
    """msgpack's ``default``: NumPy arrays travel inline (without NumPy being a dependency)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray) and value.dtype.kind in "biufc":
        array = numpy.ascontiguousarray(value)
        return msgpack.ExtType(
            INLINE_ARRAY, msgpack.packb([array.dtype.str, list(array.shape), array.tobytes()])
        )
    raise TypeError(f"can not serialize {type(value).__name__!r} object")


def decode_extension(code: int, payload: bytes) -> Any:
    """msgpack's ``ext_hook`` for the extensions that need no shared memory."""
    if code != INLINE_ARRAY:
        return msgpack.ExtType(code, payload)
    dtype, shape, data = msgpack.unpackb(payload, raw=False)
    return _as_array(data, [dtype, shape], copy=True)


def _as_array(buffer: Any, extra: list[Any], copy: bool) -> Any:
    import numpy

    dtype, shape = extra
    array = numpy.frombuffer(buffer, dtype=numpy.dtype(dtype)).reshape(shape)
    return array.copy() if copy else array


def _shared_memory(name: str, create: bool = False, size: int = 0) -> SharedMemory:
    """A block by name. multiprocessing.shared_memory is imported on first use: its import
    (hashlib, secrets) would add ~5 ms to every fork server's start, and most workers never
    make or map a block."""
    from multiprocessing.shared_memory import SharedMemory

    return SharedMemory(name=name, create=create, size=size)


def unlink_block(name: str) -> None:
    """Remove a block by name (also from the resource tracker); a missing one is fine."""
    try:
        block = _shared_memory(name)
    except FileNotFoundError:
        return
    block.close()
    block.unlink()


def unlink_by_prefix(prefix: str, directory: str = SHM_DIRECTORY) -> int:
    """Unlink every block whose name starts with ``prefix`` (a crashed worker's leftovers)."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if name.startswith(prefix):
                unlink_block(name)
                removed += 1
    return removed
