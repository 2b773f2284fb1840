"""The worker process: take tasks from the host's pipe, run their handlers, send the outcome back.

Two threads. The main thread runs handlers, one task at a time, and is the only one that calls
user code. A local worker reads its tasks itself, from a pipe of their own, so a task reaches
its handler without a hand-off between threads, and a task sent while another runs wakes nobody.
A small reader thread owns the other pipe, which carries everything else: it turns a stop
request (cancel or timeout) into a signal to the main thread, answers revokes, and notices when
the host is gone (EOF on the pipe, or its pid no longer alive), in which case the worker kills
its own children and exits: no worker outlives its host, whatever the start method. A worker on
a Dask node has one connection, and its reader thread queues the tasks for the main thread.

A stop request raises `TaskCancelled`/`TaskTimeout` inside the handler through ``SIGUSR1``. The
signal is blocked whenever the main thread is not inside the handler, and a flag guards the rest,
so a stop can never interrupt the loop itself or a message half written to the pipe.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Final

from workers import protocol
from workers.calls import CallRaised, Initializer, inherit
from workers.context import TaskContext, current_task
from workers.errors import stop_exception
from workers.failures import classify, failure, init_failure, over_cap
from workers.host_link import RemoteTasks, TaskPipe, exit_orphaned, process_alive, read_messages
from workers.logs import LogForwarder, forward_logs
from workers.memcap import cap_memory, usage
from workers.messaging import Link
from workers.registry import resolve_handler
from workers.shm import BlockReader, BlockWriter, block_prefix
from workers.strays import StrayReaper
from workers.values import TaskError

if TYPE_CHECKING:
    import asyncio

STOP_SIGNAL: Final = signal.SIGUSR1
_STOP_MASK: Final = {STOP_SIGNAL}

# How often the reader thread checks that the host is alive while the pipe is quiet. EOF already
# reports a dead host under spawn and forkserver; under fork, siblings may hold copies of the
# host's pipe ends, so the pid check is what bounds the time an orphan lives.
HOST_CHECK_INTERVAL: Final = 0.5
# Stop requests can race with a task's own end and then name a task that never comes; keep few.
_MAX_EARLY_STOPS: Final = 1000


def worker_main(
    conn: Connection,
    worker_id: int,
    host_pid: int,
    inherited_fds: list[int],
    shm_threshold: int | None,
    block_namespace: str,
    node: str | None = None,
    task_conn: Connection | None = None,
    max_memory_mb: float | None = None,
    initializers: dict[str, Initializer] | None = None,
    log_level: str | None = None,
) -> None:
    """Entry point of a worker process: serve tasks from the host until told to stop.

    Args:
        conn: this worker's end of its duplex pipe to the host.
        worker_id: the host's number for this worker.
        host_pid: the host's pid, watched so that the worker never outlives it.
        inherited_fds: host fds a ``fork`` child holds copies of and must close: the host's ends of
            its pipes (else EOF would never report the host's death) and the journal's lock.
        shm_threshold: buffers of at least this many bytes travel in shared memory (None: never).
        block_namespace: the orchestrator's part of its shared-memory block names.
        node: the Dask worker whose node runs this process (named in handler import errors).
        task_conn: the read end of the pipe the host sends `RunTask` and `Shutdown` on (None:
            they come on ``conn``).
        max_memory_mb: the host's memory limit of a worker, which the worker also enforces on
            itself (see `workers.memcap`).
        initializers: executor initializers by name, handed over at start so that their
            arguments may hold objects that pass only by inheritance (see `workers.calls.inherit`).
        log_level: `logging` records at this level and above go to the host (None: none do).
    """
    for fd in inherited_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _renew_inherited_locks()
    if initializers:
        inherit(initializers)
    # A group of its own: the host ends the worker and whatever its handlers started with one
    # signal (a child that left the group, or a double-forked daemon, escapes by design).
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    blocks = BlockWriter(block_prefix(block_namespace, worker_id), shm_threshold) if shm_threshold else None
    # The blocks the host may name to this worker: its orchestrator's, and only with shared memory on.
    accepted = block_prefix(block_namespace)[:-2] if shm_threshold else None
    runtime = _WorkerRuntime(conn, task_conn, worker_id, host_pid, blocks, accepted, node, max_memory_mb)
    if log_level is not None:
        runtime.logs = forward_logs(runtime._send, log_level)
    runtime.serve()


def _renew_inherited_locks() -> None:
    """A worker forked (``start_method="fork"``) while another host thread held the resource
    tracker's lock (creating a shared-memory block in ``submit_task``) would inherit it held, with no
    thread left to release it, and hang in its first block. The worker is one thread here: a new
    lock is safe."""
    tracker: Any = resource_tracker._resource_tracker
    tracker._lock = threading.RLock()


class _WorkerRuntime:
    """The state of one worker process, shared by its main thread and its reader thread.

    A worker runs in one of two modes, fixed by the kind of its first handler (a worker never
    changes type). Sync: one task at a time on the main thread, stopped by a signal. Async: the
    main thread runs an event loop with every task as an asyncio task, as many at once as the
    host sends (its ``worker_concurrency``), each stopped by cancelling it.
    """

    def __init__(
        self,
        conn: Connection,
        task_conn: Connection | None,
        worker_id: int,
        host_pid: int,
        blocks: BlockWriter | None,
        accepted_blocks: str | None,
        node: str | None,
        max_memory_mb: float | None = None,
    ) -> None:
        self._conn = conn
        self._max_memory_mb = max_memory_mb
        self._memory_capped = False
        self._where = f" on {node}" if node else ""
        self._worker_id = worker_id
        self._host_pid = host_pid
        self._main_ident = threading.get_ident()
        # Where the main thread takes its tasks from; the reader thread fills an inbox, if any.
        self._inbox: RemoteTasks | None = None
        self._tasks: RemoteTasks | TaskPipe
        if task_conn is None:
            self._tasks = self._inbox = RemoteTasks()
        else:
            self._tasks = TaskPipe(task_conn)
        self._send_lock = threading.Lock()
        self.logs: LogForwarder | None = None
        # Guards what the reader thread and the main thread hand each other: which tasks run,
        # stop requests for tasks not yet started, and which tasks were taken or given back.
        self._lock = threading.Lock()
        self._running: dict[str, TaskContext] = {}
        self._early_stops: dict[str, str] = {}
        self._taken = 0  # the `RunTask.seq` of the last task the main thread took
        self._revoked: set[int] = set()  # seqs given back before they were taken
        self._in_handler = False
        self._sending = 0
        self._deferred_stop = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_tasks: dict[str, asyncio.Task[None]] = {}
        self._handlers: dict[str, Callable[..., Any]] = {}
        self._initialized: set[str] = set()
        self._blocks = blocks
        self._mapped: dict[str, BlockReader] = {}
        self._accepted_blocks = accepted_blocks
        self._link = Link(self._send, self._pack, accepted_blocks)
        self._strays = StrayReaper()

    def serve(self) -> None:
        """Run tasks until the host sends Shutdown; exit at once if the host dies."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the host
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_MASK)
        signal.signal(STOP_SIGNAL, self._on_stop_signal)
        self._send(protocol.Hello(self._worker_id, os.getpid(), protocol.PROTOCOL_VERSION))
        reader = threading.Thread(target=self._read_host_messages, name="orch-reader", daemon=True)
        reader.start()
        # After the worker's own threads started: their stacks are part of the baseline.
        self._memory_capped = cap_memory(self._max_memory_mb) is not None
        while isinstance(msg := self._tasks.get(), protocol.RunTask):
            if not self._claim(msg):
                continue
            prepared = self._prepare(msg)
            report_start = msg.report_start
            del msg
            if isinstance(prepared, protocol.TaskFailed):
                self._send(prepared)
            elif inspect.iscoroutinefunction(prepared[1]):
                self._serve_async(*prepared)
                return
            else:
                self._send(self._run_sync(*prepared, report_start))
                self._strays.reap()

    def _read_host_messages(self) -> None:
        # Signals are for the main thread: a handler that blocks SIGTERM there is not overruled here.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, STOP_SIGNAL})
        poller = select.poll()
        poller.register(self._conn.fileno(), select.POLLIN)
        frames = protocol.FrameReader(self._conn.fileno())
        while True:
            try:
                ready = poller.poll(HOST_CHECK_INTERVAL * 1000)
            except OSError:
                exit_orphaned()
            if not ready:
                if not process_alive(self._host_pid):
                    exit_orphaned()
                continue
            for msg in read_messages(frames):
                if not self._handle_host_message(msg):
                    return

    def _handle_host_message(self, msg: protocol.Message) -> bool:
        """Act on one message from the host (on the reader thread); False once told to shut down."""
        if isinstance(msg, protocol.StopTask):
            self._request_stop(msg.task_id, msg.reason)
        elif isinstance(msg, protocol.Revoke):
            self._answer_revoke(msg)
        elif isinstance(msg, protocol.Reply):
            self._link.on_reply(msg)
        elif isinstance(msg, protocol.Measure):
            self._send(usage())
        elif isinstance(msg, protocol.Deliver):
            self._on_deliver(msg)
        elif self._inbox is not None:
            self._inbox.put(msg)
            return not isinstance(msg, protocol.Shutdown)
        else:
            print(
                f"orchestrator worker {os.getpid()}: {type(msg).__name__} on the wrong pipe", file=sys.stderr
            )
            exit_orphaned()
        return True

    def _claim(self, msg: protocol.RunTask) -> bool:
        """Take a task to run; False when the host took it back before (a `Revoked` was sent)."""
        with self._lock:
            self._taken = msg.seq
            if msg.seq not in self._revoked:
                return True
            self._revoked.discard(msg.seq)
            return False

    def _answer_revoke(self, msg: protocol.Revoke) -> None:
        """Give a task back if the main thread has not taken it (it may still be in the pipe);
        else say that it started: the host may not have heard so (`RunTask.report_start`)."""
        with self._lock:
            taken = msg.seq <= self._taken
            if not taken:
                self._revoked.add(msg.seq)
            concurrent = self._loop is not None
        self._send(protocol.TaskStarted(msg.task_id, concurrent) if taken else protocol.Revoked(msg.task_id))

    def _on_deliver(self, msg: protocol.Deliver) -> None:
        try:
            self._link.on_deliver(msg)
        except protocol.PayloadError as exc:
            print(f"orchestrator worker {os.getpid()}: a message on {msg.topic!r} {exc}", file=sys.stderr)

    def _request_stop(self, task_id: str, reason: str) -> None:
        with self._lock:
            ctx = self._running.get(task_id)
            if ctx is None:
                if len(self._early_stops) >= _MAX_EARLY_STOPS:
                    del self._early_stops[next(iter(self._early_stops))]
                self._early_stops[task_id] = reason
                return
            ctx.request_stop(reason)
            loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._cancel_async, task_id)
        else:
            signal.pthread_kill(self._main_ident, STOP_SIGNAL)

    def _prepare(self, msg: protocol.RunTask) -> tuple[TaskContext, Callable[..., Any]] | protocol.TaskFailed:
        """Resolve the handler and build the context; a failure here is the task's error."""
        mapped = BlockReader(copy=False, accept=self._accepted_blocks)
        if msg.init and msg.init not in self._initialized:
            try:
                resolve_handler(msg.init)()
            except BaseException as exc:  # noqa: BLE001 - user code: the task's error, the worker retired
                return init_failure(msg.task_id, exc)
            self._initialized.add(msg.init)
        try:
            handler = self._resolve(msg.handler)
            config = protocol.unpack_payload(msg.config, mapped)
            deps = _dependencies(protocol.unpack_payload(msg.deps))
        except Exception as exc:  # noqa: BLE001 - reported to the host as the task's error
            return failure(msg.task_id, "exception", exc, prefix=f"handler {msg.handler!r}{self._where}: ")
        ctx = TaskContext(
            msg.task_id,
            msg.task_type,
            msg.description,
            config,
            deps,
            msg.attempt,
            self._send,
            self._pack,
            msg.group,
            self._link,
        )
        self._mapped[msg.task_id] = mapped
        with self._lock:
            early_stop = self._early_stops.pop(msg.task_id, None)
            if early_stop is None:
                self._running[msg.task_id] = ctx
        if early_stop is not None:
            self._finished(ctx)
            return failure(msg.task_id, early_stop, stop_exception(early_stop))
        return ctx, handler

    def _finished(self, ctx: TaskContext) -> None:
        if self.logs is not None:
            self.logs.task_ended(ctx.task_id)  # what a flood cost is told before the result
        self._link.end_task(ctx.task_id)
        with self._lock:
            self._running.pop(ctx.task_id, None)
        mapped = self._mapped.pop(ctx.task_id, None)
        if mapped is not None:
            mapped.close()

    def _pack(self, value: Any) -> bytes:
        return protocol.pack_payload(value, self._blocks)

    def _result_message(self, ctx: TaskContext, result: Any, run_s: float) -> protocol.Message:
        mapped = self._mapped.get(ctx.task_id)
        try:
            # A buffer the task was given goes back as a reference to the host's own block.
            packed = protocol.pack_payload(result, self._blocks, lent=mapped.lent if mapped else None)
            return protocol.TaskDone(ctx.task_id, packed, run_s)
        except protocol.PayloadError as exc:
            return failure(ctx.task_id, "serialization", exc, prefix="the handler's result is ")

    # ------------------------------------------------------------------ sync mode

    def _run_sync(
        self, ctx: TaskContext, handler: Callable[..., Any], report_start: bool
    ) -> protocol.Message:
        try:
            if report_start:
                self._send(protocol.TaskStarted(ctx.task_id, False))
            started = time.perf_counter()
            result = self._invoke(handler, ctx)
            # Packed before the task's blocks are unmapped: the result may be a view of one.
            return self._result_message(ctx, result, time.perf_counter() - started)
        except BaseException as exc:  # noqa: BLE001 - user code: any failure is the task's
            return self._classify(ctx, exc)
        finally:
            self._finished(ctx)

    def _invoke(self, handler: Callable[..., Any], ctx: TaskContext) -> Any:
        """Call the handler with the stop signal deliverable, and only while it runs."""
        with current_task(ctx, process_wide=True):
            self._in_handler = True
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_MASK)
            try:
                return handler(ctx)
            finally:
                self._in_handler = False
                signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_MASK)

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        if not self._in_handler:
            return
        ctx = next(iter(self._running.values()), None)
        if ctx is None or ctx.stop_reason is None:
            return
        if self._sending:
            self._deferred_stop = True
        else:
            raise stop_exception(ctx.stop_reason)

    def _send(self, msg: protocol.Message) -> None:
        frame = protocol.encode(msg)
        on_main = threading.get_ident() == self._main_ident
        if on_main:
            self._sending += 1
        try:
            with self._send_lock:
                self._conn.send_bytes(frame)
        except OSError:
            exit_orphaned()
        finally:
            if on_main:
                self._sending -= 1
                self._raise_deferred_stop()

    def _raise_deferred_stop(self) -> None:
        if self._deferred_stop and not self._sending:
            self._deferred_stop = False
            ctx = next(iter(self._running.values()), None)
            if self._in_handler and ctx is not None and ctx.stop_reason is not None:
                raise stop_exception(ctx.stop_reason)

    # ------------------------------------------------------------------ async mode

    def _serve_async(self, ctx: TaskContext, handler: Callable[..., Any]) -> None:
        # Imported here: a fork server that imports the worker side would otherwise pay ~15 ms for
        # it at every start, and only async handlers need it.
        import asyncio

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._async_main(loop, ctx, handler))
        finally:
            loop.close()

    async def _async_main(
        self, loop: asyncio.AbstractEventLoop, ctx: TaskContext, handler: Callable[..., Any]
    ) -> None:
        import asyncio

        inbox: asyncio.Queue[protocol.Message] = asyncio.Queue()
        with self._lock:
            self._loop = loop
        self._tasks.forward_to(lambda msg: loop.call_soon_threadsafe(inbox.put_nowait, msg))
        self._start_async(ctx, handler)
        while isinstance(msg := await inbox.get(), protocol.RunTask):
            if not self._claim(msg):
                continue
            prepared = self._prepare(msg)
            if isinstance(prepared, protocol.TaskFailed):
                self._send(prepared)
            else:
                self._start_async(*prepared)
        if self._async_tasks:
            await asyncio.wait(list(self._async_tasks.values()))

    def _start_async(self, ctx: TaskContext, handler: Callable[..., Any]) -> None:
        import asyncio

        self._send(protocol.TaskStarted(ctx.task_id, True))
        task = asyncio.get_running_loop().create_task(self._run_async(ctx, handler))
        self._async_tasks[ctx.task_id] = task
        if ctx.stop_reason is not None:
            task.cancel()

    async def _run_async(self, ctx: TaskContext, handler: Callable[..., Any]) -> None:
        import asyncio

        started = time.perf_counter()
        try:
            with current_task(ctx, process_wide=False):
                result = await handler(ctx)
        except asyncio.CancelledError:
            reason = ctx.stop_reason or "cancelled"
            reply: protocol.Message = failure(ctx.task_id, reason, stop_exception(reason))
        except BaseException as exc:  # noqa: BLE001 - user code: any failure is the task's
            reply = self._classify(ctx, exc)
        else:
            reply = self._result_message(ctx, result, time.perf_counter() - started)
        finally:
            self._async_tasks.pop(ctx.task_id, None)
            self._finished(ctx)
        self._send(reply)
        if not self._async_tasks:  # the processes of tasks still running are theirs
            self._strays.reap()

    def _cancel_async(self, task_id: str) -> None:
        task = self._async_tasks.get(task_id)
        if task is not None:
            task.cancel()

    def _classify(self, ctx: TaskContext, exc: BaseException) -> protocol.TaskFailed:
        raised = exc.original if isinstance(exc, CallRaised) else exc
        if isinstance(raised, MemoryError) and self._memory_capped:
            return over_cap(ctx.task_id, raised, self._max_memory_mb)
        return classify(ctx, exc)

    def _resolve(self, path: str) -> Callable[..., Any]:
        handler = self._handlers.get(path)
        if handler is None:
            handler = self._handlers[path] = resolve_handler(path)
        return handler


def _dependencies(packed: Any) -> dict[str, Any]:
    """``ctx.deps`` from the wire form ``[results, errors]`` (an empty map when there are none)."""
    if not packed:
        return {}
    results, errors = packed
    return {**results, **{task_id: TaskError.from_wire(fields) for task_id, fields in errors.items()}}
