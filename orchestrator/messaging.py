"""Topics on the host: who subscribes to what, and the delivery of each published message.

The `Broker` lives on the supervisor's thread, so a publish is delivered to exactly the
subscriptions open when the supervisor handles it. A worker's subscription is fed over its pipe
(the worker keeps the bounded buffer); a host subscription keeps its own bounded buffer and its
callback runs on the event thread. A message whose data went to shared memory is packed once
for every worker subscriber; its blocks are unlinked when each of them has copied it out, or
has ended.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.backends.base import WorkerHandle
from orchestrator.events import EventBus
from orchestrator.models import Message
from workers import protocol
from workers.shm import BlockWriter, unlink_block

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _WorkerSubscription:
    worker: WorkerHandle
    task_id: str
    sub_id: int
    topic: str
    unread: set[int] = field(default_factory=set)


class _HostSubscription:
    """A callback's subscription: a bounded buffer drained on the event thread."""

    def __init__(self, topic: str, callback: Callable[[Message], object], limit: int) -> None:
        self.topic = topic
        self.callback = callback
        self.limit = limit
        self.closed = False
        self._items: deque[Message] = deque()
        self._dropped = 0
        self._lock = threading.Lock()
        self._draining = False

    def put(self, message: Message) -> bool:
        """Buffer a message; True when a drain must be scheduled."""
        with self._lock:
            if len(self._items) >= self.limit:
                self._items.popleft()
                self._dropped += 1
            self._items.append(message)
            if self._draining:
                return False
            self._draining = True
            return True

    def drain(self) -> None:
        """Hand every buffered message to the callback (on the event thread)."""
        while True:
            with self._lock:
                if not self._items or self.closed:
                    self._draining = False
                    return
                message = self._items.popleft()
                if self._dropped:
                    message = message.model_copy(update={"dropped": self._dropped})
                    self._dropped = 0
            try:
                self.callback(message)
            except Exception:
                logger.exception("a subscriber to %r raised; it stays subscribed", self.topic)


class Broker:
    """Every subscription of one orchestrator, and the messages still in shared memory."""

    def __init__(self, bus: EventBus, blocks: BlockWriter | None, limit: int) -> None:
        self._bus = bus
        self._blocks = blocks
        self.limit = limit
        self._topics: dict[str, list[_WorkerSubscription | _HostSubscription]] = {}
        self._of_task: dict[str, dict[int, _WorkerSubscription]] = {}
        self._by_sub: dict[tuple[int, int], _WorkerSubscription] = {}
        # Messages in shared memory: id -> (block names, subscriptions yet to copy them out).
        self._in_blocks: dict[int, tuple[list[str], int]] = {}
        self._message_ids = itertools.count(1)

    def subscribe_worker(self, worker: WorkerHandle, task_id: str, sub_id: int, topic: str) -> None:
        """Open a running task's subscription."""
        subscription = _WorkerSubscription(worker, task_id, sub_id, topic)
        self._of_task.setdefault(task_id, {})[sub_id] = subscription
        self._by_sub[worker.worker_id, sub_id] = subscription
        self._topics.setdefault(topic, []).append(subscription)

    def unsubscribe_worker(self, task_id: str, sub_id: int) -> None:
        """Close one of a task's subscriptions."""
        subscription = self._of_task.get(task_id, {}).pop(sub_id, None)
        if subscription is not None:
            self._remove(subscription)

    def end_task(self, task_id: str) -> None:
        """Close every subscription of a task whose attempt ended."""
        subscriptions = self._of_task.pop(task_id, None)
        for subscription in subscriptions.values() if subscriptions else ():
            self._remove(subscription)

    def subscribe_host(self, topic: str, callback: Callable[[Message], object]) -> _HostSubscription:
        """Open a host callback's subscription."""
        subscription = _HostSubscription(topic, callback, self.limit)
        self._topics.setdefault(topic, []).append(subscription)
        return subscription

    def unsubscribe_host(self, subscription: _HostSubscription) -> None:
        """Close a host callback's subscription."""
        subscription.closed = True
        self._remove(subscription)

    def publish(self, topic: str, data: Any, sender: str | None) -> None:
        """Deliver ``data`` (already round-tripped through msgpack) to the topic's subscriptions."""
        subscriptions = self._topics.get(topic)
        if not subscriptions:
            return
        to_workers = [s for s in subscriptions if isinstance(s, _WorkerSubscription)]
        if to_workers:
            self._send_to_workers(to_workers, topic, data, sender)
        for subscription in subscriptions:
            if isinstance(subscription, _HostSubscription):
                message = Message.model_construct(topic=topic, data=data, sender=sender, dropped=0)
                if subscription.put(message):
                    self._bus.post(None, subscription.drain)

    def received(self, worker: WorkerHandle, sub_id: int, message_id: int) -> None:
        """A worker's subscription copied a message out of its blocks."""
        subscription = self._by_sub.get((worker.worker_id, sub_id))
        if subscription is not None and message_id in subscription.unread:
            subscription.unread.discard(message_id)
            self._drop_reader(message_id)

    def close(self) -> None:
        """Unlink the blocks of every message still in flight."""
        for names, _ in self._in_blocks.values():
            for name in names:
                unlink_block(name)
        self._in_blocks.clear()

    def _send_to_workers(
        self, subscriptions: list[_WorkerSubscription], topic: str, data: Any, sender: str | None
    ) -> None:
        created: list[str] = []
        packed = protocol.pack_payload(data, self._blocks, created)
        message_id = next(self._message_ids) if created else 0
        if created:
            self._in_blocks[message_id] = (created, len(subscriptions))
        for subscription in subscriptions:
            delivered = subscription.worker.send(
                protocol.Deliver(subscription.sub_id, topic, packed, sender, message_id)
            )
            if message_id and delivered:
                subscription.unread.add(message_id)
            elif message_id:
                self._drop_reader(message_id)

    def _remove(self, subscription: _WorkerSubscription | _HostSubscription) -> None:
        subscriptions = self._topics.get(subscription.topic, [])
        if subscription in subscriptions:
            subscriptions.remove(subscription)
        if not subscriptions:
            self._topics.pop(subscription.topic, None)
        if isinstance(subscription, _WorkerSubscription):
            self._by_sub.pop((subscription.worker.worker_id, subscription.sub_id), None)
            for message_id in subscription.unread:
                self._drop_reader(message_id)
            subscription.unread.clear()

    def _drop_reader(self, message_id: int) -> None:
        """One reader less for a message in blocks; the last one unlinks them."""
        entry = self._in_blocks.get(message_id)
        if entry is None:
            return
        names, readers = entry
        if readers > 1:
            self._in_blocks[message_id] = (names, readers - 1)
            return
        del self._in_blocks[message_id]
        for name in names:
            unlink_block(name)
