"""Handlers' logging records reach the host's logging, with the task they came from."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest

from orchestrator import ParallelOrchestrator
from orchestrator.logs import JsonLogFormatter
from tests.conftest import DEADLOCK_TIMEOUT
from workers.logs import MAX_RECORDS_PER_SECOND


def forwarded(caplog: pytest.LogCaptureFixture, task_id: str | None = None) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.__dict__.get("worker_pid") is not None
        and record.pathname == "(worker)"
        and (task_id is None or record.__dict__.get("task_id") == task_id)
    ]


def test_records_carry_their_task_logger_level_and_traceback(
    make_orch: Callable[..., ParallelOrchestrator], caplog: pytest.LogCaptureFixture
) -> None:
    orch = make_orch(max_workers=1)
    task_id = orch.submit_task({"type": "log_some"})
    result = orch.wait(task_id, DEADLOCK_TIMEOUT)
    records = forwarded(caplog, task_id)
    assert [(r.name, r.levelname, r.getMessage()) for r in records] == [
        ("mypkg.summarize", "INFO", "reading 3 sources"),
        ("mypkg.summarize", "WARNING", "source b is slow"),
        ("mypkg.summarize", "ERROR", "source c failed"),
        ("task.log_some", "INFO", "through the context"),
    ]
    assert all(r.task_type == "log_some" and r.worker_pid == result.worker_pid for r in records)  # type: ignore[attr-defined]
    assert "KeyError: 'source c'" in (records[2].exc_text or "")
    assert 'raise KeyError("source c")' in (records[2].exc_text or "")
    assert records[0].created <= records[-1].created
    line = json.loads(JsonLogFormatter().format(records[2]))
    assert (line["logger"], line["task_id"], line["task_type"]) == ("mypkg.summarize", task_id, "log_some")
    assert "KeyError" in line["exception"]


def test_records_outside_a_task_carry_the_worker_pid_only(
    make_orch: Callable[..., ParallelOrchestrator], caplog: pytest.LogCaptureFixture
) -> None:
    orch = make_orch(max_workers=1, worker_init={"log_some": "tests.helpers.tasks:init_that_logs"})
    result = orch.wait(orch.submit_task({"type": "log_some"}), DEADLOCK_TIMEOUT)
    (setup,) = [r for r in forwarded(caplog) if r.name == "mypkg.setup"]
    assert setup.getMessage() == f"model loaded in pid {result.worker_pid}"
    assert (setup.task_id, setup.worker_pid) == (None, result.worker_pid)  # type: ignore[attr-defined]


def test_the_level_is_configurable_and_none_turns_forwarding_off(
    make_orch: Callable[..., ParallelOrchestrator], caplog: pytest.LogCaptureFixture
) -> None:
    orch = make_orch(max_workers=1, worker_log_level="WARNING")
    task_id = orch.submit_task({"type": "log_some"})
    orch.wait(task_id, DEADLOCK_TIMEOUT)
    assert [r.levelname for r in forwarded(caplog, task_id)] == ["WARNING", "ERROR"]
    quiet = make_orch(max_workers=1, worker_log_level=None)
    task_id = quiet.submit_task({"type": "log_some"})
    assert quiet.wait(task_id, DEADLOCK_TIMEOUT).success
    assert forwarded(caplog, task_id) == []


def test_a_flood_is_capped_and_counted(
    make_orch: Callable[..., ParallelOrchestrator], caplog: pytest.LogCaptureFixture
) -> None:
    orch = make_orch(max_workers=1)
    records = 3 * MAX_RECORDS_PER_SECOND
    task_id = orch.submit_task({"type": "log_flood", "config": {"records": records}})
    assert orch.wait(task_id, DEADLOCK_TIMEOUT).data == records
    got = forwarded(caplog, task_id)
    floods = [r for r in got if r.name == "mypkg.flood"]
    notices = [r for r in got if r.name == "workers.logs"]
    dropped = sum(int(r.getMessage().split(" ")[0].replace(",", "")) for r in notices)
    assert notices
    assert all(r.levelname == "WARNING" and "more than 1,000 a second" in r.getMessage() for r in notices)
    assert len(floods) + dropped == records  # every record is either sent or counted
    assert len(floods) < records


def test_records_that_cannot_be_formatted_arrive_as_text(
    make_orch: Callable[..., ParallelOrchestrator], caplog: pytest.LogCaptureFixture
) -> None:
    orch = make_orch(max_workers=1)
    task_id = orch.submit_task({"type": "log_badly"})
    assert orch.wait(task_id, DEADLOCK_TIMEOUT).data == "survived"
    messages = [r.getMessage() for r in forwarded(caplog, task_id)]
    assert len(messages) == 3
    assert messages[0].startswith("'%d items' % ('not a number',) (could not be formatted: TypeError")
    assert "could not be formatted: RuntimeError: no text for this" in messages[1]
    assert "could not be formatted: TypeError" in messages[2]
