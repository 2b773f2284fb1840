"""When delayed and recurring tasks fire, on a fake clock: no process, no sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from orchestrator import ScheduleError, TaskSpec, TaskStatus
from orchestrator.errors import OrchestratorError, QueueFullError
from orchestrator.schedules import (
    WALL_CLOCK_RECHECK,
    Schedule,
    ScheduleRunner,
    check_cron,
    delayed_until,
)

SPEC = TaskSpec(type="monitor")
# A wall-clock moment with nothing special about it: Tuesday 2026-03-03 10:00:00 UTC.
WALL = datetime(2026, 3, 3, 10, 0, tzinfo=UTC).timestamp()


def every(seconds: float, **options: Any) -> Schedule:
    return Schedule("tick", SPEC, seconds, None, **options)


def cron(expression: str, **options: Any) -> Schedule:
    return Schedule("cron", SPEC, None, expression, **options)


# ----------------------------------------------------------------- delayed tasks


def test_delay_and_run_at_give_a_wall_clock_due_time() -> None:
    assert delayed_until(None, None, WALL) is None
    assert delayed_until(None, 2.5, WALL) == WALL + 2.5
    moment = datetime(2026, 3, 3, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert delayed_until(moment, None, WALL) == moment.timestamp()
    past = datetime(2020, 1, 1, tzinfo=UTC)
    assert delayed_until(past, None, WALL) < WALL  # due already: it runs at once


@pytest.mark.parametrize(
    ("run_at", "delay", "named"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), 1.0, "run_at or delay"),
        (None, -1.0, "delay"),
        (None, float("nan"), "delay"),
        (datetime(2026, 1, 1), None, "run_at must be timezone-aware"),
        ("tomorrow", None, "run_at must be a datetime"),
    ],
)
def test_bad_delays_are_refused_naming_the_argument(run_at: Any, delay: Any, named: str) -> None:
    with pytest.raises(ScheduleError, match=named) as caught:
        delayed_until(run_at, delay, WALL)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, OrchestratorError)


# ----------------------------------------------------------------- cron and options


@pytest.mark.parametrize("expression", ["*/5 * * * *", "0 3 * * *", "30 8 1 * mon-fri", "@hourly", "@daily",
                                        "@weekly", "@monthly"])  # fmt: skip
def test_valid_cron_expressions_pass(expression: str) -> None:
    check_cron(expression)


@pytest.mark.parametrize(
    ("expression", "named"),
    [
        ("* * * *", "has 4 fields"),
        ("0 * * * * *", "has 6 fields"),
        ("61 * * * *", "the minute field '61'"),
        ("0 25 * * *", "the hour field '25'"),
        ("0 0 32 * *", "the day of month field '32'"),
        ("0 0 * 13 *", "the month field '13'"),
        ("0 0 * * funday", "the day of week field 'funday'"),
        ("*/0 * * * *", "the minute field"),
        ("@yearly", "unknown alias"),
    ],
)
def test_bad_cron_names_the_expression_and_the_field(expression: str, named: str) -> None:
    with pytest.raises(ScheduleError, match=named) as caught:
        check_cron(expression)
    assert repr(expression) in str(caught.value)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"every": 1.0, "cron": "@hourly"}, "exactly one of every and cron"),
        ({"every": None, "cron": None}, "exactly one of every and cron"),
        ({"every": 0, "cron": None}, "more than 0"),
        ({"every": "5m", "cron": None}, "seconds or a timedelta"),
        ({"every": 1.0, "cron": None, "tz": "Mars/Olympus"}, "Mars/Olympus"),
        ({"every": 1.0, "cron": None, "overlap": "merge"}, "overlap"),
        ({"every": 1.0, "cron": None, "catch_up": "all"}, "catch_up"),
        ({"every": 1.0, "cron": None, "max_runs": 0}, "max_runs"),
        ({"every": 1.0, "cron": None, "jitter": -1}, "jitter"),
        ({"every": 1.0, "cron": None, "start_at": WALL, "end_at": WALL - 1}, "end_at"),
    ],
)
def test_bad_schedules_are_refused(arguments: dict[str, Any], named: str) -> None:
    with pytest.raises(ScheduleError, match=named):
        Schedule("bad", SPEC, **arguments)


def test_a_name_must_be_plain() -> None:
    with pytest.raises(ScheduleError, match="schedule name"):
        Schedule("no spaces allowed", SPEC, 1.0, None)


# ----------------------------------------------------------------- every


def test_every_first_fires_one_interval_after_it_starts_and_keeps_to_its_grid() -> None:
    schedule = every(300)
    schedule.start(1000.0, WALL)
    assert schedule.seconds_to_next(1000.0, WALL) == 300
    assert not schedule.is_due(1299.9, WALL)
    assert schedule.is_due(1300.0, WALL)
    assert schedule.advance(1302.0, WALL) == 0  # two seconds late: no drift
    assert schedule.next_slot == 1600.0


def test_every_starts_at_start_at() -> None:
    schedule = every(60, start_at=WALL + 10)
    schedule.start(1000.0, WALL)
    assert schedule.next_slot == 1010.0


def test_a_firing_late_by_more_than_one_interval_fires_once_and_moves_on() -> None:
    schedule = every(10)
    schedule.start(0.0, WALL)
    assert schedule.advance(45.0, WALL) == 3  # slots at 10 (fired now), 20, 30, 40 -> 3 missed
    assert schedule.next_slot == 55.0
    assert not schedule.is_due(54.0, WALL)


def test_resume_skips_the_slots_missed_while_paused() -> None:
    schedule = every(10)
    schedule.start(0.0, WALL)
    schedule.paused = True
    assert schedule.seconds_to_next(100.0, WALL) is None
    assert not schedule.is_due(100.0, WALL)
    schedule.resume(95.0, WALL)
    assert schedule.next_slot == 100.0


def test_max_runs_and_end_at_end_a_schedule() -> None:
    limited = every(10, max_runs=2)
    limited.start(0.0, WALL)
    limited.runs = 2
    assert limited.expired(0.0, WALL)
    ending = every(10, end_at=WALL + 15)
    ending.start(0.0, WALL)
    assert not ending.expired(0.0, WALL)  # next slot at WALL + 10
    ending.advance(10.0, WALL + 10)
    assert ending.expired(10.0, WALL + 10)  # next slot at WALL + 20, past end_at


# ----------------------------------------------------------------- cron


def test_cron_fires_at_its_first_match_in_its_time_zone() -> None:
    schedule = cron("0 3 * * *", tz="Europe/Paris")
    schedule.start(0.0, WALL)
    expected = datetime(2026, 3, 4, 3, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    assert schedule.next_slot == expected
    # The wall clock is re-read often, so a clock step is noticed: never a long blind sleep.
    assert schedule.seconds_to_next(0.0, WALL) == WALL_CLOCK_RECHECK


def test_a_wall_clock_jump_fires_once_not_a_burst() -> None:
    schedule = cron("@hourly")
    schedule.start(0.0, WALL)
    assert schedule.next_slot == WALL + 3600
    jumped = WALL + 5 * 3600 + 60  # suspended for five hours
    assert schedule.is_due(1.0, jumped)
    assert schedule.advance(1.0, jumped) == 4  # 11:00 fires now; 12:00..15:00 were missed
    assert schedule.next_slot == WALL + 6 * 3600
    assert not schedule.is_due(1.0, jumped)


def test_a_wall_clock_step_backwards_does_not_fire_early() -> None:
    schedule = cron("@hourly")
    schedule.start(0.0, WALL)
    assert not schedule.is_due(5000.0, WALL - 3600)


# ----------------------------------------------------------------- restart


def test_a_restored_schedule_counts_its_missed_slots_and_fires_once() -> None:
    schedule = every(60)
    schedule.start(0.0, WALL)
    saved = schedule.to_json(0.0, WALL)  # next slot at WALL + 60
    later = WALL + 60 + 600  # down for ten minutes past that slot
    restored, missed = Schedule.from_json("tick", SPEC, saved, 50.0, later)
    assert missed == 11
    assert restored.is_due(50.0, later)
    restored.advance(50.0, later)
    assert restored.next_slot == 110.0


def test_catch_up_none_skips_to_the_next_slot() -> None:
    schedule = every(60, catch_up="none")
    schedule.start(0.0, WALL)
    saved = schedule.to_json(0.0, WALL)
    restored, missed = Schedule.from_json("tick", SPEC, saved, 50.0, WALL + 90)
    assert missed == 1
    assert not restored.is_due(50.0, WALL + 90)
    assert restored.next_slot == pytest.approx(80.0)  # the grid: WALL + 120


def test_a_schedule_not_yet_due_is_restored_as_it_was() -> None:
    schedule = cron("0 3 * * *", tz="Europe/Paris")
    schedule.start(0.0, WALL)
    schedule.runs = 4
    restored, missed = Schedule.from_json("cron", SPEC, schedule.to_json(0.0, WALL), 7.0, WALL + 60)
    assert missed == 0
    assert (restored.next_slot, restored.runs, restored.tz) == (schedule.next_slot, 4, "Europe/Paris")


# ----------------------------------------------------------------- the runner and overlap


class FakeHost:
    """The supervisor's side, with tasks that stay open until the test ends them."""

    def __init__(self) -> None:
        self.now = [0.0, WALL]
        self.open: set[str] = set()
        self.cancelled: list[str] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.armed: float | None = None
        self.fire: Any = None
        self.queue_full = False
        self.submitted = 0

    def clock(self) -> tuple[float, float]:
        return self.now[0], self.now[1]

    def advance(self, seconds: float) -> None:
        self.now = [self.now[0] + seconds, self.now[1] + seconds]
        self.fire()

    def submit_scheduled(self, schedule: Schedule, delay: float) -> str:
        if self.queue_full:
            raise QueueFullError("full")
        self.submitted += 1
        task_id = f"t{self.submitted}"
        self.open.add(task_id)
        return task_id

    def task_is_open(self, task_id: str) -> bool:
        return task_id in self.open

    def cancel_task(self, task_id: str) -> None:
        self.cancelled.append(task_id)
        self.open.discard(task_id)

    def task_status(self, task_id: str) -> TaskStatus | None:
        return TaskStatus.RUNNING if task_id in self.open else TaskStatus.COMPLETED

    def emit(self, name: str, **fields: Any) -> None:
        self.events.append((name, fields))

    def save_schedule(self, schedule: Schedule | None, name: str) -> None:
        pass

    def arm(self, delay: float | None, action: Any) -> None:
        self.armed, self.fire = delay, action


