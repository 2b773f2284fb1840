"""Handlers used by the integration tests; module-level so that every start method imports them."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from workers import TaskContext

HANDLERS = {
    name: f"tests.helpers.tasks:{name}"
    for name in (
        "echo",
        "blocker",
        "other_blocker",
        "steps",
        "sleep",
        "fail",
        "unserialisable",
        "exit_hard",
        "sigkill_self",
        "segfault",
        "ignore_stop",
        "async_echo",
        "async_sleep",
        "partials",
        "poll_cancel",
        "allocate",
        "crash_once",
        "rate_limited",
        "busy_cpu",
        "async_blocking",
        "deps",
        "throttled",
        "payload",
        "array_payload",
        "give_back",
        "leak_and_crash",
        "logged",
        "ticker",
        "stubborn",
        "raw_deps",
        "raise_named",
        "with_child",
        "allocate_fast",
        "log_some",
        "log_flood",
        "log_badly",
        "frozen_objects",
    )
}
HANDLERS["bad_import"] = "tests.helpers.no_such_module:handler"
HANDLERS["liar"] = "tests.helpers.hostile:liar"
HANDLERS["forged_block"] = "tests.helpers.hostile:forged_block"
HANDLERS.update(
    {
        name: f"tests.helpers.talk:{name}"
        for name in (
            "listener",
            "talker",
            "backlog",
            "misuse",
            "coordinator",
            "async_coordinator",
            "parent",
            "member",
            "judge",
            "async_listener",
            "waiter",
        )
    }
)


def echo(ctx: TaskContext) -> Any:
    """Return the config, with this worker's pid."""
    return {"config": ctx.config, "pid": os.getpid()}


def _wait_for_release(ctx: TaskContext) -> None:
    release = Path(ctx.config["release"])
    while not release.exists():
        time.sleep(0.005)


def blocker(ctx: TaskContext) -> Any:
    """Run until the file named by config['release'] exists (the test creates it)."""
    _wait_for_release(ctx)
    return {"released": ctx.task_id, "pid": os.getpid()}


other_blocker = blocker


def steps(ctx: TaskContext) -> Any:
    """Report config['n'] progress steps, then return n."""
    n = ctx.config.get("n", 3)
    for i in range(1, n + 1):
        ctx.progress(i, n, f"step {i}")
    return n


def sleep(ctx: TaskContext) -> Any:
    """Sleep config['seconds'] (a stop request interrupts it at once)."""
    time.sleep(ctx.config.get("seconds", 60))
    return "slept"


def fail(ctx: TaskContext) -> Any:
    """Raise a ValueError with config['message']."""
    raise ValueError(ctx.config.get("message", "boom"))


def unserialisable(ctx: TaskContext) -> Any:
    """Return an object msgpack cannot carry."""
    return {"when": object()}


def exit_hard(ctx: TaskContext) -> Any:
    """Kill the worker with os._exit(3)."""
    os._exit(3)


def sigkill_self(ctx: TaskContext) -> Any:
    """SIGKILL the worker."""
    os.kill(os.getpid(), signal.SIGKILL)


def segfault(ctx: TaskContext) -> Any:
    """Crash the worker with a segmentation fault."""
    ctypes.string_at(0)


def ignore_stop(ctx: TaskContext) -> Any:
    """Block every signal, as code stuck in C would, and never return on its own."""
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
    threading.Event().wait()


async def async_echo(ctx: TaskContext) -> Any:
    """An async handler: await, then return the config."""
    await asyncio.sleep(0.01)
    return ctx.config


async def async_sleep(ctx: TaskContext) -> Any:
    """An async handler that sleeps config['seconds']."""
    await asyncio.sleep(ctx.config.get("seconds", 60))
    return "slept"


def partials(ctx: TaskContext) -> Any:
    """Emit config['n'] partial results, then return their count."""
    n = ctx.config.get("n", 3)
    for i in range(n):
        ctx.emit({"i": i})
    return n


def stubborn(ctx: TaskContext) -> Any:
    """Swallow every stop request and run until the file named by config['release'] exists."""
    while True:
        with contextlib.suppress(BaseException):
            _wait_for_release(ctx)
            return "released"


