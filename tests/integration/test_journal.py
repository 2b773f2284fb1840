"""The SQLite journal: accepted tasks survive a SIGKILL of the host; one writer; foreign files refused."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from orchestrator import OrchestratorError, ParallelOrchestrator, TaskStatus
from orchestrator.journal import MOVE_INTERVAL
from tests.conftest import DEADLOCK_TIMEOUT
from tests.helpers.tasks import HANDLERS

ROOT = Path(__file__).resolve().parents[2]

HOST = """
import sys, time
sys.path.insert(0, {root!r})
from orchestrator import ParallelOrchestrator
from tests.helpers.tasks import HANDLERS

if __name__ == "__main__":
    orch = ParallelOrchestrator(max_workers=2, task_queue_size=500, handlers=HANDLERS, journal_path={journal!r},
                                control_socket=False)
    done = orch.submit_task({{"type": "echo", "config": {{"before": True}}}})
    print("done", orch.wait(done, 30).task_id, flush=True)
    started = []
    orch.on("task_started", lambda event: started.append(event.task_id))
    hung = [orch.submit_task({{"type": "logged", "config": {{"log": {log!r}, "hang": True}}}}) for _ in range(2)]
    while len([t for t in started if t in hung]) < 2:
        time.sleep(0.01)
    queued = [orch.submit_task({{"type": "logged", "config": {{"log": {log!r}}}}}) for _ in range(200)]
    print("ready", flush=True)
    time.sleep(600)
"""


def lines_then_kill(tmp_path: Path, script_text: str, count: int, **values: str) -> list[str]:
    """Run a host script, read ``count`` lines it prints, then SIGKILL it (the crash under test)."""
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(script_text.format(root=str(ROOT), **values)))
    host = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        return [host.stdout.readline().strip() for _ in range(count)]
    finally:
        host.kill()
        host.wait()
        host.stdout.close()


def test_a_killed_host_loses_nothing(make_orch, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.db")
    log = tmp_path / "runs.log"
    done_line, ready = lines_then_kill(tmp_path, HOST, 2, journal=journal, log=str(log))
    done_id = done_line.split()[1]
    assert ready == "ready"
    orch = make_orch(max_workers=2, task_queue_size=10, journal_path=journal, handlers=HANDLERS)
    recovered = orch.recovered_tasks()
    assert len(recovered) == 202
    results = [orch.wait(task_id, DEADLOCK_TIMEOUT) for task_id in recovered]
    assert all(r.success for r in results), [r.error for r in results if not r.success][:3]
    assert sorted(r.attempts for r in results) == [1] * 200 + [2, 2]
    runs = Counter(line.split()[0] for line in log.read_text().splitlines())
    assert sorted(runs.values()) == [1] * 200 + [2, 2], "none ran twice but the two interrupted ones"
    before = orch.get_result(done_id)
    assert before.success
    assert before.data["config"] == {"before": True}


def test_one_writer_per_journal(make_orch, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.db")
    make_orch(journal_path=journal)
    with pytest.raises(OrchestratorError, match="one writer"):
        ParallelOrchestrator(journal_path=journal).initialize()
    probe = f"from orchestrator import ParallelOrchestrator as P; P(journal_path={journal!r}).initialize()"
    other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert other.returncode != 0
    assert "one writer" in other.stderr


def test_results_and_ids_survive_a_clean_restart(make_orch, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.db")
    first = make_orch(journal_path=journal, handlers=HANDLERS)
    task_id = first.submit_task({"type": "echo", "config": {"blob": b"\x00\x01"}})
    assert first.wait(task_id, DEADLOCK_TIMEOUT).success
    cancelled = first.submit_task({"type": "sleep", "config": {"seconds": 60}})
    first.shutdown(cancel_pending=True, timeout=0)
    second = make_orch(journal_path=journal, handlers=HANDLERS)
    assert second.recovered_tasks() == []
    assert second.get_result(task_id).data["config"] == {"blob": b"\x00\x01"}
    assert second.get_task_status(cancelled) is TaskStatus.CANCELLED
    fresh = second.submit_task({"type": "echo"})
    assert fresh not in (task_id, cancelled)


@pytest.mark.parametrize("kind", ["text", "other-sqlite"])
def test_a_foreign_file_is_refused_untouched(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "not-a-journal.db"
    if kind == "text":
        path.write_text("hello, I am not a database\n")
    else:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE notes (x)")
    before = path.read_bytes()
    with pytest.raises(OrchestratorError, match=r"not a journal|not an SQLite"):
        ParallelOrchestrator(journal_path=str(path), control_socket=False).initialize()
    assert path.read_bytes() == before
    assert not os.path.exists(f"{path}-wal")


_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE tasks (task_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, spec TEXT NOT NULL, config BLOB NOT NULL,
    handler TEXT NOT NULL, plan TEXT, plan_refs TEXT, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    result BLOB, submitted_at REAL NOT NULL);
CREATE INDEX tasks_by_status ON tasks (status, seq);
"""


