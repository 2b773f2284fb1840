"""A worker's side of tasks that talk: topics, sub-tasks and waiting for them.

`Link` is one per worker process. Task code (the main thread, or the event loop of an async
worker) sends requests through it; the reader thread hands it the host's replies and deliveries.
Each blocking wait tells the host the task is waiting (`protocol.Waiting`), so the host can lend
the task's slot to other work while it waits: a coordinator waiting for its children, or a team
member waiting for a message, never starves the pool.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Self

from workers import protocol
from workers.errors import QueueFullError, UnknownTaskTypeError
from workers.shm import BlockReader
from workers.values import Message

if TYPE_CHECKING:
    import asyncio

_ERRORS: dict[str, type[Exception]] = {
    "UnknownTaskTypeError": UnknownTaskTypeError,
    "QueueFullError": QueueFullError,
    "InvalidTaskError": ValueError,
    "ValueError": ValueError,
    "KeyError": KeyError,
    "TaskNotFoundError": KeyError,
    "GroupNotFoundError": KeyError,
    "TypeError": TypeError,
}


class _Pending:
    """One call waiting for its reply: on a thread (an Event) or in an event loop (a Future)."""

    __slots__ = ("done", "future", "loop", "reply")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.reply: protocol.Reply | None = None
        self.done = threading.Event()
        self.loop = loop
        self.future: asyncio.Future[protocol.Reply] | None = loop.create_future() if loop else None

    def resolve(self, reply: protocol.Reply) -> None:
        self.reply = reply
        self.done.set()
        if self.loop is not None and self.future is not None:
            self.loop.call_soon_threadsafe(_settle, self.future, reply)


def _settle(future: asyncio.Future[protocol.Reply], reply: protocol.Reply) -> None:
    if not future.done():
        future.set_result(reply)


class _Buffer:
    """A subscription's messages: at most ``limit``, the oldest dropped first (and counted)."""

    def __init__(self, limit: int) -> None:
        self._items: deque[Message] = deque()
        self._limit = limit
        self._dropped = 0
        self.cond = threading.Condition(threading.Lock())
        self.wakers: list[Callable[[], None]] = []

    def put(self, message: Message) -> None:
        with self.cond:
            if len(self._items) >= self._limit:
                self._items.popleft()
                self._dropped += 1
            self._items.append(message)
            self.cond.notify_all()
            wakers = list(self.wakers)
        for wake in wakers:
            wake()

    def take(self) -> Message | None:
        """The oldest message (carrying the count dropped since the last one), or None."""
        with self.cond:
            return self._take_locked()

    def _take_locked(self) -> Message | None:
        if not self._items:
            return None
        message = self._items.popleft()
        if self._dropped:
            message = Message(message.topic, message.data, message.sender, self._dropped)
            self._dropped = 0
        return message


