"""The orchestrator as a `concurrent.futures.Executor`: functions as tasks.

`TaskExecutor` (``orch.executor()``) runs functions on an orchestrator's workers as tasks of the
reserved type ``call``; `ProcessPoolExecutor` is a drop-in for the stdlib's class that owns an
orchestrator of its own. Functions, arguments, results and exceptions are pickled, as the stdlib
pickles them, between the host and its own workers only (see `workers.calls`).

Where it differs from the stdlib's pool: `TaskFuture.cancel` stops a running task too; a worker
that dies fails its one future (`WorkerCrashedError`), never the pool; a task takes priorities,
timeouts and retries (`TaskExecutor.options`); `submit` waits while the orchestrator's queue is
full instead of growing without bound.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from concurrent.futures.process import _RemoteTraceback
from typing import TYPE_CHECKING, Any, Final, TypeVar

from orchestrator.admission import Admission, Callbacks
from orchestrator.config import TaskSpec
from orchestrator.errors import OrchestratorClosedError, QueueFullError, TaskFailedError, WorkerInitError
from orchestrator.models import Progress, TaskResult, failure_exception
from workers import calls

if TYPE_CHECKING:
    from orchestrator.supervisor import Supervisor, TaskRecord

T = TypeVar("T")

# How long `submit` waits for room in a full queue before it looks again, at most.
_MAX_ROOM_WAIT: Final = 0.05
# Task defaults an executor sets itself.
_OWN_FIELDS: Final = frozenset({"type", "config"})


class TaskFuture(Future[T]):
    """A `concurrent.futures.Future` for a function running as a task.

    It is ``running`` once its task started. ``task_id`` names the task (None when the function
    never became one: it could not be pickled); ``progress`` is the latest `Progress` the
    function reported through ``workers.current_context().progress(...)``.

    Unlike the stdlib's, `cancel` also stops a running task: `workers.TaskCancelled` is raised
    in the function (its worker is killed if it does not stop within ``timeout_grace``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.task_id: str | None = None
        self.progress: Progress | None = None
        self._record: TaskRecord | None = None
        self._stop: Callable[[TaskRecord], None] | None = None

    def cancel(self) -> bool:
        """Cancel the task, queued or running; False only once the future has its outcome."""
        with self._condition:
            if self._state == FINISHED:
                return False
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            self._state = CANCELLED
            self._condition.notify_all()
            self.set_running_or_notify_cancel()  # tells concurrent.futures.wait and as_completed
        record, stop = self._record, self._stop
        if record is not None and stop is not None:
            stop(record)
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True

    def _bind(self, record: TaskRecord, stop: Callable[[TaskRecord], None]) -> None:
        self.task_id, self._record, self._stop = record.task_id, record, stop

    def _on_start(self) -> None:
        with self._condition:
            if self._state == PENDING:
                self.set_running_or_notify_cancel()

    def _fail(self, exc: BaseException) -> None:
        """Fail the future with ``exc`` (unless it has its outcome) and stop its task."""
        try:
            self.set_exception(exc)
        except InvalidStateError:
            return
        record, stop = self._record, self._stop
        if record is not None and stop is not None:
            stop(record)

    def _on_progress(self, progress: Progress) -> None:
        self.progress = progress

    def _finish_inline(self, value: Any) -> bool:
        """Take a completed call's value on the supervisor's thread, which must run no user code:
        False (then `_on_final` gets it on the event thread) when done-callbacks are waiting."""
        with self._condition:
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED):
                return True  # cancelled meanwhile: the cancel stands, its callbacks have run
            if self._done_callbacks:  # type: ignore[attr-defined]
                return False
            self._record = None
            # What Future.set_result does, less the callbacks (there are none).
            self._result = value
            self._state = FINISHED
            for waiter in self._waiters:
                waiter.add_result(self)
            self._condition.notify_all()
        return True

    def _on_final(self, result: TaskResult) -> None:
        """The task's final result (on the event thread): the future's outcome, unless it has one."""
        record, self._record = self._record, None
        if result.status.value == "cancelled":
            self.cancel()
            return
        try:
            if result.success:
                self.set_result(result.data)
            else:
                self.set_exception(_raised(result, record.raised if record is not None else b""))
        except InvalidStateError:
            pass  # cancelled meanwhile: the cancel stands


