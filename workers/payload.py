"""User data as it travels between the host and its workers: checked, packed (large buffers in
shared memory when a block writer is given) and unpacked."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Final

import msgpack

from workers.shm import decode_extension, pack

if TYPE_CHECKING:
    from workers.shm import BlockReader, BlockWriter


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
