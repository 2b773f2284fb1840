"""Prometheus metrics scraped over HTTP, log records that carry task ids, and their errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from orchestrator import OrchestratorError, ParallelOrchestrator
from tests.conftest import DEADLOCK_TIMEOUT, Recorder, Release
from tests.helpers.metrics import labels_of, scrape, value
from tests.helpers.tasks import HANDLERS

ROOT = Path(__file__).resolve().parents[2]


def test_counters_and_gauges_match_what_ran(make_orch, release: Release, recorder: Recorder) -> None:
    orch = make_orch(max_workers=2, metrics_port=0, max_memory_mb=200, resource_check_interval=0.1)
    orch.on("task_started", recorder)
    assert orch.metrics_url.startswith("http://127.0.0.1:")
    blockers = [orch.submit_task({"type": "blocker", "config": release.config}) for _ in range(2)]
    recorder.wait_for(lambda events: len(events) == 2)
    echoes = [orch.submit_task({"type": "echo", "priority": 7}) for _ in range(3)]

    during = scrape(orch.metrics_url)
    assert value(during, "orchestrator_tasks_running", type="blocker", priority="5") == 2
    assert value(during, "orchestrator_tasks_queued", type="echo", priority="7") == 3
    assert value(during, "orchestrator_workers", type="blocker", state="busy") == 2
    assert value(during, "orchestrator_worker_rss_bytes", type="blocker") > 1_000_000
    assert value(during, "orchestrator_tasks_submitted_total", type="echo") == 3
    assert value(during, "orchestrator_tasks_completed_total", type="blocker") == 0

    release.open()
    for task_id in blockers + echoes:
        assert orch.wait(task_id, DEADLOCK_TIMEOUT).success
    faults = {
        "timeout": orch.submit_task({"type": "sleep", "config": {"seconds": 60}, "timeout": 0.3}),
        "crash": orch.submit_task({"type": "exit_hard"}),
        "memory": orch.submit_task({"type": "allocate", "config": {"mb": 400}}),
        "exception": orch.submit_task({"type": "fail"}),
        "retried": orch.submit_task({"type": "crash_once", "retries": 1, "retry_backoff": 0}),
    }
    results = {name: orch.wait(task_id, DEADLOCK_TIMEOUT) for name, task_id in faults.items()}
    assert [r.error.kind if r.error else "ok" for r in results.values()] == [
        "timeout",
        "worker_crashed",
        "memory_limit",
        "exception",
        "ok",
    ]

    after = scrape(orch.metrics_url)
    status = orch.get_status()
    completed = {"blocker": 2, "echo": 3, "crash_once": 1}
    for task_type, count in completed.items():
        assert value(after, "orchestrator_tasks_completed_total", type=task_type) == count
        assert value(after, "orchestrator_tasks_submitted_total", type=task_type) == count
        assert (
            value(after, "orchestrator_task_duration_seconds_count", type=task_type, status="completed")
            == count
        )
    assert sum(completed.values()) == status.completed
    failed = {
        ("sleep", "timeout"),
        ("exit_hard", "worker_crashed"),
        ("allocate", "memory_limit"),
        ("fail", "exception"),
    }
    for task_type, kind in failed:
        assert value(after, "orchestrator_tasks_failed_total", type=task_type, kind=kind) == 1
        assert value(after, "orchestrator_task_duration_seconds_count", type=task_type, status="error") == 1
    assert len(failed) == status.failed
    assert value(after, "orchestrator_task_timeouts_total", type="sleep") == 1
    assert value(after, "orchestrator_worker_crashes_total", type="exit_hard") == 1
    assert value(after, "orchestrator_worker_crashes_total", type="crash_once") == 1
    assert value(after, "orchestrator_memory_limit_kills_total", type="allocate") == 1
    assert value(after, "orchestrator_task_retries_total", type="crash_once", kind="worker_crashed") == 1
    # One queue wait per attempt: the retried task waited twice.
    assert value(after, "orchestrator_task_queue_wait_seconds_count", type="crash_once") == 2
    assert value(after, "orchestrator_tasks_running", type="blocker", priority="5") == 0
    assert value(after, "orchestrator_tasks_queued", type="echo", priority="7") == 0
    assert value(after, "orchestrator_parallelism_limit", type="echo") == 2
    spawned = value(after, "orchestrator_workers_spawned_total")
    assert spawned >= 2 + 3  # two at first, one after each of the three deaths
    assert labels_of(after, "orchestrator_info")[0]["backend"] == "local"
    assert orch.snapshot()["metrics_url"] == orch.metrics_url


def test_an_adaptive_limit_shows_after_a_rate_limit(make_orch) -> None:
    orch = make_orch(max_workers=4, metrics_port=0)
    result = orch.wait(
        orch.submit_task({"type": "rate_limited", "config": {"ok_on": 2}, "retries": 1}), DEADLOCK_TIMEOUT
    )
    assert result.success
    samples = scrape(orch.metrics_url)
    assert value(samples, "orchestrator_parallelism_limit", type="rate_limited") == 2
    assert value(samples, "orchestrator_task_retries_total", type="rate_limited", kind="rate_limit") == 1


def test_a_metrics_port_in_use_is_a_clear_error_and_starts_nothing() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        orch = ParallelOrchestrator(metrics_port=port, handlers=HANDLERS, control_socket=False)
        with pytest.raises(
            OrchestratorError, match=rf"cannot serve metrics on 127\.0\.0\.1:{port}.*metrics_port"
        ):
            orch.initialize()
        assert orch.get_workers() == []
    orch.shutdown()


def test_missing_extra_is_named_at_initialize(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    orch = ParallelOrchestrator(metrics_port=0, control_socket=False)
    with pytest.raises(OrchestratorError, match=r"parallel-orchestrator\[metrics\]"):
        orch.initialize()
    orch.shutdown()


def test_the_port_is_freed_at_shutdown(make_orch) -> None:
    orch = make_orch(metrics_port=0)
    url = orch.metrics_url
    assert scrape(url)
    orch.shutdown()
    assert orch.metrics_url is None
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=DEADLOCK_TIMEOUT)


def test_two_orchestrators_keep_separate_metrics(make_orch) -> None:
    first, second = make_orch(metrics_port=0, name="first"), make_orch(metrics_port=0, name="second")
    assert first.wait(first.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success
    assert value(scrape(first.metrics_url), "orchestrator_tasks_completed_total", type="echo") == 1
    assert value(scrape(second.metrics_url), "orchestrator_tasks_completed_total", type="echo") == 0


# --------------------------------------------------------------------------------- logs


def _task_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if hasattr(r, "task_id")]


def test_nothing_per_task_at_info_unless_asked(make_orch, caplog: pytest.LogCaptureFixture) -> None:
    orch = make_orch(max_workers=2)
    ids = [orch.submit_task({"type": "echo"}) for _ in range(20)]
    ids.append(orch.submit_task({"type": "crash_once", "retries": 1, "retry_backoff": 0}))
    ids.append(orch.submit_task({"type": "fail"}))
    for task_id in ids:
        orch.wait(task_id, DEADLOCK_TIMEOUT)
    assert [r.getMessage() for r in _task_records(caplog) if r.levelno >= logging.INFO] == []


def test_log_tasks_gives_each_task_its_records(make_orch, caplog: pytest.LogCaptureFixture) -> None:
    orch = make_orch(max_workers=1, log_tasks=True)
    done = orch.submit_task({"type": "echo"})
    failed = orch.submit_task({"type": "fail", "config": {"message": "bad input"}})
    for task_id in (done, failed):
        orch.wait(task_id, DEADLOCK_TIMEOUT)
    pid = orch.get_result(done).worker_pid
    records = _task_records(caplog)
    mine = [(r.levelname, r.getMessage().split()[2], r.worker_pid) for r in records if r.task_id == done]
    assert mine == [("INFO", "queued", None), ("INFO", "started", pid), ("INFO", "completed", pid)]
    (failure,) = [r for r in records if r.task_id == failed and r.levelno == logging.WARNING]
    assert failure.task_type == "fail"
    assert failure.getMessage().endswith("failed (exception): bad input")
    assert all(r.name == "orchestrator.tasks" for r in records)


HOST = """
import sys
sys.path.insert(0, {root!r})
from orchestrator import ParallelOrchestrator
from tests.helpers.metrics import labels_of, scrape, value
from tests.helpers.tasks import HANDLERS

