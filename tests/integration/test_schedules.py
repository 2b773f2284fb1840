"""Delayed and recurring tasks in real time, with sub-second delays and intervals."""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from orchestrator import OrchestratorError, ParallelOrchestrator, ScheduleError, TaskStatus
from orchestrator.cli import main as cli
from tests.conftest import DEADLOCK_TIMEOUT, Recorder
from tests.helpers.tasks import HANDLERS

# Long enough that a busy machine still runs everything else first, short enough for the suite.
DELAY = 0.4


def fired(recorder: Recorder, schedule: str) -> list[str]:
    return [e.task_id for e in recorder.events if e.event == "schedule_fired" and e.schedule == schedule]


def missed(recorder: Recorder, reason: str) -> list[int]:
    return [e.count for e in recorder.events if e.event == "schedule_missed" and e.reason == reason]


def test_a_delayed_task_waits_queued_without_a_worker(make_orch) -> None:
    orch = make_orch(max_workers=1)
    submitted = time.monotonic()
    task_id = orch.submit_task({"type": "echo"}, delay=DELAY)
    assert orch.get_task_status(task_id) is TaskStatus.QUEUED
    assert orch.get_status().queued == 1
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success  # not held up
    assert orch.get_task_status(task_id) is TaskStatus.QUEUED
    assert orch.wait(task_id, DEADLOCK_TIMEOUT).success
    assert time.monotonic() - submitted >= DELAY


def test_run_at_in_the_future_and_in_the_past(make_orch) -> None:
    orch = make_orch()
    due = datetime.now(UTC) + timedelta(seconds=DELAY)
    later = orch.submit_task({"type": "echo"}, run_at=due)
    earlier = orch.submit_task({"type": "echo"}, run_at=datetime.now(UTC) - timedelta(hours=1))
    first = orch.wait(earlier, DEADLOCK_TIMEOUT)
    second = orch.wait(later, DEADLOCK_TIMEOUT)
    assert first.success
    assert second.success
    assert second.started_at is not None
    assert second.started_at >= due  # never before its time (the past one was due at once)


def test_a_delayed_task_can_be_cancelled_and_frees_its_place(make_orch) -> None:
    orch = make_orch(task_queue_size=1)
    task_id = orch.submit_task({"type": "echo"}, delay=60)
    assert orch.cancel(task_id)
    assert orch.wait(task_id, DEADLOCK_TIMEOUT).status is TaskStatus.CANCELLED
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


def test_bad_delays_are_refused_before_anything_is_queued(make_orch) -> None:
    orch = make_orch()
    with pytest.raises(ScheduleError, match="not both"):
        orch.submit_task({"type": "echo"}, run_at=datetime.now(UTC), delay=1)
    with pytest.raises(ScheduleError, match="negative"):
        orch.submit_task({"type": "echo"}, delay=-1)
    with pytest.raises(ScheduleError, match="timezone-aware"):
        orch.submit_task({"type": "echo"}, run_at=datetime.now())
    assert orch.get_status().queued == 0


def test_shutdown_does_not_wait_for_a_delay(make_orch) -> None:
    orch = make_orch()
    task_id = orch.submit_task({"type": "echo"}, delay=3600)
    started = time.monotonic()
    orch.shutdown(wait=True)
    assert time.monotonic() - started < DEADLOCK_TIMEOUT
    assert orch.get_result(task_id).status is TaskStatus.CANCELLED


def test_every_fires_on_its_interval_and_every_result_is_there(make_orch, recorder: Recorder) -> None:
    orch = make_orch()
    orch.on("schedule_fired", recorder)
    started = time.monotonic()
    assert orch.schedule({"type": "echo"}, name="tick", every=0.2, max_runs=5) == "tick"
    recorder.wait_for(lambda events: len(events) == 5)
    # Five firings on a 0.2 s grid starting one interval in: never before 1 s.
    assert time.monotonic() - started >= 1.0 - 0.01
    task_ids = fired(recorder, "tick")
    assert [e.run for e in recorder.events] == [1, 2, 3, 4, 5]
    assert all(orch.wait(task_id, DEADLOCK_TIMEOUT).success for task_id in task_ids)
    assert orch.schedules() == []  # max_runs reached: removed


def test_overlap_skip_never_runs_two_at_once(make_orch, recorder: Recorder) -> None:
    orch = make_orch()
    orch.on("schedule_fired", recorder)
    orch.on("schedule_missed", recorder)
    orch.schedule({"type": "sleep", "config": {"seconds": 0.35}}, name="slow", every=0.1, overlap="skip")
    recorder.wait_for(lambda events: len(fired(recorder, "slow")) >= 3)
    orch.unschedule("slow")
    assert sum(missed(recorder, "overlap")) >= 2
    results = [orch.wait(task_id, DEADLOCK_TIMEOUT) for task_id in fired(recorder, "slow")]
    for before, after in itertools.pairwise(results):
        assert before.finished_at is not None
        assert after.started_at is not None
        assert after.started_at >= before.finished_at


def test_overlap_queue_fires_while_the_previous_run_goes_on(make_orch, recorder: Recorder, release) -> None:
    orch = make_orch()
    orch.on("schedule_fired", recorder)
    orch.schedule({"type": "blocker", "config": release.config}, name="pile", every=0.1, overlap="queue")
    recorder.wait_for(lambda events: len(events) >= 3)
    orch.unschedule("pile")
    task_ids = fired(recorder, "pile")
    assert orch.get_task_status(task_ids[0]) is not TaskStatus.COMPLETED  # still held by the blocker
    release.open()
    assert all(orch.wait(task_id, DEADLOCK_TIMEOUT).success for task_id in task_ids)