def _raised(result: TaskResult, pickled: bytes) -> BaseException:
    """What a failed call raises for its caller: the function's own exception, with the worker's
    traceback as its cause, or what the failure maps to (`TaskResult.raise_for_error`)."""
    error = result.error
    if not pickled or error is None or error.kind not in ("exception", "serialization"):
        mapped = failure_exception(result)
        if pickled and error is not None and error.kind == "worker_init":
            with contextlib.suppress(BaseException):
                mapped.__cause__ = pickle.loads(pickled)  # the initializer's own exception
        return mapped
    try:
        exc: BaseException = pickle.loads(pickled)
    except BaseException as failure:  # noqa: BLE001 - e.g. a class that needs other arguments, a reducer that exits
        exc = TaskFailedError(
            f"the function raised {error.exception_type}: {error.message} (it could not be rebuilt "
            f"here: {type(failure).__name__}: {failure})",
            result,
        )
    if error.traceback:
        # The stdlib passes the traceback's text; typeshed declares a traceback object.
        exc.__cause__ = _RemoteTraceback(f'\n"""\n{error.traceback}"""')  # type: ignore[arg-type]
    return exc


class CallPort:
    """What an executor needs of its orchestrator: queue a call, cancel one, read the config."""

    def __init__(self, admission: Admission, supervisor: Callable[[], Supervisor]) -> None:
        self._admission = admission
        self._supervisor = supervisor
        self.config = admission.config

    def submit(self, spec: TaskSpec, callbacks: Callbacks, bind: Callable[[TaskRecord], None]) -> None:
        """Queue a call (starting the orchestrator if it is not yet); see `Admission.submit_call`."""
        self._supervisor()
        self._admission.submit_call(spec, callbacks, bind)

    def cancel(self, record: TaskRecord) -> None:
        """Cancel the call's task without waiting for the supervisor (a future was cancelled)."""
        if record.result is not None:
            return
        with contextlib.suppress(OrchestratorClosedError):
            supervisor = self._supervisor()

            def cancel() -> None:
                supervisor.cancel(record)

            supervisor.post(cancel)


class _Shared:
    """What an executor and its `TaskExecutor.options` copies share: futures, shutdown, breakage."""

    def __init__(self, initializer: bytes | str | None) -> None:
        self.initializer = initializer
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)
        self.futures: set[TaskFuture[Any]] = set()
        self.shut = False
        self.broken: WorkerInitError | None = None


