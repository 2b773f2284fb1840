"""A worker process driven over its pipes by the test, as the supervisor drives it: the messages
each task costs, and how a Revoke is answered before and after the task was taken."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection

import pytest

from tests.conftest import DEADLOCK_TIMEOUT
from workers import protocol
from workers.runtime import worker_main


@dataclass
class Worker:
    """The host's ends: ``control`` for everything, ``tasks`` for RunTask and Shutdown."""

    control: Connection
    tasks: Connection

    def run(
        self, task_id: str, handler: str, config: dict[str, object], seq: int, report_start: bool
    ) -> None:
        packed = protocol.pack_payload(config)
        msg = protocol.RunTask(task_id, "t", handler, "", packed, protocol.pack_payload(None), 1)
        msg.report_start, msg.seq = report_start, seq
        self.tasks.send_bytes(protocol.encode(msg))

    def receive(self) -> protocol.Message:
        assert self.control.poll(DEADLOCK_TIMEOUT), "the worker did not answer"
        return protocol.decode(self.control.recv_bytes())


@pytest.fixture(params=["task pipe", "one connection"])
def worker(request: pytest.FixtureRequest) -> Iterator[Worker]:
    """A local worker (tasks on a pipe of their own), or one as a Dask node runs it (one connection)."""
    host_end, worker_end = multiprocessing.Pipe()
    task_reader, task_writer = multiprocessing.Pipe(duplex=False)
    separate = request.param == "task pipe"
    process = multiprocessing.get_context("fork").Process(
        target=worker_main,
        args=(worker_end, 1, os.getpid(), [host_end.fileno(), task_writer.fileno()], None, "test"),
        kwargs={"task_conn": task_reader if separate else None},
    )
    process.start()
    worker_end.close()
    task_reader.close()
    worker = Worker(host_end, task_writer if separate else host_end)
    assert isinstance(worker.receive(), protocol.Hello)
    yield worker
    worker.tasks.send_bytes(protocol.encode(protocol.Shutdown()))
    process.join(DEADLOCK_TIMEOUT)
    assert process.exitcode == 0
    host_end.close()
    task_writer.close()


def test_a_task_reports_its_start_only_when_asked(worker: Worker) -> None:
    worker.run("asked", "tests.helpers.tasks:echo", {"n": 1}, seq=1, report_start=True)
    assert worker.receive() == protocol.TaskStarted("asked", False)
    done = worker.receive()
    assert isinstance(done, protocol.TaskDone)
    assert done.task_id == "asked"
    worker.run("not-asked", "tests.helpers.tasks:echo", {"n": 2}, seq=2, report_start=False)
    done = worker.receive()
    assert isinstance(done, protocol.TaskDone)
    assert protocol.unpack_payload(done.data)["config"] == {"n": 2}


def test_a_revoke_after_the_task_was_taken_is_answered_with_its_start(worker: Worker) -> None:
    worker.run("quick", "tests.helpers.tasks:echo", {}, seq=1, report_start=False)
    assert isinstance(worker.receive(), protocol.TaskDone)
    worker.control.send_bytes(protocol.encode(protocol.Revoke("quick", 1)))
    assert worker.receive() == protocol.TaskStarted("quick", False)


def test_a_task_revoked_while_it_waits_behind_another_never_runs(worker: Worker, tmp_path) -> None:
    release = tmp_path / "release"
    worker.run("long", "tests.helpers.tasks:blocker", {"release": str(release)}, seq=1, report_start=True)
    assert worker.receive() == protocol.TaskStarted("long", False)
    worker.run("queued", "tests.helpers.tasks:echo", {}, seq=2, report_start=False)
    worker.control.send_bytes(protocol.encode(protocol.Revoke("queued", 2)))
    assert worker.receive() == protocol.Revoked("queued")
    # The same task sent again (as the host may, once it is queued again) runs this time.
    worker.run("queued", "tests.helpers.tasks:echo", {"again": True}, seq=3, report_start=False)
    release.touch()
    replies = [worker.receive(), worker.receive()]
    assert [type(r) for r in replies] == [protocol.TaskDone, protocol.TaskDone]
    assert [r.task_id for r in replies] == ["long", "queued"]
    assert protocol.unpack_payload(replies[1].data)["config"] == {"again": True}
