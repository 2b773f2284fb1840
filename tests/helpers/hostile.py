"""Handlers that break the rules on purpose: a worker that lies to its host."""

from __future__ import annotations

import os
from typing import Any

import msgpack

from workers import TaskContext

TASK_ID = "$task"


def liar(ctx: TaskContext) -> Any:
    """Send config['frames'] to the host on the worker's own pipe, then return "told".

    A frame given as bytes goes as it is; one given as a list is packed first, with every
    ``"$task"`` in it replaced by this task's id; ``{"raw": bytes}`` is written to the pipe unframed.
    """
    runtime = ctx._send.__self__  # type: ignore[attr-defined]
    with runtime._send_lock:
        for frame in ctx.config["frames"]:
            if isinstance(frame, dict):
                os.write(runtime._conn.fileno(), frame["raw"])  # not even framed as the protocol says
                continue
            if isinstance(frame, list):
                frame = msgpack.packb([ctx.task_id if part == TASK_ID else part for part in frame])
            runtime._conn.send_bytes(frame)
    return "told"


def forged_block(ctx: TaskContext) -> Any:
    """Return a shared-memory reference naming config['name'] (config['code'], default bytes)."""
    name = ctx.config["name"]
    return {"stolen": msgpack.ExtType(ctx.config.get("code", 1), msgpack.packb([name, ctx.config["size"]]))}
