"""Wire messages, spec and config validation, and the public API's shape."""

from __future__ import annotations

import multiprocessing
import os
import struct
import threading

import pytest
from pydantic import ValidationError

import orchestrator
from orchestrator import ConfigError, InvalidTaskError, OrchestratorConfig, TaskSpec, TaskStatus
from workers import framing, protocol

MESSAGES = [
    protocol.RunTask(
        "t-1", "echo", "m:f", "d", protocol.pack_payload({"a": 1}), protocol.pack_payload({}), 2
    ),
    protocol.StopTask("t-1", "timeout"),
    protocol.Shutdown(),
    protocol.Hello(3, 1234, protocol.PROTOCOL_VERSION),
    protocol.TaskStarted("t-1", True),
    protocol.TaskProgress("t-1", 2, None, "half"),
    protocol.TaskPartial("t-1", protocol.pack_payload([1, 2])),
    protocol.TaskDone("t-1", protocol.pack_payload({"ok": True}), 0.25),
    protocol.TaskFailed("t-1", "exception", "boom", "Traceback...", "ValueError"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_round_trip(message: protocol.Message) -> None:
    assert protocol.decode(protocol.encode(message)) == message


@pytest.mark.parametrize("frame", [b"", b"\x93\x01\x02\x03", protocol.pack_payload([99, "x"]), b"\xc1"])
def test_malformed_frames_are_protocol_errors(frame: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match=r"undecodable|carries 2 fields"):
        protocol.decode(frame)


@pytest.mark.parametrize("value", [{1, 2}, object(), 2**64, lambda: 0])
def test_unpackable_payloads_say_why(value: object) -> None:
    with pytest.raises(protocol.PayloadError, match="not msgpack-serialisable"):
        protocol.pack_payload(value)


def test_payloads_keep_int_keys_and_turn_tuples_into_lists() -> None:
    assert protocol.unpack_payload(protocol.pack_payload({1: (2, 3), "b": b"x"})) == {1: [2, 3], "b": b"x"}


def test_task_spec_defaults() -> None:
    spec = TaskSpec(type="research", config={"topic": "x"})
    assert (spec.priority, spec.timeout, spec.retries, spec.depends_on, spec.on_dependency_failure) == (
        5,
        None,
        0,
        (),
        "fail",
    )
    assert spec.config == {"topic": "x"}


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"priority": 11}, "priority"),
        ({"priority": True}, "priority"),
        ({"timeout": 0}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"on_dependency_failure": "skip"}, "on_dependency_failure"),
        ({"config": {"k": {1, 2}}}, "not msgpack-serialisable"),
        ({"config": {(1, 2): "tuple key"}}, "config"),
    ],
)
def test_task_spec_rejects(fields: dict, where: str) -> None:
    with pytest.raises(InvalidTaskError, match=where):
        TaskSpec(type="echo", **fields)


def test_config_is_frozen_and_strict() -> None:
    config = OrchestratorConfig()
    assert (config.max_workers, config.min_workers, config.idle_timeout, config.task_queue_size) == (
        5,
        0,
        300.0,
        100,
    )
    assert config.start_method == "forkserver"
    assert config.name == "default"
    assert config.enable_auto_scaling
    with pytest.raises(ValidationError):
        config.max_workers = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="name"):
        OrchestratorConfig(name="../etc")
    assert set(config.task_handlers()) == {"monitor", "research", "learn", "optimize", "analyze"}


def test_task_status_is_a_str_enum() -> None:
    assert TaskStatus("running") is TaskStatus.RUNNING
    assert TaskStatus.COMPLETED == "completed"
    assert [s.is_final for s in TaskStatus] == [False, False, True, True, True]


def test_public_api_is_exactly_all() -> None:
    required = {
        "ParallelOrchestrator",
        "OrchestratorConfig",
        "TaskSpec",
        "TaskResult",
        "TaskError",
        "TaskStatus",
        "Progress",
        "WorkerInfo",
        "OrchestratorStatus",
        "OrchestratorError",
        "QueueFullError",
        "TaskNotFoundError",
        "UnknownTaskTypeError",
    }
    assert required <= set(orchestrator.__all__)
    assert set(orchestrator.__all__) == {n for n in dir(orchestrator) if not n.startswith("_")}
    for name in orchestrator.__all__:
        assert getattr(orchestrator, name).__doc__, f"{name} has no docstring"


def test_errors_share_one_root() -> None:
    for name in orchestrator.__all__:
        value = getattr(orchestrator, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, orchestrator.OrchestratorError)


def _frame(body: bytes, long: bool = False) -> bytes:
    if long:
        return struct.pack("!i", -1) + struct.pack("!Q", len(body)) + body
    return struct.pack("!i", len(body)) + body


