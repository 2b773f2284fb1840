"""Delayed and recurring tasks: argument checks, cron parsing, and when a schedule fires.

The rules here never read a clock: every method takes the current monotonic and wall-clock times,
so they are unit-tested with a fake clock. The supervisor owns the timer that drives them
(`ScheduleRunner`) and supplies both clocks.

Clocks: an ``every`` schedule counts on the monotonic clock; a ``cron`` schedule and a ``run_at``
task follow the wall clock, which is re-read at least every `WALL_CLOCK_RECHECK` seconds so a step
of the clock (NTP, a suspended laptop) is noticed. A schedule that finds itself late by more than
one slot fires once and reports the slots it missed: a jump of the clock never fires a burst.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from orchestrator.config import TaskSpec
from orchestrator.errors import OrchestratorError, QueueFullError, ScheduleError
from orchestrator.models import ScheduleInfo, TaskStatus

logger = logging.getLogger(__name__)

WALL_CLOCK_RECHECK: Final = 1.0
# Counting missed cron slots stops here: past it the count says "at least this many".
MAX_COUNTED_SLOTS: Final = 10_000
TASK_IDS_KEPT: Final = 100

Overlap = Literal["skip", "queue", "replace"]
CatchUp = Literal["once", "none"]

_CRON_ALIASES: Final = {"@hourly", "@daily", "@weekly", "@monthly"}
_CRON_FIELDS: Final = ("minute", "hour", "day of month", "month", "day of week")
_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")


def delayed_until(run_at: datetime | None, delay: float | None, now_wall: float) -> float | None:
    """The wall-clock time (epoch seconds) a delayed task becomes due, or None when not delayed.

    Raises:
        ScheduleError: both given, a negative or non-finite delay, or a naive ``run_at``.
    """
    if run_at is not None and delay is not None:
        raise ScheduleError("give run_at or delay, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay):
            raise ScheduleError(f"delay must be a finite number of seconds, not {delay!r}")
        if delay < 0:
            raise ScheduleError(f"delay must not be negative, got {delay}")
        return now_wall + delay
    if run_at is not None:
        return aware_timestamp(run_at, "run_at")
    return None


def aware_timestamp(moment: datetime, argument: str) -> float:
    """Epoch seconds of a timezone-aware datetime; a naive one is refused, naming ``argument``."""
    if not isinstance(moment, datetime):
        raise ScheduleError(f"{argument} must be a datetime, not {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ScheduleError(
            f"{argument} must be timezone-aware (for example datetime.now(UTC) + timedelta(minutes=5)), "
            f"got the naive {moment.isoformat()}"
        )
    return moment.timestamp()


def check_cron(expression: str) -> None:
    """Refuse anything but five fields or @hourly/@daily/@weekly/@monthly, naming the bad field."""
    if not isinstance(expression, str):
        raise ScheduleError(f"cron must be a string, not {type(expression).__name__}")
    text = expression.strip()
    if text.startswith("@"):
        if text not in _CRON_ALIASES:
            raise ScheduleError(
                f"cron {expression!r}: unknown alias; use one of {', '.join(sorted(_CRON_ALIASES))} "
                "or five fields (minute hour day month weekday)"
            )
        return
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"cron {expression!r} has {len(fields)} fields; it needs exactly five "
            "(minute hour day-of-month month day-of-week), or @hourly/@daily/@weekly/@monthly"
        )
    from croniter import croniter  # here, not at import: most hosts never parse a cron (15 ms)

    for position, (value, name) in enumerate(zip(fields, _CRON_FIELDS, strict=True)):
        alone = ["*"] * 5
        alone[position] = value
        if not croniter.is_valid(" ".join(alone)):
            raise ScheduleError(f"cron {expression!r}: the {name} field {value!r} is not valid")
    if not croniter.is_valid(text):
        raise ScheduleError(f"cron {expression!r} is not valid")


def _cron_moments(expression: str, start: datetime) -> Any:
    """The cron expression's matches after ``start`` (``get_next``); croniter is imported here,
    not with this module, since most hosts never schedule by cron."""
    from croniter import croniter

    return croniter(expression, start)


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleError(f"tz {tz!r} is not a time zone name (such as 'UTC' or 'Europe/Paris')") from None


@dataclass
class Schedule:
    """One recurring task: its definition and where it stands."""

    name: str
    spec: TaskSpec
    every: float | None
    cron: str | None
    tz: str = "UTC"
    start_at: float | None = None
    end_at: float | None = None
    max_runs: int | None = None
    jitter: float = 0.0
    overlap: Overlap = "skip"
    catch_up: CatchUp = "once"
    paused: bool = False
    runs: int = 0
    last_run: float | None = None
    task_ids: deque[str] = field(default_factory=lambda: deque(maxlen=TASK_IDS_KEPT))
    # The next slot: on the monotonic clock for `every`, on the wall clock for `cron`.
    next_slot: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ScheduleError(
                f"schedule name {self.name!r} must be 1-128 characters of letters, digits and _.:- "
                "(not starting with one of .:-)"
            )
        if (self.every is None) == (self.cron is None):
            raise ScheduleError(f"schedule {self.name!r}: give exactly one of every and cron")
        if self.every is not None:
            self.every = interval_seconds(self.every)
        if self.cron is not None:
            check_cron(self.cron)
        _zone(self.tz)
        if self.overlap not in ("skip", "queue", "replace"):
            raise ScheduleError(f"overlap must be 'skip', 'queue' or 'replace', not {self.overlap!r}")
        if self.catch_up not in ("once", "none"):
            raise ScheduleError(f"catch_up must be 'once' or 'none', not {self.catch_up!r}")
        runs = self.max_runs
        if runs is not None and (isinstance(runs, bool) or not isinstance(runs, int) or runs < 1):
            raise ScheduleError(f"max_runs must be a positive integer, not {self.max_runs!r}")
        if (
            isinstance(self.jitter, bool)
            or not isinstance(self.jitter, int | float)
            or not (math.isfinite(self.jitter) and self.jitter >= 0)
        ):
            raise ScheduleError(f"jitter must be a number of seconds >= 0, not {self.jitter!r}")
        if self.start_at is not None and self.end_at is not None and self.end_at <= self.start_at:
            raise ScheduleError(f"schedule {self.name!r}: end_at must come after start_at")

    # ----------------------------------------------------------------- slots

    def start(self, now_mono: float, now_wall: float) -> None:
        """Place the first slot: ``start_at``, else one interval (or the first cron match) from now."""
        if self.every is not None:
            wait = self.every if self.start_at is None else max(0.0, self.start_at - now_wall)
            self.next_slot = now_mono + wait
        else:
            self.next_slot = self._cron_after(max(now_wall, self.start_at or now_wall))

    def seconds_to_next(self, now_mono: float, now_wall: float) -> float | None:
        """How long the runner may sleep before looking at this schedule again (None: paused)."""
        if self.paused or self.next_slot is None:
            return None
        if self.every is not None:
            return max(0.0, self.next_slot - now_mono)
        return max(0.0, min(self.next_slot - now_wall, WALL_CLOCK_RECHECK))

    def is_due(self, now_mono: float, now_wall: float) -> bool:
        """Whether the next slot has come."""
        if self.paused or self.next_slot is None:
            return False
        return self.next_slot <= (now_mono if self.every is not None else now_wall)

    def advance(self, now_mono: float, now_wall: float) -> int:
        """Move past the slot that is due; returns how many further slots were missed.

        On time (or late by less than one slot), the next slot follows the grid without drift.
        Later than that, the due slot stands for all the missed ones and the next comes one
        interval (or the next cron match) from now: never a burst.
        """
        assert self.next_slot is not None
        if self.every is not None:
            late = now_mono - self.next_slot
            if late < self.every:
                self.next_slot += self.every
                return 0
            self.next_slot = now_mono + self.every
            return int(late // self.every)
        missed = self._cron_slots_between(self.next_slot, now_wall) - 1
        self.next_slot = self._cron_after(now_wall)
        return missed

    def resume(self, now_mono: float, now_wall: float) -> None:
        """Unpause; the slots that passed meanwhile are dropped, not fired."""
        self.paused = False
        if self.every is not None:
            assert self.next_slot is not None
            if self.next_slot < now_mono:
                behind = math.ceil((now_mono - self.next_slot) / self.every)
                self.next_slot += behind * self.every
        else:
            self.next_slot = self._cron_after(now_wall)

    def expired(self, now_mono: float, now_wall: float) -> bool:
        """Out of ``max_runs``, or its next slot falls after ``end_at``: the schedule is removed."""
        if self.max_runs is not None and self.runs >= self.max_runs:
            return True
        return self.end_at is not None and self._wall_of_slot(now_mono, now_wall) > self.end_at

    def jitter_delay(self) -> float:
        """A uniform [0, jitter] delay for one firing."""
        return random.uniform(0.0, self.jitter) if self.jitter else 0.0

    def _cron_after(self, moment: float) -> float:
        zone = _zone(self.tz)
        start = datetime.fromtimestamp(moment, tz=zone)
        assert self.cron is not None
        return float(_cron_moments(self.cron, start).get_next(float))

    def _cron_slots_between(self, first: float, last: float) -> int:
        """How many cron matches fall in [first, last] (first is one), counted up to a cap."""
        assert self.cron is not None
        found = 1
        moments = _cron_moments(self.cron, datetime.fromtimestamp(first, tz=_zone(self.tz)))
        while found < MAX_COUNTED_SLOTS and moments.get_next(float) <= last:
            found += 1
        return found

    # ----------------------------------------------------------------- persistence

    def to_json(self, now_mono: float, now_wall: float) -> str:
        """The schedule as the journal stores it, spec apart (slots as wall-clock times)."""
        return json.dumps(
            {
                "every": self.every,
                "cron": self.cron,
                "tz": self.tz,
                "start_at": self.start_at,
                "end_at": self.end_at,
                "max_runs": self.max_runs,
                "jitter": self.jitter,
                "overlap": self.overlap,
                "catch_up": self.catch_up,
                "paused": self.paused,
                "runs": self.runs,
                "last_run": self.last_run,
                "task_ids": list(self.task_ids),
                "next_wall": None if self.next_slot is None else self._wall_of_slot(now_mono, now_wall),
            }
        )

    @classmethod
    def from_json(
        cls, name: str, spec: TaskSpec, text: str, now_mono: float, now_wall: float
    ) -> tuple[Schedule, int]:
        """A journaled schedule, and how many of its slots passed while no host ran it."""
        state = json.loads(text)
        schedule = cls(
            name,
            spec,
            state["every"],
            state["cron"],
            state["tz"],
            state["start_at"],
            state["end_at"],
            state["max_runs"],
            state["jitter"],
            state["overlap"],
            state["catch_up"],
            state["paused"],
            state["runs"],
            state["last_run"],
            deque(state["task_ids"], maxlen=TASK_IDS_KEPT),
        )
        next_wall = state["next_wall"]
        if next_wall is None:
            schedule.start(now_mono, now_wall)
            return schedule, 0
        if next_wall > now_wall or schedule.paused:
            # A paused schedule misses nothing: resume() moves it past the slots it skipped.
            schedule.next_slot = next_wall if schedule.cron else now_mono + (next_wall - now_wall)
            return schedule, 0
        if schedule.every is not None:
            missed = int((now_wall - next_wall) // schedule.every) + 1
        else:
            missed = schedule._cron_slots_between(next_wall, now_wall)
        # Due now: it fires once on the runner's first look unless catch_up says otherwise.
        if schedule.catch_up == "once":
            schedule.next_slot = now_mono if schedule.every is not None else now_wall
        elif schedule.every is not None:
            schedule.next_slot = now_mono + schedule.every - (now_wall - next_wall) % schedule.every
        else:
            schedule.next_slot = schedule._cron_after(now_wall)
        return schedule, missed

    def _wall_of_slot(self, now_mono: float, now_wall: float) -> float:
        assert self.next_slot is not None
        return self.next_slot if self.every is None else now_wall + (self.next_slot - now_mono)

    def info(self, now_mono: float, now_wall: float, last_status: TaskStatus | None) -> ScheduleInfo:
        """The public view of this schedule."""
        next_run = None
        if not self.paused and self.next_slot is not None:
            next_run = datetime.fromtimestamp(self._wall_of_slot(now_mono, now_wall), tz=UTC)
        return ScheduleInfo(
            name=self.name,
            every=self.every,
            cron=self.cron,
            tz=self.tz,
            overlap=self.overlap,
            paused=self.paused,
            next_run=next_run,
            last_run=None if self.last_run is None else datetime.fromtimestamp(self.last_run, tz=UTC),
            last_status=last_status,
            runs=self.runs,
            task_ids=list(self.task_ids),
        )


def interval_seconds(every: float | timedelta) -> float:
    """``every`` as seconds (> 0)."""
    if isinstance(every, timedelta):
        seconds = every.total_seconds()
    elif isinstance(every, bool) or not isinstance(every, int | float):
        raise ScheduleError(f"every must be seconds or a timedelta, not {type(every).__name__}")
    else:
        seconds = float(every)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ScheduleError(f"every must be more than 0 seconds, got {every!r}")
    return seconds


def unknown_schedule(name: str, known: Callable[[], list[str]]) -> OrchestratorError:
    """The error for a name that is not scheduled."""
    names = ", ".join(known()) or "none"
    return OrchestratorError(f"no schedule named {name!r} (scheduled: {names})")


class ScheduleHost(Protocol):
    """What the runner needs from the supervisor (all called on its thread)."""

    def submit_scheduled(self, schedule: Schedule, delay: float) -> str:
        """Queue one firing's task; raises QueueFullError."""

    def task_is_open(self, task_id: str) -> bool:
        """Whether the task is not final yet."""

    def cancel_task(self, task_id: str) -> None:
        """Cancel the task (softly: a running handler gets the usual grace)."""

    def task_status(self, task_id: str) -> TaskStatus | None:
        """The task's status, or None once it is forgotten."""

    def emit(self, name: str, **fields: Any) -> None:
        """Post a schedule event to listeners."""

    def save_schedule(self, schedule: Schedule | None, name: str) -> None:
        """Journal the schedule (None: it was removed)."""

    def arm(self, delay: float | None, action: Callable[[], None]) -> None:
        """Run ``action`` after ``delay`` seconds, replacing the previous arming (None: disarm)."""