def runner_with(overlap: str) -> tuple[ScheduleRunner, FakeHost]:
    host = FakeHost()
    runner = ScheduleRunner(host, host.clock)
    runner.add(every(10, overlap=overlap))
    assert host.armed == 10
    return runner, host


def test_overlap_skip_does_not_fire_while_the_previous_run_is_open() -> None:
    runner, host = runner_with("skip")
    host.advance(10)
    host.advance(10)
    assert host.submitted == 1
    assert host.events[-1] == ("schedule_missed", {"schedule": "tick", "count": 1, "reason": "overlap"})
    host.open.clear()
    host.advance(10)
    assert host.submitted == 2
    assert host.events[-1] == ("schedule_fired", {"schedule": "tick", "task_id": "t2", "run": 2})
    [info] = runner.infos()
    assert (info.runs, info.task_ids, info.last_status) == (2, ["t1", "t2"], TaskStatus.RUNNING)


def test_overlap_queue_fires_anyway() -> None:
    _, host = runner_with("queue")
    host.advance(10)
    host.advance(10)
    assert host.submitted == 2
    assert host.open == {"t1", "t2"}
    assert host.cancelled == []


def test_overlap_replace_cancels_the_previous_run() -> None:
    _, host = runner_with("replace")
    host.advance(10)
    host.advance(10)
    assert host.cancelled == ["t1"]
    assert host.open == {"t2"}


