"""The worker process: take tasks from the host's pipe, run their handlers, send the outcome back.

Two threads. The main thread runs handlers, one task at a time, and is the only one that calls
user code. A small reader thread owns the pipe's read side: it queues tasks for the main thread,
turns a stop request (cancel or timeout) into a signal to the main thread, and notices when the
host is gone (EOF on the pipe, or its pid no longer alive), in which case the worker kills its
own children and exits: no worker outlives its host, whatever the start method.

A stop request raises `TaskCancelled`/`TaskTimeout` inside the handler through ``SIGUSR1``. The
signal is blocked whenever the main thread is not inside the handler, and a flag guards the rest,
so a stop can never interrupt the loop itself or a message half written to the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, Final, NoReturn

from workers import protocol
from workers.context import RateLimitError, TaskCancelled, TaskContext, stop_exception
from workers.registry import resolve_handler

STOP_SIGNAL: Final = signal.SIGUSR1
_STOP_MASK: Final = {STOP_SIGNAL}

# How often the reader thread checks that the host is alive while the pipe is quiet. EOF already
# reports a dead host under spawn and forkserver; under fork, siblings may hold copies of the
# host's pipe ends, so the pid check is what bounds the time an orphan lives.
HOST_CHECK_INTERVAL: Final = 0.5


def worker_main(conn: Connection, worker_id: int, host_pid: int, host_end_fd: int) -> None:
    """Entry point of a worker process: serve tasks from ``conn`` until told to stop.

    Args:
        conn: this worker's end of its duplex pipe to the host.
        worker_id: the host's number for this worker.
        host_pid: the host's pid, watched so that the worker never outlives it.
        host_end_fd: the fd number of the host's end of the pipe; under ``fork`` the child holds
            a copy of it, which must be closed or EOF would never report the host's death.
    """
    if host_end_fd >= 0:
        with contextlib.suppress(OSError):
            os.close(host_end_fd)
    _WorkerRuntime(conn, worker_id, host_pid).serve()


class _WorkerRuntime:
    """The state of one worker process, shared by its main thread and its reader thread."""

    def __init__(self, conn: Connection, worker_id: int, host_pid: int) -> None:
        self._conn = conn
        self._worker_id = worker_id
        self._host_pid = host_pid
        self._main_ident = threading.get_ident()
        self._inbox: queue.SimpleQueue[protocol.Message] = queue.SimpleQueue()
        self._send_lock = threading.Lock()
        # Guards the hand-over of a stop request between the reader thread and the main thread.
        self._stop_lock = threading.Lock()
        self._current: TaskContext | None = None
        self._early_stops: dict[str, str] = {}
        self._in_handler = False
        self._sending = 0
        self._deferred_stop = False
        self._async_task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: dict[str, Callable[..., Any]] = {}

    def serve(self) -> None:
        """Run tasks until the host sends Shutdown; exit at once if the host dies."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the host
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_MASK)
        signal.signal(STOP_SIGNAL, self._on_stop_signal)
        self._send(protocol.Hello(self._worker_id, os.getpid(), protocol.PROTOCOL_VERSION))
        reader = threading.Thread(target=self._read_host_messages, name="orch-reader", daemon=True)
        reader.start()
        while True:
            msg = self._inbox.get()
            if not isinstance(msg, protocol.RunTask):
                break
            reply = self._run_task(msg)
            del msg
            self._send(reply)
        if self._loop is not None:
            self._loop.close()

    def _read_host_messages(self) -> None:
        # Signals are for the main thread: a handler that blocks SIGTERM there is not overruled here.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, STOP_SIGNAL})
        while True:
            try:
                if not self._conn.poll(HOST_CHECK_INTERVAL):
                    if not _process_alive(self._host_pid):
                        _exit_orphaned()
                    continue
                msg = protocol.decode(self._conn.recv_bytes())
            except (EOFError, OSError):
                _exit_orphaned()
            except protocol.ProtocolError as exc:
                print(f"orchestrator worker {os.getpid()}: {exc}", file=sys.stderr)
                _exit_orphaned()
            if isinstance(msg, protocol.StopTask):
                self._request_stop(msg.task_id, msg.reason)
                continue
            self._inbox.put(msg)
            if isinstance(msg, protocol.Shutdown):
                return

    def _request_stop(self, task_id: str, reason: str) -> None:
        with self._stop_lock:
            ctx = self._current
            if ctx is None or ctx.task_id != task_id:
                self._early_stops[task_id] = reason
                return
            ctx.request_stop(reason)
        signal.pthread_kill(self._main_ident, STOP_SIGNAL)

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        ctx = self._current
        if not self._in_handler or ctx is None or ctx.stop_reason is None:
            return
        if self._async_task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._async_task.cancel)
        elif self._sending:
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
            _exit_orphaned()
        finally:
            if on_main:
                self._sending -= 1
                self._raise_deferred_stop()

    def _raise_deferred_stop(self) -> None:
        if self._deferred_stop and not self._sending:
            self._deferred_stop = False
            ctx = self._current
            if self._in_handler and ctx is not None and ctx.stop_reason is not None:
                raise stop_exception(ctx.stop_reason)

    def _run_task(self, msg: protocol.RunTask) -> protocol.Message:
        try:
            handler = self._resolve(msg.handler)
            config = protocol.unpack_payload(msg.config)
            deps = protocol.unpack_payload(msg.deps)
        except Exception as exc:  # noqa: BLE001 - reported to the host as the task's error
            return _failure(msg.task_id, "exception", exc, prefix=f"handler {msg.handler!r}: ")
        ctx = TaskContext(msg.task_id, msg.task_type, msg.description, config, deps, msg.attempt, self._send)
        with self._stop_lock:
            self._current = ctx
            early_stop = self._early_stops.pop(msg.task_id, None)
        try:
            if early_stop is not None:
                return _failure(msg.task_id, early_stop, stop_exception(early_stop))
            self._send(protocol.TaskStarted(msg.task_id))
            return self._outcome(ctx, handler)
        finally:
            with self._stop_lock:
                self._current = None

    def _outcome(self, ctx: TaskContext, handler: Callable[..., Any]) -> protocol.Message:
        try:
            result = self._invoke(handler, ctx)
        except TaskCancelled as exc:
            return _failure(ctx.task_id, ctx.stop_reason or exc.kind, exc)
        except RateLimitError as exc:
            return _failure(ctx.task_id, "rate_limit", exc)
        except BaseException as exc:  # noqa: BLE001 - user code: any failure is the task's
            return _failure(ctx.task_id, "exception", exc)
        try:
            return protocol.TaskDone(ctx.task_id, protocol.pack_payload(result))
        except protocol.PayloadError as exc:
            return _failure(ctx.task_id, "serialization", exc, prefix="the handler's result is ")

    def _invoke(self, handler: Callable[..., Any], ctx: TaskContext) -> Any:
        """Call the handler with the stop signal deliverable, and only while it runs."""
        run: Callable[[], Any]
        if inspect.iscoroutinefunction(handler):
            loop = self._event_loop()
            self._async_task = loop.create_task(handler(ctx))
            run = partial(loop.run_until_complete, self._async_task)
        else:
            run = partial(handler, ctx)
        self._in_handler = True
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_MASK)
        try:
            return run()
        except asyncio.CancelledError as exc:
            if ctx.stop_reason is None:
                raise
            raise stop_exception(ctx.stop_reason) from exc
        finally:
            self._in_handler = False
            self._async_task = None
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_MASK)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop

    def _resolve(self, path: str) -> Callable[..., Any]:
        handler = self._handlers.get(path)
        if handler is None:
            handler = self._handlers[path] = resolve_handler(path)
        return handler


def _failure(task_id: str, kind: str, exc: BaseException, prefix: str = "") -> protocol.TaskFailed:
    text = str(exc) or type(exc).__name__
    trace = "".join(traceback.format_exception(exc))
    return protocol.TaskFailed(task_id, kind, prefix + text, trace, type(exc).__name__)


def _process_alive(pid: int) -> bool:
    """True unless ``pid`` is gone or a zombie (a dead host not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _exit_orphaned() -> NoReturn:
    """The host is gone: kill this worker's own children (a handler's subprocesses), then exit."""
    with contextlib.suppress(Exception):
        import psutil

        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
    os._exit(0)
