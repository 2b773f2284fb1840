"""`HostTopics`: the host's side of topics, what `publish` and `subscribe` check and post."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from orchestrator.errors import OrchestratorClosedError
from orchestrator.models import Message
from orchestrator.supervisor import Supervisor
from workers import protocol


class HostTopics:
    """Publishes and subscribes for the host, through the supervisor's broker."""

    def __init__(self, supervisor: Callable[[], Supervisor]) -> None:
        self._supervisor = supervisor

    def publish(self, topic: str, data: Any) -> None:
        """See `ParallelOrchestrator.publish`."""
        _check_topic(topic)
        try:
            protocol.check_payload(data, "data")
            copied = protocol.unpack_payload(protocol.pack_payload(data))
        except protocol.PayloadError as exc:
            raise TypeError(f"publish to {topic!r}: {exc}") from None
        supervisor = self._supervisor()
        supervisor.call(lambda: supervisor.publish(topic, copied))

    def subscribe(self, topic: str, callback: Callable[[Message], object]) -> Callable[[], None]:
        """See `ParallelOrchestrator.subscribe`."""
        _check_topic(topic)
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        supervisor = self._supervisor()
        subscription = supervisor.call(lambda: supervisor.broker.subscribe_host(topic, callback))

        def unsubscribe() -> None:
            subscription.closed = True
            with contextlib.suppress(OrchestratorClosedError):  # it has exited: nothing is delivered
                supervisor.post(lambda: supervisor.broker.unsubscribe_host(subscription))

        return unsubscribe


def _check_topic(topic: str) -> None:
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"a topic is a non-empty str, not {topic!r}")