def test_overlap_replace_cancels_the_run_still_going(make_orch, recorder: Recorder) -> None:
    orch = make_orch()
    orch.on("schedule_fired", recorder)
    orch.schedule({"type": "sleep", "config": {"seconds": 30}}, name="fresh", every=0.2, overlap="replace")
    recorder.wait_for(lambda events: len(events) >= 2)
    orch.unschedule("fresh")
    first, second = fired(recorder, "fresh")[:2]
    replaced = orch.wait(first, DEADLOCK_TIMEOUT)
    assert replaced.status is TaskStatus.CANCELLED
    assert orch.cancel(second)


def test_pause_resume_and_unschedule(make_orch, recorder: Recorder) -> None:
    orch = make_orch()
    orch.on("schedule_fired", recorder)
    orch.schedule({"type": "echo"}, name="tick", every=0.1)
    recorder.wait_for(lambda events: len(events) >= 1)
    orch.pause_schedule("tick")
    [info] = orch.schedules()
    assert info.paused
    assert info.next_run is None
    runs = info.runs
    time.sleep(0.35)  # three intervals pass while paused: none may fire
    assert orch.schedules()[0].runs == runs
    orch.resume_schedule("tick")
    recorder.wait_for(lambda events: len(events) >= runs + 1)
    orch.unschedule("tick")
    count = len(recorder.events)
    time.sleep(0.35)  # after unschedule returns, nothing more fires
    assert len(recorder.events) == count
    assert orch.schedules() == []


def test_schedule_errors_are_clear(make_orch) -> None:
    orch = make_orch()
    with pytest.raises(ScheduleError, match=r"cron '61 \* \* \* \*': the minute field '61'"):
        orch.schedule({"type": "echo"}, name="bad", cron="61 * * * *")
    with pytest.raises(ScheduleError, match="exactly one of every and cron"):
        orch.schedule({"type": "echo"}, name="bad", every=1, cron="@daily")
    with pytest.raises(ScheduleError, match="start_at must be timezone-aware"):
        orch.schedule({"type": "echo"}, name="bad", every=1, start_at=datetime.now())
    orch.schedule({"type": "echo"}, name="daily", cron="0 3 * * *", tz="Europe/Paris")
    with pytest.raises(OrchestratorError, match="exists already"):
        orch.schedule({"type": "echo"}, name="daily", every=5)
    with pytest.raises(OrchestratorError, match="no schedule named 'nightly'"):
        orch.unschedule("nightly")
    [info] = orch.schedules()
    assert info.next_run is not None
    assert info.next_run.tzinfo is not None
    assert info.next_run > datetime.now(UTC)
    assert info.next_run.astimezone(ZoneInfo("Europe/Paris")).hour == 3


def test_a_schedule_survives_a_restart_and_fires_once_for_what_it_missed(
    make_orch, tmp_path: Path, recorder: Recorder
) -> None:
    journal = str(tmp_path / "journal.db")
    first = make_orch(journal_path=journal)
    first.schedule({"type": "echo"}, name="tick", every=0.1, start_at=datetime.now(UTC) + timedelta(hours=1))
    first.schedule({"type": "echo"}, name="often", every=0.1)
    first.pause_schedule("often")
    first.shutdown()
    # Push tick's next slot into the past by hand, so the test need not sleep through slots.
    with sqlite3.connect(journal) as db:
        state = json.loads(db.execute("SELECT state FROM schedules WHERE name = 'tick'").fetchone()[0])
        state["next_wall"] = time.time() - 1.05
        db.execute("UPDATE schedules SET state = ? WHERE name = 'tick'", (json.dumps(state),))
    second = ParallelOrchestrator(journal_path=journal, handlers=HANDLERS, control_socket=False)
    second.on("schedule_fired", recorder)
    second.on("schedule_missed", recorder)
    with second:
        recorder.wait_for(lambda events: len(fired(recorder, "tick")) >= 1)
        # Ten or eleven 0.1 s slots passed in the 1.05 s; they fire once, now.
        assert missed(recorder, "restart") == [pytest.approx(11, abs=1)]
        assert fired(recorder, "often") == []
        names = {info.name: info for info in second.schedules()}
        assert names["often"].paused
        assert names["tick"].runs >= 1
        assert second.wait(fired(recorder, "tick")[0], DEADLOCK_TIMEOUT).success


def test_a_delayed_task_survives_a_restart(make_orch, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.db")
    first = make_orch(journal_path=journal)
    task_id = first.submit_task({"type": "echo"}, delay=DELAY)
    first.shutdown(wait=True, keep_queued=True)
    second = make_orch(journal_path=journal)
    assert second.recovered_tasks() == [task_id]
    assert second.wait(task_id, DEADLOCK_TIMEOUT).success


def test_orch_status_and_orch_schedules_show_schedules(make_orch) -> None:
    orch = make_orch(name="scheduled", control_socket=True)
    orch.schedule({"type": "echo"}, name="nightly-learn", cron="0 3 * * *")
    listed = CliRunner().invoke(cli, ["schedules", "--name", "scheduled"])
    assert listed.exit_code == 0, listed.output
    assert "nightly-learn" in listed.output
    assert "cron 0 3 * * * UTC" in listed.output
    status = CliRunner().invoke(cli, ["status", "--name", "scheduled"])
    assert "nightly-learn" in status.output
    as_json = json.loads(CliRunner().invoke(cli, ["schedules", "--name", "scheduled", "--json"]).output)
    assert as_json[0]["name"] == "nightly-learn"
    assert as_json[0]["next_run"].endswith("03:00:00Z")
