"""Large payloads travel in shared memory, and no block outlives its task, a crash or shutdown."""

from __future__ import annotations

import os

import pytest

from orchestrator.backends.local import _helper_lease
from tests.conftest import DEADLOCK_TIMEOUT, Recorder
from workers.shm import BlockReader, BlockWriter, unlink_block

MIB = 2**20


def our_blocks() -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"orch_{os.getpid()}")]


@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_large_bytes_round_trip_through_shared_memory(make_orch, method: str, recorder: Recorder) -> None:
    orch = make_orch(start_method=method)
    orch.on("task_partial", recorder)
    blob = bytes(range(256)) * 4096  # 1 MiB
    result = orch.wait(
        orch.submit_task({"type": "payload", "config": {"blob": blob, "size": MIB}}), DEADLOCK_TIMEOUT
    )
    assert result.success, result.error
    data = result.data
    assert (data["seen_type"], data["seen_len"], data["readonly"], data["first"]) == (
        "memoryview",
        MIB,
        True,
        0,
    )
    assert data["back"] == b"\x07" * MIB
    assert isinstance(data["back"], bytes)
    recorder.wait_for(lambda events: len(events) == 1)
    assert recorder.events[0].data["partial"] == bytes(MIB)
    assert our_blocks() == [], "every block is unlinked once its task is final"


def test_small_payloads_stay_on_the_pipe(make_orch) -> None:
    orch = make_orch(shm_threshold=4096)
    result = orch.wait(
        orch.submit_task({"type": "payload", "config": {"blob": b"x" * 100, "size": 10}}), DEADLOCK_TIMEOUT
    )
    assert result.data["seen_type"] == "bytes"


def test_shared_memory_can_be_turned_off(make_orch) -> None:
    orch = make_orch(shm_threshold=None)
    result = orch.wait(
        orch.submit_task({"type": "payload", "config": {"blob": b"x" * MIB, "size": MIB}}), DEADLOCK_TIMEOUT
    )
    assert result.data["seen_type"] == "bytes"
    assert len(result.data["back"]) == MIB


def test_numpy_arrays(make_orch) -> None:
    numpy = pytest.importorskip("numpy")
    orch = make_orch()
    array = numpy.arange(100_000, dtype=numpy.float64).reshape(1000, 100)
    result = orch.wait(
        orch.submit_task({"type": "array_payload", "config": {"array": array}}), DEADLOCK_TIMEOUT
    )
    assert result.success, result.error
    assert result.data["arrived_as"] == "ndarray"
    assert numpy.array_equal(result.data["doubled"], array * 2)
    assert our_blocks() == []


def test_blocks_are_unlinked_after_a_timeout_kill(make_orch) -> None:
    orch = make_orch(timeout_grace=0.2)
    spec = {"type": "ignore_stop", "config": {"blob": b"z" * MIB}, "timeout": 0.3}
    assert orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT).error.kind == "timeout"
    assert our_blocks() == []


def test_a_crashed_workers_blocks_are_unlinked(make_orch, recorder: Recorder) -> None:
    orch = make_orch(max_workers=1)
    orch.on("worker_exited", recorder)
    orch.wait(
        orch.submit_task({"type": "leak_and_crash", "config": {"name": "warmup-unused"}}), DEADLOCK_TIMEOUT
    )
    recorder.wait_for(lambda events: len(events) == 1)
    orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT)
    (worker,) = orch.get_workers()
    namespace = orch._block_namespace
    name = f"orch_{namespace}_w{worker.worker_id + 1}_leaked"
    result = orch.wait(
        orch.submit_task({"type": "leak_and_crash", "config": {"name": name}}), DEADLOCK_TIMEOUT
    )
    assert result.error.kind == "worker_crashed"
    recorder.wait_for(lambda events: len(events) == 3)
    assert not os.path.exists(f"/dev/shm/{name}"), "the dead worker's block was unlinked"


def test_a_buffer_given_back_arrives_as_a_copy_of_the_hosts_block(make_orch) -> None:
    numpy = pytest.importorskip("numpy")
    orch = make_orch()
    blob = bytes(range(256)) * 4096
    array = numpy.arange(200_000, dtype=numpy.int64)
    result = orch.wait(
        orch.submit_task({"type": "give_back", "config": {"blob": blob, "array": array}}), DEADLOCK_TIMEOUT
    )
    assert result.success, result.error
    assert type(result.data["blob"]) is bytes
    assert result.data["blob"] == blob
    assert numpy.array_equal(result.data["array"], array)
    assert result.data["array"].flags.writeable, "the host's copy is its own"
    assert our_blocks() == [], "the config's blocks are unlinked once the task is over"


