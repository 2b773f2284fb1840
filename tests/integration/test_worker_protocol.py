"""A worker process driven over its pipe by the test, as the supervisor drives it: the messages
each task costs, and the answer to a Revoke that comes too late."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from tests.conftest import DEADLOCK_TIMEOUT
from workers import protocol
from workers.runtime import worker_main

ECHO = "tests.helpers.tasks:echo"


@pytest.fixture
def worker() -> Iterator[Connection]:
    host_end, worker_end = multiprocessing.Pipe()
    process = multiprocessing.get_context("fork").Process(
        target=worker_main, args=(worker_end, 1, os.getpid(), [host_end.fileno()], None, "test")
    )
    process.start()
    worker_end.close()
    assert isinstance(_receive(host_end), protocol.Hello)
    yield host_end
    host_end.send_bytes(protocol.encode(protocol.Shutdown()))
    process.join(DEADLOCK_TIMEOUT)
    assert process.exitcode == 0
    host_end.close()


def _receive(conn: Connection) -> protocol.Message:
    assert conn.poll(DEADLOCK_TIMEOUT), "the worker did not answer"
    return protocol.decode(conn.recv_bytes())


def _run(conn: Connection, task_id: str, report_start: bool) -> None:
    msg = protocol.RunTask(
        task_id,
        "echo",
        ECHO,
        "",
        protocol.pack_payload({"n": 1}),
        protocol.pack_payload(None),
        1,
        report_start=report_start,
    )
    conn.send_bytes(protocol.encode(msg))


def test_a_task_reports_its_start_only_when_asked(worker: Connection) -> None:
    _run(worker, "asked", report_start=True)
    assert _receive(worker) == protocol.TaskStarted("asked", False)
    done = _receive(worker)
    assert isinstance(done, protocol.TaskDone)
    assert done.task_id == "asked"
    _run(worker, "not-asked", report_start=False)
    done = _receive(worker)
    assert isinstance(done, protocol.TaskDone)
    assert done.task_id == "not-asked"
    assert protocol.unpack_payload(done.data)["config"] == {"n": 1}


def test_a_revoke_after_the_task_was_taken_is_answered_with_its_start(worker: Connection) -> None:
    _run(worker, "quick", report_start=False)
    assert isinstance(_receive(worker), protocol.TaskDone)
    worker.send_bytes(protocol.encode(protocol.Revoke("quick")))
    assert _receive(worker) == protocol.TaskStarted("quick", False)