class ScheduleRunner:
    """Every schedule of one orchestrator, fired from one timer on the supervisor's thread."""

    def __init__(self, host: ScheduleHost, clock: Callable[[], tuple[float, float]]) -> None:
        self._host = host
        self._clock = clock
        self._schedules: dict[str, Schedule] = {}

    def names(self) -> list[str]:
        """Every schedule's name, sorted."""
        return sorted(self._schedules)

    def add(self, schedule: Schedule) -> None:
        """Start a new schedule; a name already in use is refused."""
        if schedule.name in self._schedules:
            raise OrchestratorError(f"a schedule named {schedule.name!r} exists already; unschedule it first")
        schedule.start(*self._clock())
        self._schedules[schedule.name] = schedule
        self._host.save_schedule(schedule, schedule.name)
        self._arm()

    def restore(self, restored: list[tuple[Schedule, int]]) -> None:
        """Take back journaled schedules; each that missed slots while no host ran says so."""
        for schedule, missed in restored:
            self._schedules[schedule.name] = schedule
            if missed:
                self._host.emit("schedule_missed", schedule=schedule.name, count=missed, reason="restart")
        self._arm()

    def remove(self, name: str) -> None:
        """Stop a schedule; its tasks already fired go on."""
        self._get(name)
        del self._schedules[name]
        self._host.save_schedule(None, name)
        self._arm()

    def pause(self, name: str) -> None:
        """Stop firing until `resume`."""
        schedule = self._get(name)
        schedule.paused = True
        self._host.save_schedule(schedule, name)
        self._arm()

    def resume(self, name: str) -> None:
        """Fire again from the next slot; the slots missed while paused are not fired."""
        schedule = self._get(name)
        if schedule.paused:
            schedule.resume(*self._clock())
            self._host.save_schedule(schedule, name)
        self._arm()

    def infos(self) -> list[ScheduleInfo]:
        """Every schedule's public view, by name."""
        now_mono, now_wall = self._clock()
        views = []
        for name in self.names():
            schedule = self._schedules[name]
            last = self._host.task_status(schedule.task_ids[-1]) if schedule.task_ids else None
            views.append(schedule.info(now_mono, now_wall, last))
        return views

    def _get(self, name: str) -> Schedule:
        schedule = self._schedules.get(name)
        if schedule is None:
            raise unknown_schedule(name, self.names)
        return schedule

    def _arm(self) -> None:
        now_mono, now_wall = self._clock()
        waits = [s.seconds_to_next(now_mono, now_wall) for s in self._schedules.values()]
        due = [wait for wait in waits if wait is not None]
        self._host.arm(min(due) if due else None, self._fire_due)

    def _fire_due(self) -> None:
        now_mono, now_wall = self._clock()
        for schedule in list(self._schedules.values()):
            if not schedule.is_due(now_mono, now_wall):
                continue
            missed = schedule.advance(now_mono, now_wall)
            if missed:
                self._host.emit("schedule_missed", schedule=schedule.name, count=missed, reason="late")
            self._fire(schedule, now_wall)
            if schedule.expired(now_mono, now_wall):
                del self._schedules[schedule.name]
                self._host.save_schedule(None, schedule.name)
            else:
                self._host.save_schedule(schedule, schedule.name)
        self._arm()

    def _fire(self, schedule: Schedule, now_wall: float) -> None:
        previous = schedule.task_ids[-1] if schedule.task_ids else None
        if previous is not None and self._host.task_is_open(previous):
            if schedule.overlap == "skip":
                self._host.emit("schedule_missed", schedule=schedule.name, count=1, reason="overlap")
                return
            if schedule.overlap == "replace":
                self._host.cancel_task(previous)
        try:
            task_id = self._host.submit_scheduled(schedule, schedule.jitter_delay())
        except QueueFullError:
            self._host.emit("schedule_missed", schedule=schedule.name, count=1, reason="queue_full")
            return
        except OrchestratorError as exc:
            logger.error("schedule %r could not submit its task: %s", schedule.name, exc)
            self._host.emit("schedule_missed", schedule=schedule.name, count=1, reason="error")
            return
        schedule.runs += 1
        schedule.last_run = now_wall
        schedule.task_ids.append(task_id)
        self._host.emit("schedule_fired", schedule=schedule.name, task_id=task_id, run=schedule.runs)