class TaskExecutor(Executor):
    """An `Executor` over a `ParallelOrchestrator`: each submitted function runs as a task.

    Get one with ``orch.executor(**task_defaults)``; ``options`` gives a copy with other task
    defaults. Shutting it down settles its own futures and leaves the orchestrator running.
    """

    def __init__(
        self, port: CallPort, task_defaults: dict[str, Any], initializer: bytes | str | None = None
    ) -> None:
        self._port = port
        self._template = _template(task_defaults)
        self._shared = _Shared(initializer)
        config = port.config
        self._out_of_band = config.shm_threshold if config.backend == "local" else None

    def options(self, **task_defaults: Any) -> TaskExecutor:
        """A copy whose tasks take these `TaskSpec` defaults (``priority``, ``timeout``,
        ``retries``, ``group``...) over this one's; it shares this executor's futures and shutdown.

        Raises:
            InvalidTaskError: a default that does not validate (the message names the field).
            TypeError: ``type`` or ``config``, which the executor sets itself.
        """
        changed = object.__new__(type(self))
        changed.__dict__.update(self.__dict__)
        fields = self._template.model_dump(exclude_unset=True, exclude=set(_OWN_FIELDS))
        changed._template = _template({**fields, **task_defaults})
        return changed

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture[T]:
        """Run ``fn(*args, **kwargs)`` as a task; its `TaskFuture`.

        A function, argument or result that cannot be pickled fails the future with the
        pickling error. While the orchestrator's queue is full, it waits for room.

        Raises:
            RuntimeError: after `shutdown` (an `OrchestratorClosedError` after the orchestrator's).
            WorkerInitError: the executor's initializer failed in a worker (it is broken).
        """
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")
        self._check_open()
        future: TaskFuture[T] = TaskFuture()
        try:
            config = calls.pack_call(fn, args, kwargs, self._out_of_band, self._shared.initializer)
        except Exception as exc:  # noqa: BLE001 - as the stdlib: the pickling error is the future's
            future.set_exception(exc)
            return future
        description = self._template.description or _name_of(fn)
        spec = self._template.model_copy(update={"config": config, "description": description})
        self._admit(spec, future)
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """``fn`` over the iterables' items, results in order, as the stdlib's ``map``.

        It submits lazily: at most ``buffersize`` tasks (default: ``task_queue_size``) are in
        flight, and each result taken lets one more go, so a map over millions of items runs in
        bounded memory. ``chunksize`` items travel as one task. ``timeout`` counts from this
        call; the first exception is raised at its position, and closing the iterator early
        cancels what has not run.

        Raises:
            ValueError: ``chunksize`` or ``buffersize`` below 1.
        """
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, not {chunksize!r}")
        if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError(f"buffersize must be None or an int >= 1, not {buffersize!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        items = zip(*iterables, strict=False)
        if chunksize == 1:
            work: Iterator[tuple[Callable[..., Any], tuple[Any, ...]]] = ((fn, item) for item in items)
        else:
            chunks = iter(lambda: list(itertools.islice(items, chunksize)), [])
            work = ((calls.run_chunk, (fn, chunk)) for chunk in chunks)
        limit = buffersize or self._port.config.task_queue_size
        futures: deque[TaskFuture[Any]] = deque(
            self.submit(call, *args) for call, args in itertools.islice(work, limit)
        )
        results = _in_order(futures, work, self.submit, deadline)
        return results if chunksize == 1 else itertools.chain.from_iterable(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more functions; with ``cancel_futures``, cancel those not started; with
        ``wait``, return once every future of this executor has its outcome."""
        shared = self._shared
        with shared.lock:
            shared.shut = True
            shared.room.notify_all()
            futures = list(shared.futures)
        if cancel_futures:
            for future in futures:
                if not future.running():
                    future.cancel()
        if wait:
            for future in futures:
                with contextlib.suppress(BaseException):
                    future.exception()

    def _check_open(self) -> None:
        shared = self._shared
        if shared.broken is not None:
            raise shared.broken
        if shared.shut:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _admit(self, spec: TaskSpec, future: TaskFuture[Any]) -> None:
        """Queue the task, waiting while the queue is full (a submit never raises QueueFullError)."""
        shared = self._shared
        on_final = self._final_of(future)
        callbacks = (future._on_progress, on_final, on_final)

        def bind(record: TaskRecord) -> None:
            future._bind(record, self._port.cancel)
            record.on_start = future._on_start
            record.take_success = self._taker_of(future)

        with shared.lock:
            shared.futures.add(future)  # before its final callback can run
        wait = 0.0005
        try:
            while True:
                try:
                    self._port.submit(spec, callbacks, bind)
                    return
                except QueueFullError:
                    with shared.room:
                        self._check_open()
                        shared.room.wait(wait)
                    wait = min(wait * 2, _MAX_ROOM_WAIT)
        except BaseException:
            with shared.lock:
                shared.futures.discard(future)
            raise

    def _final_of(self, future: TaskFuture[Any]) -> Callable[[TaskResult], None]:
        shared = self._shared

        def on_final(result: TaskResult) -> None:
            with shared.lock:
                shared.futures.discard(future)
                shared.room.notify_all()
            error = result.error
            if error is not None and error.kind == "worker_init" and shared.initializer is not None:
                self._break(result)
            future._on_final(result)

        return on_final

    def _taker_of(self, future: TaskFuture[Any]) -> Callable[[Any], bool]:
        shared = self._shared

        def take_success(value: Any) -> bool:
            if not future._finish_inline(value):
                return False
            with shared.lock:
                shared.futures.discard(future)
                shared.room.notify_all()
            return True

        return take_success

    def _break(self, result: TaskResult) -> None:
        """The initializer failed: as the stdlib's pool, the executor is broken for good."""
        shared = self._shared
        error = result.error
        assert error is not None
        broken = WorkerInitError(
            f"the executor's initializer failed in a worker, so the executor is broken: {error.message}",
            result,
        )
        with shared.lock:
            if shared.broken is not None:
                return
            shared.broken = broken
            pending = list(shared.futures)
        for future in pending:
            future._fail(broken)

    def __reduce__(self) -> Any:
        raise TypeError("an executor cannot be pickled; pass the function and its arguments instead")


def _in_order(
    futures: deque[TaskFuture[Any]],
    work: Iterator[tuple[Callable[..., Any], tuple[Any, ...]]],
    submit: Callable[..., TaskFuture[Any]],
    deadline: float | None,
) -> Iterator[Any]:
    """Each future's result in turn, submitting one more item as each is taken."""
    try:
        while futures:
            for call, args in itertools.islice(work, 1):
                futures.append(submit(call, *args))
            left = None if deadline is None else deadline - time.monotonic()
            # No name keeps the future (nor its result) alive while the caller holds the value.
            yield _result_or_cancel(futures.popleft(), left if left is None or left > 0 else 0)
    finally:
        for future in futures:
            future.cancel()


def initializer_for(
    inherit: Callable[[calls.Initializer], str | None],
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> bytes | str | None:
    """How an executor's calls name their initializer: by the name every worker inherits it under
    (``inherit`` gives one until the orchestrator starts), else pickled with each call.

    Raises:
        TypeError: ``initializer`` is not callable.
        Exception: the pickling error, with a note on how to pass objects that only inherit.
    """
    if initializer is None:
        return None
    _check_initializer(initializer)
    return inherit((initializer, tuple(initargs))) or _pickled_initializer(initializer, initargs)


def _pickled_initializer(initializer: Callable[..., object], initargs: tuple[Any, ...]) -> bytes:
    """``(initializer, initargs)`` pickled to travel with each call of an executor made after
    its orchestrator started.

    Raises:
        Exception: the pickling error, with a note on how to pass objects that only inherit.
    """
    try:
        return pickle.dumps((initializer, tuple(initargs)), protocol=calls.PICKLE_PROTOCOL)
    except Exception as exc:
        exc.add_note(
            "an executor made after its orchestrator started sends its initializer and initargs "
            "pickled; to hand workers objects that pass only as a process starts (a "
            "multiprocessing Queue, Lock or Value), make the executor before initialize(), as "
            "ProcessPoolExecutor does"
        )
        raise


def _check_initializer(initializer: object) -> None:
    """Raise TypeError unless ``initializer`` is callable."""
    if not callable(initializer):
        raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")


def _result_or_cancel(future: TaskFuture[Any], timeout: float | None) -> Any:
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()
        raise
    finally:
        del future  # a raised exception's traceback keeps this frame, which must not keep the future


def _template(task_defaults: dict[str, Any]) -> TaskSpec:
    own = sorted(_OWN_FIELDS & task_defaults.keys())
    if own:
        raise TypeError(f"an executor sets {', '.join(own)} itself; give task defaults only")
    return TaskSpec(type=calls.CALL_TYPE, **task_defaults)


def _name_of(fn: Callable[..., Any]) -> str:
    """A function's qualified name, as ``orch status`` shows the task (``module.qualname``)."""
    target = fn.func if hasattr(fn, "func") else fn  # functools.partial
    module = getattr(target, "__module__", None)
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{name}" if module else name