def test_a_full_queue_is_a_missed_firing() -> None:
    _, host = runner_with("queue")
    host.queue_full = True
    host.advance(10)
    assert host.events[-1] == ("schedule_missed", {"schedule": "tick", "count": 1, "reason": "queue_full"})


def test_pause_unschedule_and_unknown_names() -> None:
    runner, host = runner_with("queue")
    runner.pause("tick")
    assert host.armed is None
    assert runner.infos()[0].next_run is None
    runner.resume("tick")
    assert host.armed == 10
    with pytest.raises(OrchestratorError, match="exists already"):
        runner.add(every(5))
    runner.remove("tick")
    assert host.armed is None
    assert runner.infos() == []
    with pytest.raises(OrchestratorError, match="no schedule named 'tick'"):
        runner.pause("tick")


def test_max_runs_removes_the_schedule_after_its_last_firing() -> None:
    host = FakeHost()
    runner = ScheduleRunner(host, host.clock)
    runner.add(every(timedelta(seconds=10).total_seconds(), max_runs=2, overlap="queue"))
    host.advance(10)
    host.advance(10)
    assert host.submitted == 2
    assert runner.names() == []
    assert host.armed is None


def test_a_paused_schedule_misses_nothing_across_a_restart() -> None:
    schedule = every(60)
    schedule.start(0.0, WALL)
    schedule.paused = True
    restored, missed = Schedule.from_json("tick", SPEC, schedule.to_json(0.0, WALL), 50.0, WALL + 600)
    assert missed == 0
    assert restored.paused
    assert not restored.is_due(50.0, WALL + 600)
    restored.resume(50.0, WALL + 600)
    assert restored.next_slot is not None
    assert restored.next_slot >= 50.0