class Link:
    """One worker's requests to the host and the replies and messages that come back."""

    def __init__(
        self,
        send: Callable[[protocol.Message], None],
        pack: Callable[[Any], bytes],
        accepted_blocks: str | None = None,
    ) -> None:
        self._send = send
        self._pack = pack
        # The prefix of the blocks a delivered message may name (None: it may name none).
        self._accepted_blocks = accepted_blocks
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._calls: dict[int, _Pending] = {}
        self._buffers: dict[int, _Buffer] = {}
        self._subs_of_task: dict[str, set[int]] = {}
        self._waits: dict[str, int] = {}

    # ------------------------------------------------------------ from the reader thread

    def on_reply(self, reply: protocol.Reply) -> None:
        """Hand a reply to its waiting call (late replies to abandoned calls are dropped)."""
        with self._lock:
            pending = self._calls.pop(reply.call_id, None)
        if pending is not None:
            pending.resolve(reply)

    def on_deliver(self, msg: protocol.Deliver) -> None:
        """Put a message in its subscription's buffer, copied out of its block if it has one."""
        if msg.message_id:
            data = protocol.unpack_payload(
                msg.data, BlockReader(copy=True, accept=self._accepted_blocks, unlink=False)
            )
            self._send(protocol.Received(msg.sub_id, msg.message_id))
        else:
            data = protocol.unpack_payload(msg.data)
        with self._lock:
            buffer = self._buffers.get(msg.sub_id)
        if buffer is not None:
            buffer.put(Message(msg.topic, data, msg.sender))

    # ------------------------------------------------------------ from task code

    def publish(self, task_id: str, topic: str, data: Any) -> None:
        """Send a message; raise TypeError in the caller when it cannot travel."""
        _check_topic(topic)
        try:
            protocol.check_payload(data, "data")
            packed = self._pack(data)
        except protocol.PayloadError as exc:
            raise TypeError(f"publish to {topic!r}: {exc}") from None
        self._send(protocol.Publish(task_id, topic, packed))

    def subscribe(self, task_id: str, topic: str) -> tuple[int, _Buffer]:
        """Open a subscription; it receives every message the host handles after this returns."""
        _check_topic(topic)
        sub_id = next(self._ids)
        limit = self.call(task_id, "subscribe", [sub_id, topic], waits=False)
        buffer = _Buffer(limit)
        with self._lock:
            self._buffers[sub_id] = buffer
            self._subs_of_task.setdefault(task_id, set()).add(sub_id)
        return sub_id, buffer

    def unsubscribe(self, task_id: str, sub_id: int) -> None:
        """Close a subscription (idempotent)."""
        with self._lock:
            if self._buffers.pop(sub_id, None) is None:
                return
            self._subs_of_task.get(task_id, set()).discard(sub_id)
        self._send(protocol.Call(task_id, 0, "unsubscribe", self._pack(sub_id)))

    def end_task(self, task_id: str) -> None:
        """Forget a finished task's subscriptions (the host closes its side itself)."""
        with self._lock:
            for sub_id in self._subs_of_task.pop(task_id, set()):
                self._buffers.pop(sub_id, None)
            self._waits.pop(task_id, None)

    def call(self, task_id: str, op: str, args: Any, timeout: float | None = None, waits: bool = True) -> Any:
        """Ask the host and block for its answer; ``waits`` marks the task as waiting meanwhile."""
        call_id, pending = self._register(None)
        self._send(protocol.Call(task_id, call_id, op, self._pack(args)))
        with self.waiting(task_id) if waits else contextlib.nullcontext():
            if not pending.done.wait(timeout):
                self._abandon(task_id, call_id)
                raise TimeoutError(f"{op}: no answer within {timeout} s (the tasks go on)")
        assert pending.reply is not None
        return self._outcome(pending.reply)

    async def call_async(self, task_id: str, op: str, args: Any, timeout: float | None = None) -> Any:
        """`call` for an async handler: awaits the answer instead of blocking the loop."""
        import asyncio

        call_id, pending = self._register(asyncio.get_running_loop())
        assert pending.future is not None
        self._send(protocol.Call(task_id, call_id, op, self._pack(args)))
        with self.waiting(task_id):
            try:
                reply = await asyncio.wait_for(asyncio.shield(pending.future), timeout)
            except TimeoutError:
                self._abandon(task_id, call_id)
                raise TimeoutError(f"{op}: no answer within {timeout} s (the tasks go on)") from None
            except asyncio.CancelledError:
                self._abandon(task_id, call_id)
                raise
        return self._outcome(reply)

    @contextlib.contextmanager
    def waiting(self, task_id: str) -> Iterator[None]:
        """Tell the host the task waits (the outermost of nested waits), and when it goes on."""
        with self._lock:
            depth = self._waits.get(task_id, 0)
            self._waits[task_id] = depth + 1
        if depth == 0:
            self._send(protocol.Waiting(task_id, True))
        try:
            yield
        finally:
            with self._lock:
                depth = self._waits.get(task_id, 1) - 1
                if depth:
                    self._waits[task_id] = depth
                else:
                    self._waits.pop(task_id, None)
            if depth == 0:
                self._send(protocol.Waiting(task_id, False))

    def _register(self, loop: asyncio.AbstractEventLoop | None) -> tuple[int, _Pending]:
        call_id = next(self._ids)
        pending = _Pending(loop)
        with self._lock:
            self._calls[call_id] = pending
        return call_id, pending

    def _abandon(self, task_id: str, call_id: int) -> None:
        with self._lock:
            self._calls.pop(call_id, None)
        self._send(protocol.Call(task_id, 0, "forget", self._pack(call_id)))

    @staticmethod
    def _outcome(reply: protocol.Reply) -> Any:
        if reply.error:
            raise _ERRORS.get(reply.error, RuntimeError)(reply.message)
        return protocol.unpack_payload(reply.value)


class _Subscribed:
    """What both kinds of subscription share: the open subscription and how it closes."""

    def __init__(self, link: Link, task_id: str, topic: str) -> None:
        self.topic = topic
        self._link = link
        self._task_id = task_id
        self._sub_id, self._buffer = link.subscribe(task_id, topic)
        self._closed = False

    def close(self) -> None:
        """Stop receiving (messages already buffered are discarded)."""
        self._closed = True
        self._link.unsubscribe(self._task_id, self._sub_id)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the subscription to {self.topic!r} is closed")


class Subscription(_Subscribed):
    """Messages on one topic for a running task; `receive` blocks (the task's slot is lent out)."""

    def receive(self, timeout: float | None = None) -> Message:
        """The next message; `TimeoutError` if none comes within ``timeout`` seconds."""
        _refuse_in_event_loop("receive", "subscribe_async")
        self._check_open()
        message = self._buffer.take()
        if message is not None:
            return message
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._link.waiting(self._task_id), self._buffer.cond:
            while (message := self._buffer._take_locked()) is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"no message on {self.topic!r} within {timeout} s")
                self._buffer.cond.wait(left)
        return message

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Message]:
        while True:
            yield self.receive()


class AsyncSubscription(_Subscribed):
    """`Subscription` for async handlers: ``await sub.receive()`` and ``async for msg in sub``."""

    def __init__(self, link: Link, task_id: str, topic: str) -> None:
        import asyncio

        super().__init__(link, task_id, topic)
        loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(self._arrived.set)

        self._buffer.wakers.append(wake)

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message; `TimeoutError` if none comes within ``timeout`` seconds."""
        import asyncio

        self._check_open()
        message = self._buffer.take()
        if message is not None:
            return message
        with self._link.waiting(self._task_id):
            async with asyncio.timeout(timeout):
                while (message := self._buffer.take()) is None:
                    self._arrived.clear()
                    if (message := self._buffer.take()) is not None:
                        break
                    await self._arrived.wait()
        return message

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        return await self.receive()


def _check_topic(topic: str) -> None:
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"a topic is a non-empty str, not {topic!r}")


def _refuse_in_event_loop(what: str, instead: str) -> None:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:  # not imported (the worker side imports it lazily): no loop can be running
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{what} blocks: inside an async handler use {instead} instead")