def poll_cancel(ctx: TaskContext) -> Any:
    """Catch the stop exception and poll ctx.cancelled, returning what it saw."""
    with contextlib.suppress(BaseException):
        time.sleep(60)
    return {"cancelled": ctx.cancelled}


def allocate(ctx: TaskContext) -> Any:
    """Hold config['mb'] MiB of touched memory until stopped."""
    block = bytearray(ctx.config["mb"] * 2**20)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    time.sleep(60)
    return len(block)


def allocate_fast(ctx: TaskContext) -> Any:
    """Touch 10 MiB more at a time, up to config['mb'], as fast as it can; the worker's peak RSS
    (VmHWM, bytes) goes to config['peak_file'] however it ends."""
    chunks = []
    try:
        for _ in range(ctx.config["mb"] // 10):
            chunks.append(b"\x01" * (10 * 2**20))
        return len(chunks)
    finally:
        chunks.clear()
        status = Path("/proc/self/status").read_text()
        peak_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
        Path(ctx.config["peak_file"]).write_text(str(peak_kib * 1024))


def crash_once(ctx: TaskContext) -> Any:
    """Crash on the first attempt, succeed on later ones."""
    if ctx.attempt == 1:
        os._exit(5)
    return ctx.attempt


def rate_limited(ctx: TaskContext) -> Any:
    """Raise RateLimitError on attempts before config['ok_on'], then succeed."""
    from workers import RateLimitError

    if ctx.attempt < ctx.config.get("ok_on", 99):
        raise RateLimitError("429 too many requests", retry_after=ctx.config.get("retry_after"))
    return ctx.attempt


def busy_cpu(ctx: TaskContext) -> Any:
    """Burn CPU in pure Python until stopped."""
    n = 0
    while True:
        n += 1


async def async_blocking(ctx: TaskContext) -> Any:
    """Await config['await'] seconds, then block the event loop config['block'] seconds (a stuck task)."""
    await asyncio.sleep(ctx.config.get("await", 0))
    time.sleep(ctx.config.get("block", 0))
    return "done"


def deps(ctx: TaskContext) -> Any:
    """Return what the task saw: its deps (errors as dicts) and its config, after sleeping config['sleep']."""
    time.sleep(ctx.config.get("sleep", 0))
    if ctx.config.get("fail"):
        raise RuntimeError(f"{ctx.description} failed on purpose")
    seen = {
        key: (
            {"error": value.kind, "message": value.message}
            if value.__class__.__name__ == "TaskError"
            else value
        )
        for key, value in ctx.deps.items()
    }
    return {"name": ctx.description, "deps": seen, "config": ctx.config, "value": ctx.config.get("value")}


def with_child(ctx: TaskContext) -> Any:
    """Start a process that ignores SIGTERM (its pid goes to config['pidfile']), then: "return",
    "wait" until stopped, "ignore_stop" (block every signal, as code stuck in C would),
    "swallow_stop" (catch every stop and go on), or "daemon" (a double-forked process that leaves
    its parent, then return)."""
    import subprocess

    mode = ctx.config["mode"]
    pidfile = ctx.config["pidfile"]
    if mode == "daemon":
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                Path(pidfile).write_text(str(os.getpid()))
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                time.sleep(60)
            os._exit(0)
        while not Path(pidfile).exists():
            time.sleep(0.005)
        return "daemon started"
    subprocess.Popen(
        ["sh", "-c", 'trap "" TERM; echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 60', "sh", pidfile]
    )
    while not Path(pidfile).exists():
        time.sleep(0.005)
    if mode == "wait":
        time.sleep(60)
    elif mode == "ignore_stop":
        ignore_stop(ctx)
    elif mode == "swallow_stop":
        while True:
            with contextlib.suppress(BaseException):
                time.sleep(60)
    return "child started"


def raw_deps(ctx: TaskContext) -> Any:
    """Return ctx.deps exactly as the task got it."""
    return ctx.deps


class FlakyServiceError(Exception):
    """An exception a retry_on list can name."""


def raise_named(ctx: TaskContext) -> Any:
    """Raise FlakyServiceError (or ValueError with config['other']) until attempt config['ok_on']."""
    if ctx.attempt < ctx.config.get("ok_on", 99):
        raise (ValueError if ctx.config.get("other") else FlakyServiceError)(f"attempt {ctx.attempt}")
    return ctx.attempt


def throttled(ctx: TaskContext) -> Any:
    """Raise RateLimitError(retry_after) while the file config['gate'] does not exist."""
    from workers import RateLimitError

    if not os.path.exists(ctx.config["gate"]):
        raise RateLimitError("slow down", retry_after=ctx.config.get("retry_after"))
    return "ok"


def payload(ctx: TaskContext) -> Any:
    """Describe the config's 'blob' (its type and size), emit one, and return one of config['size'] bytes."""
    blob = ctx.config.get("blob")
    size = ctx.config.get("size", 0)
    ctx.emit({"partial": bytes(size)})
    return {
        "seen_type": type(blob).__name__,
        "seen_len": len(blob) if blob is not None else None,
        "readonly": getattr(blob, "readonly", None),
        "first": blob[0] if blob else None,
        "back": b"\x07" * size,
    }


def array_payload(ctx: TaskContext) -> Any:
    """Return the config's array doubled (NumPy), reporting how it arrived."""
    import numpy

    array = ctx.config["array"]
    return {"arrived_as": type(array).__name__, "doubled": numpy.asarray(array) * 2}


def give_back(ctx: TaskContext) -> Any:
    """Return the config's values as they arrived (block-backed views stay views)."""
    return {key: ctx.config[key] for key in ctx.config}


def leak_and_crash(ctx: TaskContext) -> Any:
    """Create a shared-memory block named config['name'] (as a worker's result would be), then die."""
    from multiprocessing import shared_memory

    shared_memory.SharedMemory(name=ctx.config["name"], create=True, size=4096).close()
    os._exit(9)


def logged(ctx: TaskContext) -> Any:
    """Append 'task_id attempt' to config['log'] (O_APPEND), then sleep 600 s on attempt 1 if config['hang']."""
    with open(ctx.config["log"], "a") as log:
        log.write(f"{ctx.task_id} {ctx.attempt}\n")
    if ctx.config.get("hang") and ctx.attempt == 1:
        time.sleep(600)
    return ctx.attempt


def ticker(ctx: TaskContext) -> Any:
    """Append a line to config['log'] every 10 ms for a minute: a side effect that shows it runs."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(ctx.config["log"], "a") as log:
            log.write("tick\n")
        time.sleep(0.01)
    return "done"


def log_some(ctx: TaskContext) -> str:
    """Logs at three levels, one with a traceback, on a logger of its own and on ``ctx.logger``."""
    log = logging.getLogger("mypkg.summarize")
    log.debug("below the forwarded level")
    log.info("reading %d sources", 3)
    log.warning("source %s is slow", "b")
    try:
        raise KeyError("source c")
    except KeyError:
        log.exception("source c failed")
    ctx.logger.info("through the context")
    return "logged"


def log_flood(ctx: TaskContext) -> int:
    """Logs ``config["records"]`` records as fast as it can."""
    log = logging.getLogger("mypkg.flood")
    for index in range(ctx.config["records"]):
        log.info("record %d", index)
    return int(ctx.config["records"])


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for this")


def log_badly(ctx: TaskContext) -> str:
    """Logs records whose message cannot be formatted; the task still ends well."""
    log = logging.getLogger("mypkg.bad")
    log.warning("%d items", "not a number")
    log.warning("value %s", _Unprintable())
    log.warning("too few %s %s", "arguments")
    return "survived"


def init_that_logs() -> None:
    """A worker initializer that logs, outside any task."""
    logging.getLogger("mypkg.setup").warning("model loaded in pid %d", os.getpid())


def frozen_objects(ctx: TaskContext) -> int:
    """How many objects this worker's garbage collector never walks (`gc.freeze`)."""
    import gc

    return gc.get_freeze_count()
