"""Functions as tasks: the reserved ``call`` task type, which runs a pickled callable.

This is the one place where pickle crosses a pipe, and only between a host and its own workers,
as in the stdlib's process pool: an executor pickles ``(fn, args, kwargs)`` into a task's config
(`pack_call`); the ``call`` handler (`run_call`) unpickles it, runs it and pickles what it
returned or raised. Buffers at least ``out_of_band`` bytes long (pickle protocol 5: NumPy arrays,
bytes-like objects) travel beside the pickle instead of inside it, so the packer puts them in
shared memory as it does any large buffer. The control socket and the journal never see a call.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable, Iterable
from typing import Any, Final

from workers.context import TaskContext
from workers.errors import TaskCancelled

CALL_TYPE: Final = "call"
CALL_HANDLER: Final = "workers.calls:run_call"
PICKLE_PROTOCOL: Final = 5

# An executor's initializer and its arguments.
Initializer = tuple[Callable[..., Any], tuple[Any, ...]]


class CallRaised(Exception):
    """What the ``call`` handler raises for its function: ``original`` is the exception, and
    ``pickled`` its pickle, for the host to raise again. ``kind`` is ``exception``, or
    ``serialization`` when the function's result could not be pickled."""

    def __init__(self, original: BaseException, pickled: bytes, kind: str = "exception") -> None:
        super().__init__(str(original))
        self.original = original
        self.pickled = pickled
        self.kind = kind


class InitializerFailed(Exception):
    """A worker initializer raised (``original``): the worker must not run tasks."""

    def __init__(self, original: BaseException, pickled: bytes) -> None:
        super().__init__(f"the worker initializer raised {type(original).__name__}: {original}")
        self.original = original
        self.pickled = pickled


def dumps(value: Any, out_of_band: int | None) -> tuple[bytes, list[memoryview]]:
    """``value`` pickled, with its buffers of at least ``out_of_band`` bytes kept apart (None:
    none). Raises what pickle raises (`pickle.PicklingError`, `TypeError`, `AttributeError`)."""
    buffers: list[memoryview] = []

    def keep_apart(buffer: pickle.PickleBuffer) -> bool:
        if out_of_band is None:
            return True
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: in band
            return True
        if view.nbytes < out_of_band:
            return True
        buffers.append(view)
        return False

    return pickle.dumps(value, protocol=PICKLE_PROTOCOL, buffer_callback=keep_apart), buffers


def loads(data: bytes, buffers: Iterable[Any] = ()) -> Any:
    """A value `dumps` made. Out-of-band buffers are copied into writable memory first: an array
    rebuilt over a read-only buffer would be read-only, unlike one the stdlib's pool hands over."""
    return pickle.loads(data, buffers=[bytearray(buffer) for buffer in buffers])


def pack_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    out_of_band: int | None,
    initializer: bytes | str | None = None,
) -> dict[str, Any]:
    """The config of a ``call`` task that runs ``fn(*args, **kwargs)``; ``initializer`` is a
    pickled ``(function, args)``, or the name of one the worker inherited (`inherit`), to run
    once in each worker before its first call."""
    pickled, buffers = dumps((fn, args, kwargs), out_of_band)
    config: dict[str, Any] = {"call": pickled, "buffers": buffers, "out_of_band": out_of_band}
    if initializer is not None:
        config["init"] = initializer
    return config


def pickled_exception(exc: BaseException) -> bytes:
    """``exc`` pickled for the host; when it cannot be, the pickling error in its place, naming
    the exception it stands for (as the stdlib's pool reports an unpicklable exception)."""
    try:
        return pickle.dumps(exc, protocol=PICKLE_PROTOCOL)
    except Exception as failure:  # noqa: BLE001 - any pickling failure is reported the same way
        stand_in = type(failure)(
            f"{type(exc).__name__}: {exc} (the exception could not be pickled: {failure})"
        )
        try:
            return pickle.dumps(stand_in, protocol=PICKLE_PROTOCOL)
        except Exception:  # noqa: BLE001 - a pickling error whose type takes other arguments
            return pickle.dumps(RuntimeError(str(stand_in)), protocol=PICKLE_PROTOCOL)


# The initializers this process ran, by their pickle or name: each runs once per worker process.
_initialized: set[bytes | str] = set()
# Initializers handed to this process as it started, by name: their arguments may hold objects
# (a multiprocessing Queue, Lock or Value) that pass to a child only then, never pickled later.
_inherited: dict[str, Initializer] = {}


def inherit(initializers: dict[str, Initializer]) -> None:
    """Keep the initializers this worker process was started with (see `pack_call`)."""
    _inherited.update(initializers)


def run_call(ctx: TaskContext) -> dict[str, Any]:
    """The ``call`` handler: run the pickled function of ``ctx.config`` and return its result's
    pickle as ``{"result": bytes, "buffers": [...]}``. A failure of the function's own is raised
    as `CallRaised` (a `TaskCancelled` from a stop request goes through as it is)."""
    config = ctx.config
    _initialize(config.get("init"))
    try:
        fn, args, kwargs = loads(config["call"], config["buffers"])
        result = fn(*args, **kwargs)
    except TaskCancelled:
        raise
    except BaseException as exc:
        raise CallRaised(exc, pickled_exception(exc)) from exc
    try:
        pickled, buffers = dumps(result, config.get("out_of_band"))
    except TaskCancelled:
        raise
    except BaseException as exc:  # a reducer may raise anything, SystemExit included
        raise CallRaised(exc, pickled_exception(exc), "serialization") from exc
    return {"result": pickled, "buffers": buffers}


def _initialize(initializer: bytes | str | None) -> None:
    if initializer is None or initializer in _initialized:
        return
    try:
        function, args = _initializer_of(initializer)
        function(*args)
    except TaskCancelled:
        raise
    except BaseException as exc:
        raise InitializerFailed(exc, pickled_exception(exc)) from exc
    _initialized.add(initializer)


def _initializer_of(initializer: bytes | str) -> Initializer:
    """A pickled initializer, or the one this worker inherited under that name."""
    if isinstance(initializer, bytes):
        return pickle.loads(initializer)  # type: ignore[no-any-return]
    try:
        return _inherited[initializer]
    except KeyError:
        why = f"this worker was started without the executor's initializer {initializer!r}"
        raise RuntimeError(why) from None


def run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """``fn`` over a chunk of argument tuples: one task of an executor's ``map(chunksize=n)``."""
    return list(itertools.starmap(fn, chunk))