def test_a_version_1_journal_is_migrated_and_its_tasks_run(make_orch, tmp_path: Path) -> None:
    from orchestrator.journal import APPLICATION_ID

    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.executescript(_SCHEMA_1)
        spec = json.dumps({"type": "echo", "priority": 5})
        db.execute(
            "INSERT INTO tasks (task_id, seq, spec, config, handler, status, submitted_at) "
            "VALUES ('old-7', 7, ?, x'80', 'tests.helpers.tasks:echo', 'queued', 1.0)",
            (spec,),
        )
    orch = make_orch(journal_path=str(path), handlers=HANDLERS)
    assert orch.recovered_tasks() == ["old-7"]
    assert orch.wait("old-7", DEADLOCK_TIMEOUT).success
    assert int(orch.submit_task({"type": "echo"}).rpartition("-")[2]) > 7


def test_a_journal_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    from orchestrator.journal import APPLICATION_ID

    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT); INSERT INTO meta VALUES ('schema_version', '99');"
        )
    with pytest.raises(OrchestratorError, match="schema 99"):
        ParallelOrchestrator(journal_path=str(path), control_socket=False).initialize()


def test_an_empty_file_is_a_new_journal(make_orch, tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    orch = make_orch(journal_path=str(path), handlers=HANDLERS)
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


def test_keep_queued_leaves_open_tasks_for_the_next_process(make_orch, tmp_path: Path, recorder) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import main

    journal = str(tmp_path / "journal.db")
    log = str(tmp_path / "runs.log")
    first = make_orch(max_workers=1, journal_path=journal, handlers=HANDLERS)
    done = first.submit_task({"type": "echo", "group": "g"})
    assert first.wait(done, DEADLOCK_TIMEOUT).success
    first.on("task_started", recorder)
    running = first.submit_task({"type": "logged", "config": {"log": log, "hang": True}})
    recorder.wait_for(lambda events: len(events) == 1)
    waiting = first.submit_task({"type": "echo", "depends_on": [running], "group": "g"})
    first.shutdown(wait=True, keep_queued=True)
    shown = CliRunner().invoke(main, ["status", "--journal", journal, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["counts"]["running"] == 1
    queued_events = []
    second = ParallelOrchestrator(journal_path=journal, handlers=HANDLERS, control_socket=False)
    second.on("task_queued", queued_events.append)
    second.initialize()
    try:
        assert second.recovered_tasks() == [running, waiting]
        assert second.wait(waiting, DEADLOCK_TIMEOUT).data["config"] == {}
        assert second.get_result(running).attempts == 2
        assert second.get_group("g").task_ids == [done, waiting]
        assert second.get_group("g").counts["completed"] == 2
    finally:
        second.shutdown()
    assert all(event.recovered for event in queued_events)


def test_eviction_keeps_memory_bounded(make_orch) -> None:
    import gc

    import psutil

    from orchestrator import TaskNotFoundError

    orch = make_orch(max_workers=2, max_results_in_memory=1000, task_queue_size=5000, handlers=HANDLERS)

    def run(count: int) -> list[str]:
        # Batches smaller than max_results_in_memory: no result is evicted before it is waited for.
        ids = []
        for start in range(0, count, 500):
            batch = [
                orch.submit_task({"type": "echo", "config": {"i": i}}) for i in range(start, start + 500)
            ]
            for task_id in batch:
                orch.wait(task_id, DEADLOCK_TIMEOUT)
            ids += batch
        return ids

    first = run(5000)
    gc.collect()
    rss_at_5000 = psutil.Process().memory_info().rss
    run(15000)
    gc.collect()
    growth = psutil.Process().memory_info().rss - rss_at_5000
    assert growth < 20 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB from task 5,000 to 20,000"
    assert len(orch._tasks) <= 1000
    with pytest.raises(TaskNotFoundError, match="evicted"):
        orch.get_result(first[0])
    assert orch.get_status().completed == 20000, "counters stay cumulative"


def test_evicted_results_stay_readable_from_the_journal(make_orch, tmp_path: Path) -> None:
    orch = make_orch(max_results_in_memory=2, journal_path=str(tmp_path / "j.db"), handlers=HANDLERS)
    ids = [orch.submit_task({"type": "echo", "group": "g", "config": {"i": i}}) for i in range(6)]
    for task_id in ids:
        orch.wait(task_id, DEADLOCK_TIMEOUT)
    # A result leaves memory once the journal moved it into SQLite (within MOVE_INTERVAL).
    deadline = time.monotonic() + DEADLOCK_TIMEOUT
    while orch.get_group("g").counts["evicted"] < 4:
        assert time.monotonic() < deadline, orch.get_group("g").counts
        time.sleep(MOVE_INTERVAL)
    assert orch.get_group("g").counts["evicted"] == 4
    assert orch.get_result(ids[0]).data["config"] == {"i": 0}


def test_result_ttl_drops_results_from_memory_and_journal(make_orch, tmp_path: Path) -> None:
    from orchestrator import TaskNotFoundError

    orch = make_orch(result_ttl=0.2, journal_path=str(tmp_path / "j.db"), handlers=HANDLERS)
    old = orch.submit_task({"type": "echo"})
    orch.wait(old, DEADLOCK_TIMEOUT)
    deadline = time.monotonic() + DEADLOCK_TIMEOUT
    while old in orch._tasks and time.monotonic() < deadline:
        time.sleep(0.05)  # the ttl sweep runs on the supervisor's timer; nothing to wait on here
    with pytest.raises(TaskNotFoundError, match="evicted"):
        orch.get_result(old)


BURST = """
import sys
sys.path.insert(0, {root!r})
from orchestrator import ParallelOrchestrator
from tests.helpers.tasks import HANDLERS

if __name__ == "__main__":
    orch = ParallelOrchestrator(max_workers=1, task_queue_size=100000, handlers=HANDLERS, journal_path={journal!r},
                                control_socket=False)
    while True:
        print(orch.submit_task({{"type": "sleep", "config": {{"seconds": 0.05}}}}), flush=True)
"""


def test_every_returned_submit_survives_a_kill_mid_burst(make_orch, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.db")
    returned = lines_then_kill(tmp_path, BURST, 300, journal=journal)
    orch = make_orch(journal_path=journal, handlers=HANDLERS, max_workers=2)
    known = set(orch.recovered_tasks())
    assert all(task_id in known or orch.get_result(task_id) is not None for task_id in returned)
    orch.shutdown(cancel_pending=True)


PARENT_HOST = """
import sys, time
sys.path.insert(0, {root!r})
from orchestrator import ParallelOrchestrator
from tests.helpers.tasks import HANDLERS

if __name__ == "__main__":
    orch = ParallelOrchestrator(max_workers=1, handlers=HANDLERS, journal_path={journal!r}, control_socket=False)
    children = []
    orch.on("task_queued", lambda event: event.parent and children.append(event.task_id))
    detached = {{"type": "echo", "config": {{"detached": True}}}}
    parent = orch.submit_task({{"type": "parent", "config": {{"end": "hang", "detached": detached}}}})
    while len(children) < 2:
        time.sleep(0.01)
    orch._assembly.journal.flush()  # what the supervisor's next wake-up would commit anyway
    print(parent, *children, flush=True)
    time.sleep(600)
"""


def test_a_recovered_parents_earlier_children_end_interrupted(make_orch, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.db")
    parent, attached, detached = lines_then_kill(tmp_path, PARENT_HOST, 1, journal=journal)[0].split()
    orch = make_orch(max_workers=2, journal_path=journal, handlers=HANDLERS)
    assert orch.recovered_tasks() == [parent, attached, detached]
    child = orch.wait(attached, DEADLOCK_TIMEOUT)
    assert child.status is TaskStatus.CANCELLED
    assert child.error.kind == "interrupted"
    assert parent in child.error.message
    assert child.parent == parent
    assert orch.wait(detached, DEADLOCK_TIMEOUT).data["config"] == {"detached": True}
    assert orch.cancel(parent)  # it runs again (and would hang again)