def test_frame_reader_splits_what_arrived_and_keeps_the_rest_for_later() -> None:
    read_end, write_end = os.pipe()
    try:
        reader = protocol.FrameReader(read_end)
        stream = _frame(b"one") + _frame(b"") + _frame(b"three", long=True) + _frame(b"x" * 200_000)
        os.write(write_end, stream[:5])  # a header and one byte of the first body
        assert reader.read() == []
        os.write(write_end, stream[5:20])
        assert reader.read() == [b"one", b""]
        writer = threading.Thread(target=os.write, args=(write_end, stream[20:]))
        writer.start()
        frames: list[bytes] = []
        while len(frames) < 2:
            frames += reader.read()
        writer.join()
        assert frames == [b"three", b"x" * 200_000]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_frame_reader_reports_end_of_file_and_corrupt_headers() -> None:
    read_end, write_end = os.pipe()
    reader = protocol.FrameReader(read_end)
    os.write(write_end, struct.pack("!i", -7) + b"junk")
    with pytest.raises(protocol.ProtocolError, match="corrupt frame header"):
        reader.read()
    os.close(write_end)
    with pytest.raises(EOFError):
        reader.read()
    os.close(read_end)


@pytest.mark.parametrize("run_s", [-1.0, float("nan"), float("inf"), "1", None])
def test_a_run_time_a_worker_could_not_have_measured_is_a_protocol_error(run_s: object) -> None:
    lying = protocol.pack_payload([protocol.TaskDone.TAG, "t-1", protocol.pack_payload(None), run_s])
    with pytest.raises(protocol.ProtocolError, match=r"TaskDone\.run_s"):
        protocol.decode(lying)


def test_several_frames_in_one_write_read_back_as_sent() -> None:
    receiving, sending = multiprocessing.Pipe(duplex=False)
    tasks = [MESSAGES[0], protocol.RunTask("t-2", "echo", "m:f", "", b"\x80", b"\xc0", 1, seq=2)]
    framing.write_all(sending.fileno(), b"".join(framing.frame(protocol.encode(t)) for t in tasks))
    assert [protocol.decode(receiving.recv_bytes()) for _ in tasks] == tasks
    receiving.close()
    sending.close()


def test_frame_reader_reads_what_connection_send_bytes_writes() -> None:
    receiving, sending = multiprocessing.Pipe()
    messages = [protocol.encode(m) for m in MESSAGES]
    for frame in messages:
        sending.send_bytes(frame)
    reader = protocol.FrameReader(receiving.fileno())
    frames: list[bytes] = []
    while len(frames) < len(messages):
        frames += reader.read()
    assert [protocol.decode(f) for f in frames] == MESSAGES
    receiving.close()
    sending.close()


def _a_final_result() -> orchestrator.TaskResult:
    from datetime import UTC, datetime

    from orchestrator.models import TaskError

    return orchestrator.TaskResult(
        task_id="ab-7",
        status=TaskStatus.ERROR,
        success=False,
        data={"partial": [1, 2]},
        error=TaskError(kind="exception", message="boom", traceback="tb", exception_type="ValueError"),
        attempts=2,
        worker_pid=4321,
        started_at=datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC),
        finished_at=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
        duration_s=0.75,
        parent="ab-1",
    )


def test_one_wire_form_of_a_result_serves_ctx_wait_and_the_journal() -> None:
    from orchestrator.journal import journal_result, restore_result
    from orchestrator.models import result_from_wire, result_wire
    from workers.values import ChildResult

    result = _a_final_result()
    wire = protocol.unpack_payload(protocol.pack_payload(result_wire(result)))
    assert result_from_wire(wire) == result
    child = ChildResult.from_wire(wire)
    assert (child.task_id, child.status, child.attempts, child.parent) == ("ab-7", "error", 2, "ab-1")
    assert child.error is not None
    assert child.error.exception_type == "ValueError"
    assert child.started_at == result.started_at
    stored = journal_result(result)
    assert b"ab-7" not in stored  # the row's own columns hold the id, status and attempts
    assert restore_result("ab-7", TaskStatus.ERROR, 2, stored) == result


def test_a_result_stored_by_an_older_release_still_restores() -> None:
    from orchestrator.journal import restore_result

    older = protocol.pack_payload(  # no parent: releases before sub-tasks did not store it
        {"data": 3, "error": None, "worker_pid": 9, "started_at": 1.5, "finished_at": 2.0, "duration_s": 0.5}
    )
    restored = restore_result("ab-3", TaskStatus.COMPLETED, 1, older)
    assert (restored.success, restored.data, restored.parent, restored.duration_s) == (True, 3, None, 0.5)
