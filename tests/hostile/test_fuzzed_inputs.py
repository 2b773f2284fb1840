"""Random frames on the control socket, random configs, specs and plans: each is answered or
refused with the API's own error, and nothing stops serving."""

from __future__ import annotations

import contextlib
import math
import socket
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import OrchestratorConfig, OrchestratorError, ParallelOrchestrator, TaskSpec
from orchestrator.wire import SOCKET_SUFFIX, WireError, recv_frame, runtime_dir, send_frame
from tests.conftest import DEADLOCK_TIMEOUT

pytestmark = pytest.mark.timeout(300)

_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.sampled_from([math.inf, -math.inf, math.nan, 0, -1, 1e300, 2**31, 10**12]),
    st.text(max_size=12),
    st.binary(max_size=12),
)
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_OPS = st.sampled_from(["status", "workers", "tasks", "result", "submit", "cancel", "watch", "nope", ""])
_KEYS = st.sampled_from(["task_id", "limit", "status", "type", "spec", "name", "config", "priority"])


@st.composite
def control_frames(draw: st.DrawFn) -> bytes:
    """A request as the wire carries it: a well-formed map of odd content, or broken framing."""
    kind = draw(st.sampled_from(["request", "request", "body", "header"]))
    if kind == "header":
        return draw(st.binary(max_size=12))
    if kind == "body":
        body = draw(st.binary(max_size=64))
    else:
        request: dict[Any, Any] = {"op": draw(st.one_of(_OPS, _SCALAR))}
        request.update(draw(st.dictionaries(_KEYS, _VALUE, max_size=4)))
        if request["op"] == "submit" and draw(st.booleans()):
            request["spec"] = {"type": "echo", "config": draw(st.dictionaries(st.text(max_size=4), _VALUE))}
        body = msgpack.packb(request, use_bin_type=True)
    length = draw(st.one_of(st.just(len(body)), st.integers(min_value=0, max_value=2**32 - 1)))
    return struct.pack(">I", length) + body


def test_fuzzed_control_frames_never_end_the_server(make_orch: Callable[..., ParallelOrchestrator]) -> None:
    make_orch(max_workers=1, control_socket=True, name="fuzzed", task_queue_size=100_000)
    path = str(runtime_dir() / f"fuzzed{SOCKET_SUFFIX}")

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(frame=control_frames())
    def poke(frame: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(DEADLOCK_TIMEOUT)
            sock.connect(path)
            sock.sendall(frame)
            sock.shutdown(socket.SHUT_WR)  # a frame cut short ends here, not at the idle timeout
            try:
                reply = recv_frame(sock)
            except WireError:
                return  # the server closed the connection mid-reply (a watch): allowed
            assert reply is None or "ok" in reply or "event" in reply

    poke()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(DEADLOCK_TIMEOUT)
        sock.connect(path)
        send_frame(sock, {"op": "status"})
        reply = recv_frame(sock)
    assert reply is not None
    assert reply["ok"]
    assert reply["data"]["status"]["state"] == "running"


_FIELDS = st.sampled_from([*OrchestratorConfig.model_fields, "not_a_field"])


@given(fields=st.dictionaries(_FIELDS, _VALUE, max_size=5))
def test_random_configs_are_accepted_or_a_config_error(fields: dict[str, Any]) -> None:
    with contextlib.suppress(OrchestratorError):
        OrchestratorConfig(**fields)


_SPEC_FIELDS = st.sampled_from([*TaskSpec.model_fields, "id", "bogus"])


def test_random_specs_and_plans_are_accepted_or_refused(
    make_orch: Callable[..., ParallelOrchestrator],
) -> None:
    orch = make_orch(max_workers=1, task_queue_size=1_000_000)
    ids = st.sampled_from(["a", "b", "c", "d", "1x", "", "a b", "$a"])
    spec = st.fixed_dictionaries(
        {"type": st.sampled_from(["echo", "echo", "nope", ""])},
        optional={
            "id": ids,
            "depends_on": st.lists(ids, max_size=3),
            "config": st.dictionaries(
                st.text(max_size=4), st.one_of(_VALUE, st.sampled_from(["$a", "$b.x.0", "$$", "$c.", "x$a"]))
            ),
        },
    ).flatmap(
        lambda base: st.dictionaries(_SPEC_FIELDS, _VALUE, max_size=2).map(lambda extra: {**extra, **base})
    )

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(plan=st.lists(spec, max_size=5), single=spec)
    def submit(plan: list[dict[str, Any]], single: dict[str, Any]) -> None:
        for attempt in (lambda: orch.submit_plan(plan), lambda: orch.submit_task(single)):
            with contextlib.suppress(OrchestratorError):
                attempt()

    submit()
    assert orch.get_status().state == "running"
