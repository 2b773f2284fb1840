"""A worker that lies to its host: every field of every message is checked at decode, and a worker
that breaks the protocol is killed, its task ends as crashed, and the supervisor goes on."""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import ParallelOrchestrator, TaskStatus
from tests.conftest import DEADLOCK_TIMEOUT
from tests.helpers.hostile import TASK_ID
from workers import protocol

pytestmark = pytest.mark.timeout(120)

T = TASK_ID


def deep_map(levels: int) -> bytes:
    """A msgpack map nested ``levels`` deep, built by hand (msgpack itself refuses to pack it)."""
    return b"\x81\xa1a" * levels + b"\xc0"


def deep_submit_args(levels: int) -> bytes:
    spec = b"\x82\xa4type\xa4echo\xa6config" + deep_map(levels)
    return b"\x82\xa4spec" + spec + b"\xa8detached\xc2"


def assert_still_serves(orch: ParallelOrchestrator) -> None:
    tid = orch.submit_task({"type": "echo", "config": {"value": "alive"}})
    assert orch.wait(tid, timeout=DEADLOCK_TIMEOUT).success
    assert orch.get_status().state == "running"


VIOLATIONS = {
    "usage-with-a-string-rss": ([[21, "lots", 1.0]], "Usage.rss is a str"),
    "usage-negative": ([[21, -5, 1.0]], "Usage.rss is -5"),
    "progress-nan": ([[12, T, math.nan, None, "x"]], "TaskProgress.completed is nan"),
    "progress-bool": ([[12, T, True, None, "x"]], "TaskProgress.completed is a bool"),
    "failure-of-a-host-kind": ([[15, T, "worker_crashed", "m", "", ""]], "TaskFailed.kind"),
    "retry-after-inf": ([[15, T, "rate_limit", "m", "", "", math.inf]], "retry_after is inf"),
    "hello-of-another-version": ([[10, 1, 2, 99]], "protocol version 99"),
    "unknown-tag": ([[99, T]], "undecodable"),
    "missing-fields": ([[14, T]], "carries 1 fields"),
    "not-msgpack": ([b"\xc1\xc1\xc1"], "undecodable"),
    "not-an-array": ([msgpack.packb({"a": 1})], "undecodable"),
    "invalid-utf8": ([b"\x92\x0e\xa2\xff\xfe"], "undecodable"),
    "revoked-unasked": ([[16, T]], "did not ask back"),
    "frame-of-2-62-bytes": ([{"raw": struct.pack("!iQ", -1, 2**62)}], "announced"),
    "negative-frame-length": ([{"raw": struct.pack("!i", -7)}], "corrupt frame header"),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_a_lie_kills_only_the_liar(
    make_orch: Callable[..., ParallelOrchestrator], case: str, caplog: pytest.LogCaptureFixture
) -> None:
    frames, why = VIOLATIONS[case]
    orch = make_orch(max_workers=2)
    result = orch.wait(orch.submit_task({"type": "liar", "config": {"frames": frames}}), DEADLOCK_TIMEOUT)
    assert result.error is not None, result
    assert result.error.kind == "worker_crashed"
    assert "broke the protocol" in result.error.message
    assert why in result.error.message
    assert any(r.levelno == logging.ERROR and "broke the protocol" in r.getMessage() for r in caplog.records)
    assert_still_serves(orch)


def test_a_very_deep_child_spec_is_refused_to_the_task(
    make_orch: Callable[..., ParallelOrchestrator],
) -> None:
    """The RecursionError that ended the supervisor: now an error reply, and the worker lives on."""
    orch = make_orch(max_workers=1)
    frames = [[18, T, 0, "submit", deep_submit_args(900)]]
    result = orch.wait(orch.submit_task({"type": "liar", "config": {"frames": frames}}), DEADLOCK_TIMEOUT)
    assert result.success, result.error
    assert result.data == "told"
    assert orch.get_status().completed == 1  # no child task was created
    assert_still_serves(orch)


# Values of every wire type and some that are none, including the edges of each.
_WIRE_INT = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    _WIRE_INT,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.just(T),
    st.lists(_WIRE_INT, max_size=3),
    st.dictionaries(st.text(max_size=3), _WIRE_INT, max_size=2),
)


@st.composite
def worker_frames(draw: st.DrawFn) -> list[Any]:
    """A real message of the worker's kinds with one field swapped for any value, or garbage."""
    kind = draw(st.sampled_from(["mutated", "mutated", "random", "bytes"]))
    if kind == "bytes":
        return [draw(st.binary(max_size=40))]
    if kind == "random":
        return [[draw(st.integers(min_value=0, max_value=30)), *draw(st.lists(_ANY_VALUE, max_size=7))]]
    sample = draw(st.sampled_from(_VALID))
    fields = list(sample)
    if draw(st.booleans()):
        index = draw(st.integers(min_value=1, max_value=len(fields) - 1))
        fields[index] = draw(_ANY_VALUE)
    return [fields]


_VALID: list[list[Any]] = [
    [11, T, False],
    [12, T, 1, 2, "half"],
    [13, T, protocol.pack_payload({"p": 1})],
    [14, T, protocol.pack_payload("early")],
    [15, T, "exception", "boom", "tb", "ValueError"],
    [15, T, "rate_limit", "slow", "", "RateLimitError", 0.0],
    [17, T, "topic", protocol.pack_payload(1)],
    [18, T, 0, "forget", protocol.pack_payload(1)],
    [18, T, 0, "wait", protocol.pack_payload({"ids": ["x"], "any": False})],
    [19, T, True],
    [19, T, False],
    [20, 1, 1],
    [21, 1000, 0.5],
    [22, T, "mypkg", 20, "a record", "", 1.0],
    [22, None, "x" * 5000, 10**18, "m" * 70_000, "tb", 1e300],
]


def test_fuzzed_worker_messages_never_end_the_supervisor(
    make_orch: Callable[..., ParallelOrchestrator],
) -> None:
    """Mutated and random messages on a real worker's pipe: every task ends, the pool serves on."""
    orch = make_orch(max_workers=2)

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(frames=st.lists(worker_frames(), min_size=1, max_size=3))
    def lie(frames: list[list[Any]]) -> None:
        flat = [frame for group in frames for frame in group]
        result = orch.wait(orch.submit_task({"type": "liar", "config": {"frames": flat}}), DEADLOCK_TIMEOUT)
        assert result.status in (TaskStatus.COMPLETED, TaskStatus.ERROR)
        if result.error is not None:
            assert result.error.kind in {"worker_crashed", "exception", "serialization", "rate_limit"}
        assert orch.get_status().state == "running"

    lie()
    assert_still_serves(orch)


def test_a_log_record_with_an_impossible_time_and_a_huge_text_is_tamed(
    make_orch: Callable[..., ParallelOrchestrator], caplog: pytest.LogCaptureFixture
) -> None:
    orch = make_orch(max_workers=1)
    frames = [[22, T, "liar.logger", 40, "m" * 100_000, "", 1e300]]
    result = orch.wait(orch.submit_task({"type": "liar", "config": {"frames": frames}}), DEADLOCK_TIMEOUT)
    assert result.success
    (record,) = [r for r in caplog.records if r.name == "liar.logger"]
    assert abs(record.created - time.time()) < DEADLOCK_TIMEOUT  # dated by the host instead
    assert len(record.getMessage()) < 70_000  # cut, saying by how much
    assert record.getMessage().endswith("characters cut)")
    assert record.task_id == result.task_id  # type: ignore[attr-defined]
    assert_still_serves(orch)