if __name__ == "__main__":
    with ParallelOrchestrator(max_workers=1, handlers=HANDLERS, control_socket=False,
                              enable_logging=True, log_format="json", log_tasks=True) as orch:
        ids = [orch.submit_task({{"type": "echo"}}),
               orch.submit_task({{"type": "crash_once", "retries": 1, "retry_backoff": 0}}),
               orch.submit_task({{"type": "fail"}})]
        for task_id in ids:
            orch.wait(task_id, 30)
        print(" ".join(ids), flush=True)
"""


def test_json_logs_parse_and_carry_task_ids(tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(HOST.format(root=str(ROOT))))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=DEADLOCK_TIMEOUT, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    echo, crash_once, fail = done.stdout.split()
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    by_task: dict[str, list[dict]] = {}
    for entry in entries:
        if "task_id" in entry:
            by_task.setdefault(entry["task_id"], []).append(entry)
    assert [e["message"].split()[2] for e in by_task[echo]] == ["queued", "started", "completed"]
    assert {e["task_type"] for e in by_task[crash_once]} == {"crash_once"}
    messages = [e["message"] for e in by_task[crash_once]]
    assert any("attempt 1 failed (worker_crashed" in m and "retrying" in m for m in messages)
    assert isinstance(by_task[echo][-1]["worker_pid"], int)
    assert [e["level"] for e in by_task[fail]][-1] == "WARNING"


def test_text_format_appends_the_task_fields() -> None:
    from orchestrator import JsonLogFormatter, TextLogFormatter

    record = logging.LogRecord(
        "orchestrator.tasks", logging.INFO, __file__, 1, "task %s started", ("t-1",), None
    )
    record.task_id, record.task_type, record.worker_pid = "t-1", "echo", 42
    text = TextLogFormatter().format(record)
    assert text.endswith(
        "INFO orchestrator.tasks: task t-1 started [task_id=t-1 task_type=echo worker_pid=42]"
    )
    entry = json.loads(JsonLogFormatter().format(record))
    assert entry["message"] == "task t-1 started"
    assert (entry["task_id"], entry["task_type"], entry["worker_pid"]) == ("t-1", "echo", 42)


def test_a_failing_callback_is_logged_with_its_task(make_orch, caplog: pytest.LogCaptureFixture) -> None:
    orch = make_orch(max_workers=1)

    def broken(result: object) -> None:
        raise RuntimeError("callback bug")

    task_id = orch.submit_task({"type": "echo"}, on_complete=broken)
    pid = orch.wait(task_id, DEADLOCK_TIMEOUT).worker_pid
    orch.shutdown()  # delivers every queued callback
    (record,) = [r for r in caplog.records if "raised; ignored" in r.getMessage()]
    assert (record.task_id, record.task_type, record.worker_pid) == (task_id, "echo", pid)


def test_orch_run_serves_metrics(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORCH_RUNTIME_DIR": str(tmp_path / "run")}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", "--name", "svc", "--metrics-port", "0", "--grace", "1"],
        stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        line = daemon.stdout.readline()
        assert "metrics on http://127.0.0.1:" in line
        url = line.rsplit("metrics on ", 1)[1].rstrip(")\n")
        samples = scrape(url)
        assert labels_of(samples, "orchestrator_info")[0]["name"] == "svc"
        status = subprocess.run(
            [sys.executable, "-m", "orchestrator", "status", "--name", "svc"],
            capture_output=True, text=True, env=env, timeout=DEADLOCK_TIMEOUT,
        )  # fmt: skip
        assert f"metrics {url}" in status.stdout.splitlines()[0]
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(DEADLOCK_TIMEOUT) == 0
        daemon.stdout.close()