def test_a_buffer_a_worker_was_lent_goes_back_by_name_and_is_not_unlinked_by_the_copy() -> None:
    _helper_lease.acquire()  # the resource tracker the blocks start is stopped again at release
    host_blocks: list[str] = []
    try:
        config = BlockWriter(f"orch_t{os.getpid()}_h_", 1024).pack({"blob": b"\x05" * 4096}, host_blocks)
        worker_view = BlockReader(copy=False, accept=f"orch_t{os.getpid()}_")
        blob = worker_view.unpack(config)["blob"]
        made: list[str] = []
        result = BlockWriter(f"orch_t{os.getpid()}_w_", 1024).pack(
            [blob, bytes(blob)], made, worker_view.lent
        )
        worker_view.close()
        assert len(made) == 1, "only the copy the handler made needs a block of its own"
        assert BlockReader(copy=True, accept=f"orch_t{os.getpid()}_").unpack(result) == [b"\x05" * 4096] * 2
        assert os.path.exists(f"/dev/shm/{host_blocks[0]}"), "its owner unlinks a lent block, not the copy"
        assert not os.path.exists(f"/dev/shm/{made[0]}"), "a block made for the result goes once copied"
    finally:
        for name in host_blocks:
            unlink_block(name)
        _helper_lease.release()


def test_blocks_work_through_their_mappings_where_they_have_no_file(monkeypatch) -> None:
    from workers import shm

    monkeypatch.setattr(shm, "SHM_DIRECTORY", "/nonexistent")  # as on a system without /dev/shm
    _helper_lease.acquire()
    made: list[str] = []
    try:
        blob = bytes(range(256)) * 64
        packed = BlockWriter(f"orch_t{os.getpid()}_m_", 1024).pack({"blob": blob}, made)
        assert len(made) == 1
        assert BlockReader(copy=True, accept=f"orch_t{os.getpid()}_").unpack(packed) == {"blob": blob}
        assert not os.path.exists(f"/dev/shm/{made[0]}"), "copied out, then unlinked"
    finally:
        for name in made:
            unlink_block(name)
        _helper_lease.release()


def test_results_as_views_are_read_only_mappings_and_leave_no_block(make_orch, recorder: Recorder) -> None:
    numpy = pytest.importorskip("numpy")
    orch = make_orch(result_buffers="view")
    orch.on("task_partial", recorder)
    result = orch.wait(
        orch.submit_task({"type": "payload", "config": {"blob": b"x" * MIB, "size": MIB}}), DEADLOCK_TIMEOUT
    )
    back = result.data["back"]
    assert isinstance(back, memoryview)
    assert back.readonly
    assert back == b"\x07" * MIB
    with pytest.raises(TypeError):
        back[0] = 1
    recorder.wait_for(lambda events: len(events) == 1)
    assert recorder.events[0].data["partial"] == bytes(MIB)
    array = numpy.arange(100_000, dtype=numpy.float64)
    doubled = orch.wait(
        orch.submit_task({"type": "array_payload", "config": {"array": array}}), DEADLOCK_TIMEOUT
    ).data["doubled"]
    assert not doubled.flags.writeable
    assert numpy.array_equal(doubled, array * 2)
    assert our_blocks() == [], "a view's block is unlinked at once: only the mapping stays"
    small = orch.wait(orch.submit_task({"type": "payload", "config": {"size": 10}}), DEADLOCK_TIMEOUT)
    assert small.data["back"] == b"\x07" * 10  # below the threshold: plain bytes as ever


def test_a_block_shorter_than_its_reference_is_refused_not_mapped() -> None:
    _helper_lease.acquire()
    try:
        writer = BlockWriter(f"orch_{os.getpid()}short_h_", 1024)
        created: list[str] = []
        packed = writer.pack(b"y" * 4096, created)
        (name,) = created
        fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
        os.ftruncate(fd, 100)  # a liar shrinks its block after naming it: mapping it would SIGBUS
        os.close(fd)
        reader = BlockReader(copy=True, accept=f"orch_{os.getpid()}short", views=True)
        with pytest.raises(ValueError, match="shorter than its reference"):
            reader.unpack(packed)
    finally:
        for name in our_blocks():
            unlink_block(name)
        _helper_lease.release()
