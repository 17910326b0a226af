"""Scheduled decision runs: which slots fall on which XNYS trading days, and running each one once.

A slot is (watchlist, session date, wall-clock time in America/New_York). Its key
`f"{watchlist}|{session_date}|{HH:MM}"` is the primary key of `schedule_slots`, so any number of
schedulers can tick at once: whoever inserts the row first runs the slot, the others do nothing.

Rules a tick applies to every slot whose time has passed since the start of the previous session:
- due less than `grace_minutes` ago → run it (status `claimed` → `completed` with the run id, or
  `failed` with the error text);
- due longer ago (the scheduler was down) → record `missed` with the reason, never run it;
- on a half day, a slot at/after the early close → `missed` with a "half day" reason
  (`half_day_policy: record_missed`) or nothing at all (`skip`);
- holidays and weekends have no slots.

While it runs a slot the winner holds a session advisory lock on the slot, so a row left `claimed`
by a scheduler that died mid-run (its lock died with its connection) is recognisable: within the
grace period it is run again — `run_slot` must therefore be idempotent per slot key (the stable run
id resumes from its checkpoint) — and after it, it is marked `failed` as abandoned.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import asyncpg
import exchange_calendars
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from config.clock import wall_clock
from config.settings import CONFIG_DIR
from storage import schedule_slots
from storage.database import Database, advisory_key
from service import notify
from tools.market_hours import day_start

log = logging.getLogger(__name__)

EXCHANGE = "XNYS"
MARKET_TZ = ZoneInfo("America/New_York")
REGULAR_OPEN = time(9, 30)
REGULAR_CLOSE = time(16, 0)
DEFAULT_SCHEDULE_PATH = CONFIG_DIR / "schedule.yaml"

# Calendar bounds: exchange_calendars refuses dates outside the range it was built for.
CALENDAR_START = date(2000, 1, 1)
CALENDAR_YEARS_AHEAD = 5

_HHMM = re.compile(r"^(\d{1,2}):(\d{2})$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")  # no '|': it separates the parts of a slot key


# ---------------------------------------------------------------------------------------------
# Configuration


class ScheduleConfigError(ValueError):
    """The schedule file is missing, unreadable or invalid; the message names the file and field."""


class SlotConfig(BaseModel):
    """One daily slot: run `watchlist` at `time` (America/New_York wall clock) each trading day."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    time: time
    watchlist: str

    @field_validator("time", mode="before")
    @classmethod
    def _parse_hhmm(cls, value: Any) -> Any:
        if isinstance(value, time):
            if value.second or value.microsecond or value.tzinfo:
                raise ValueError("slot time must be a whole minute with no timezone, e.g. '09:35'")
            return value
        if isinstance(value, bool) or not isinstance(value, str):
            raise ValueError(
                f"slot time must be a quoted 'HH:MM' string, got {value!r} ({type(value).__name__})"
            )
        match = _HHMM.match(value.strip())
        if not match:
            raise ValueError(f"slot time must look like 'HH:MM' (e.g. '09:35'), got {value!r}")
        hour, minute = int(match.group(1)), int(match.group(2))
        if hour > 23 or minute > 59:
            raise ValueError(f"slot time {value!r} is not a time of day")
        return time(hour, minute)

    @field_validator("time")
    @classmethod
    def _inside_regular_hours(cls, value: time) -> time:
        # Outside regular hours a slot would never run (or run on stale quotes): refuse it now.
        if not REGULAR_OPEN <= value < REGULAR_CLOSE:
            raise ValueError(
                f"slot time {value:%H:%M} is outside regular trading hours "
                f"[{REGULAR_OPEN:%H:%M}, {REGULAR_CLOSE:%H:%M}) America/New_York"
            )
        return value

    @property
    def hhmm(self) -> str:
        return f"{self.time:%H:%M}"


class ScheduleConfig(BaseModel):
    """The schedule: named watchlists and the daily slots that run them. Frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Fixed: slot times are exchange-local and the trading days come from the XNYS calendar.
    timezone: Literal["America/New_York"] = "America/New_York"
    grace_minutes: int = Field(15, ge=1, le=390)
    half_day_policy: Literal["record_missed", "skip"] = "record_missed"
    watchlists: dict[str, tuple[str, ...]]
    slots: list[SlotConfig] = Field(min_length=1)

    @field_validator("watchlists")
    @classmethod
    def _check_watchlists(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        if not value:
            raise ValueError("at least one watchlist is needed")
        for name, tickers in value.items():
            if not _NAME.match(name):
                raise ValueError(f"watchlist name {name!r} may use only letters, digits, '_', '.', '-'")
            if not tickers:
                raise ValueError(f"watchlist {name!r} has no tickers")
            bad = [t for t in tickers if not isinstance(t, str) or not _NAME.match(t)]
            if bad:
                raise ValueError(f"watchlist {name!r} has malformed tickers: {bad}")
            duplicates = sorted({t for t in tickers if tickers.count(t) > 1})
            if duplicates:
                raise ValueError(f"watchlist {name!r} lists tickers twice: {duplicates}")
        return value

    @model_validator(mode="after")
    def _check_slots(self) -> "ScheduleConfig":
        names = [s.name for s in self.slots]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"slot names must be unique, repeated: {duplicates}")
        unknown = sorted({s.watchlist for s in self.slots} - set(self.watchlists))
        if unknown:
            raise ValueError(f"slots refer to unknown watchlists {unknown}; known: {sorted(self.watchlists)}")
        keys = [(s.watchlist, s.hhmm) for s in self.slots]
        clashes = sorted({k for k in keys if keys.count(k) > 1})
        if clashes:
            # The slot key is watchlist|date|HH:MM: two such slots would be one slot.
            raise ValueError(f"two slots run the same watchlist at the same time: {clashes}")
        return self


class _ScheduleLoader(yaml.SafeLoader):
    """SafeLoader that keeps `12:00` a string: YAML 1.1 would read it as the base-60 integer 720."""


def _int_or_clock_time(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | str:
    text = loader.construct_scalar(node)
    if ":" in text:
        return text
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_ScheduleLoader.add_constructor("tag:yaml.org,2002:int", _int_or_clock_time)


def load_schedule(path: str | Path | None = None) -> ScheduleConfig:
    """Read and validate a schedule YAML file (default `config/schedule.yaml`).

    Raises `ScheduleConfigError` naming the file and the offending field.
    """
    path = Path(path) if path is not None else DEFAULT_SCHEDULE_PATH
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=_ScheduleLoader)  # noqa: S506 - a SafeLoader subclass
    except OSError as exc:
        raise ScheduleConfigError(f"cannot read schedule {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ScheduleConfigError(f"schedule {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ScheduleConfigError(f"schedule {path} must be a mapping, got {type(raw).__name__}")
    try:
        return ScheduleConfig.model_validate(raw)
    except ValidationError as exc:
        raise ScheduleConfigError(f"invalid schedule {path}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Calendar


@functools.cache
def xnys_calendar() -> exchange_calendars.ExchangeCalendar:
    """The XNYS calendar, built once per process (building takes ~0.4 s)."""
    end = date(date.today().year + CALENDAR_YEARS_AHEAD, 12, 31)
    return exchange_calendars.get_calendar(EXCHANGE, start=CALENDAR_START.isoformat(), end=end.isoformat())


def _check_in_calendar(day: date) -> None:
    cal = xnys_calendar()
    first, last = cal.first_session.date(), cal.last_session.date()
    if not first <= day <= last:
        raise ValueError(f"{day} is outside the {EXCHANGE} calendar's range [{first}, {last}]")


def _is_session(day: date) -> bool:
    _check_in_calendar(day)
    return bool(xnys_calendar().is_session(pd.Timestamp(day)))


def _session_bounds(day: date) -> tuple[datetime, datetime]:
    """(open, close) of a trading session as tz-aware America/New_York datetimes."""
    cal = xnys_calendar()
    ts = pd.Timestamp(day)
    return (
        cal.session_open(ts).to_pydatetime().astimezone(MARKET_TZ),
        cal.session_close(ts).to_pydatetime().astimezone(MARKET_TZ),
    )


def previous_session(day: date) -> date:
    """The last XNYS trading session strictly before `day`."""
    _check_in_calendar(day)
    cal = xnys_calendar()
    sessions = cal.sessions
    index = sessions.searchsorted(pd.Timestamp(day)) - 1
    if index < 0:
        raise ValueError(f"no {EXCHANGE} session before {day} in the calendar's range")
    return sessions[index].date()


# ---------------------------------------------------------------------------------------------
# Slots


@dataclass(frozen=True)
class ScheduledSlot:
    """One slot on one trading day. `scheduled_at` is tz-aware America/New_York."""

    slot_key: str
    slot_name: str
    watchlist: str
    tickers: tuple[str, ...]
    session_date: date
    scheduled_at: datetime


@dataclass(frozen=True)
class DroppedSlot:
    """A configured slot that does not run on its day (half day: at/after the early close)."""

    slot: ScheduledSlot
    reason: str


def slot_key(watchlist: str, session_date: date, at: time) -> str:
    return f"{watchlist}|{session_date.isoformat()}|{at:%H:%M}"


def _all_slots(config: ScheduleConfig, session_date: date) -> tuple[list[ScheduledSlot], list[DroppedSlot]]:
    if not _is_session(session_date):
        return [], []
    opens_at, closes_at = _session_bounds(session_date)
    runnable: list[ScheduledSlot] = []
    dropped: list[DroppedSlot] = []
    for cfg in config.slots:
        # Combining the wall-clock time with the zone (not adding an offset) keeps 09:35 at 09:35
        # on both sides of a DST change.
        scheduled_at = datetime.combine(session_date, cfg.time, tzinfo=MARKET_TZ)
        slot = ScheduledSlot(
            slot_key=slot_key(cfg.watchlist, session_date, cfg.time),
            slot_name=cfg.name,
            watchlist=cfg.watchlist,
            tickers=tuple(config.watchlists[cfg.watchlist]),
            session_date=session_date,
            scheduled_at=scheduled_at,
        )
        if scheduled_at >= closes_at:
            dropped.append(DroppedSlot(slot, f"half day: {EXCHANGE} closes early at {closes_at:%H:%M} "
                                             f"America/New_York on {session_date}, slot is at {cfg.hhmm}"))
        elif scheduled_at < opens_at:
            dropped.append(DroppedSlot(slot, f"late open: {EXCHANGE} opens at {opens_at:%H:%M} "
                                             f"America/New_York on {session_date}, slot is at {cfg.hhmm}"))
        else:
            runnable.append(slot)
    runnable.sort(key=lambda s: (s.scheduled_at, s.slot_key))
    dropped.sort(key=lambda d: (d.slot.scheduled_at, d.slot.slot_key))
    return runnable, dropped


def slots_for_session(config: ScheduleConfig, session_date: date) -> list[ScheduledSlot]:
    """The slots that run on `session_date`, by time; [] on weekends and holidays.

    On a half day, slots at or after the early close are left out (see `dropped_slots`).
    Raises ValueError for a date outside the calendar's range.
    """
    return _all_slots(config, session_date)[0]


def dropped_slots(config: ScheduleConfig, session_date: date) -> list[DroppedSlot]:
    """Configured slots that do not run on `session_date` because the session is short, with why."""
    return _all_slots(config, session_date)[1]


def _require_aware(value: datetime, name: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


def _sessions_between(since: datetime, now: datetime) -> Iterable[date]:
    day, last = since.astimezone(MARKET_TZ).date(), now.astimezone(MARKET_TZ).date()
    while day <= last:
        yield day
        day += timedelta(days=1)


def due_slots(config: ScheduleConfig, now: datetime, since: datetime) -> list[ScheduledSlot]:
    """Runnable slots with `since < scheduled_at <= now`, by time. Both bounds tz-aware."""
    _require_aware(now, "now")
    _require_aware(since, "since")
    return [s for day in _sessions_between(since, now) for s in slots_for_session(config, day)
            if since < s.scheduled_at <= now]


def due_dropped_slots(config: ScheduleConfig, now: datetime, since: datetime) -> list[DroppedSlot]:
    """Dropped (half-day) slots with `since < scheduled_at <= now`, by time."""
    _require_aware(now, "now")
    _require_aware(since, "since")
    return [d for day in _sessions_between(since, now) for d in dropped_slots(config, day)
            if since < d.slot.scheduled_at <= now]


def lookback_start(now: datetime) -> datetime:
    """Midnight New York of the previous trading session: how far back a tick looks for slots.

    Far enough that a scheduler restarted on Monday (or after a holiday) still records what it
    missed on the last session.
    """
    _require_aware(now, "now")
    day = previous_session(now.astimezone(MARKET_TZ).date())
    return day_start(day)


# ---------------------------------------------------------------------------------------------
# Scheduler

SlotAction = Literal["ran", "missed", "skipped_claimed", "failed"]


@dataclass(frozen=True)
class SlotOutcome:
    """What one tick did with one slot. `run_id` is set when `run_slot` returned one."""

    slot: ScheduledSlot
    action: SlotAction
    run_id: str | None = None
    detail: str | None = None


RunSlot = Callable[[ScheduledSlot], Awaitable[str]]
Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return wall_clock()


def _default_scheduler_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _lock_name(key: str) -> str:
    return f"schedule_slot:{key}"


_TERMINAL = ("completed", "failed", "missed")
_MAX_DETAIL = 4000


class Scheduler:
    """Runs each due slot exactly once across any number of schedulers sharing a database.

    `run_slot(slot)` starts (or, for the same slot key, resumes) a decision run and returns its run
    id; an exception from it marks the slot `failed` and never reaches the loop. `clock()` must
    return a tz-aware datetime (injected in tests). Each slot being handled holds one pool
    connection for its whole run (it carries the slot's advisory lock); at most
    `max_concurrent_slots` are handled at once, the rest of a tick's slots wait their turn.
    """

    def __init__(
        self,
        db: Database,
        config: ScheduleConfig,
        run_slot: RunSlot,
        clock: Clock = _utc_now,
        scheduler_id: str | None = None,
        *,
        max_concurrent_slots: int = 2,
    ) -> None:
        if max_concurrent_slots < 1:
            raise ValueError(f"max_concurrent_slots must be at least 1, got {max_concurrent_slots}")
        self.db = db
        self.config = config
        self.run_slot = run_slot
        self.clock = clock
        self.scheduler_id = scheduler_id or _default_scheduler_id()
        self._slots_at_once = asyncio.Semaphore(max_concurrent_slots)

    def _now(self) -> datetime:
        now = self.clock()
        _require_aware(now, "clock()")
        return now

    async def tick(self) -> list[SlotOutcome]:
        """Claim and handle every slot due since the previous session began; return what was done.

        Slots already finished (completed/failed/missed) give no outcome. Slots due at the same
        time (several watchlists) run concurrently, up to `max_concurrent_slots`. Whether a slot is
        within grace is decided at the start of the tick, so waiting behind another run never
        turns a slot into a miss.
        """
        now = self._now()
        notify.sweep(self.db, now)  # approvals about to expire, fills, failed runs, daily summary
        since = lookback_start(now)
        grace = timedelta(minutes=self.config.grace_minutes)
        work: list[tuple[ScheduledSlot, str, str | None]] = []  # (slot, plan, reason)
        for slot in due_slots(self.config, now, since):
            late_by = now - slot.scheduled_at
            if late_by < grace:
                work.append((slot, "run", None))
            else:
                work.append((slot, "missed", f"late: scheduler first saw this slot {_hms(late_by)} (h:mm:ss) after "
                                             f"its time, beyond the {self.config.grace_minutes}-minute grace"))
        if self.config.half_day_policy == "record_missed":
            work.extend((d.slot, "missed", d.reason) for d in due_dropped_slots(self.config, now, since))
        if not work:
            return []

        recorded = await schedule_slots.statuses(self.db.pool, [slot.slot_key for slot, _, _ in work])
        finished = {key for key, status in recorded.items() if status in _TERMINAL}
        work = [w for w in work if w[0].slot_key not in finished]
        work.sort(key=lambda w: (w[0].scheduled_at, w[0].slot_key))

        results = await asyncio.gather(*(self._handle(slot, plan, reason, now) for slot, plan, reason in work),
                                       return_exceptions=True)
        outcomes = [r for r in results if isinstance(r, SlotOutcome)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            # Database trouble, not a run failure (those become `failed` outcomes): surface it.
            raise errors[0]
        return outcomes

    async def _handle(self, slot: ScheduledSlot, plan: str, reason: str | None, now: datetime) -> SlotOutcome:
        # One connection per slot carries the lock, the claim, and the final status, so a handler
        # never waits on the pool while holding a lock; the semaphore leaves connections for the runs.
        async with self._slots_at_once, self.db.pool.acquire() as conn:
            key = advisory_key(_lock_name(slot.slot_key))
            if not await schedule_slots.try_lock(conn, key):
                return SlotOutcome(slot, "skipped_claimed", detail="another scheduler is handling this slot")
            try:
                return await self._handle_locked(conn, slot, plan, reason, now)
            finally:
                await schedule_slots.unlock(conn, key)

    async def _handle_locked(self, conn: asyncpg.Connection, slot: ScheduledSlot, plan: str,
                             reason: str | None, now: datetime) -> SlotOutcome:
        initial_status = "claimed" if plan == "run" else "missed"
        inserted = await schedule_slots.insert(
            conn, slot_key=slot.slot_key, slot_name=slot.slot_name, watchlist=slot.watchlist,
            session_date=slot.session_date, scheduled_at=slot.scheduled_at, status=initial_status,
            claimed_by=self.scheduler_id, claimed_at=now, finished_at=None if plan == "run" else now, detail=reason)
        resumed_from: str | None = None
        if not inserted:
            existing = await schedule_slots.get(conn, slot.slot_key)
            if existing is None or existing["status"] in _TERMINAL:
                # Someone finished it between our look and our lock.
                return SlotOutcome(slot, "skipped_claimed", detail="already handled by another scheduler")
            # Status `claimed` while we hold its lock: the claimer died mid-run.
            resumed_from = existing["claimed_by"]
            if plan != "run":
                detail = (f"abandoned: scheduler {resumed_from} stopped while running it "
                          f"(claimed {existing['claimed_at'].isoformat()}); past the grace period, not resumed")
                await schedule_slots.fail_claimed(conn, slot.slot_key, now, detail)
                log.warning("slot %s %s", slot.slot_key, detail)
                return SlotOutcome(slot, "failed", detail=detail)
            await schedule_slots.reclaim(conn, slot.slot_key, self.scheduler_id, now)
        elif plan != "run":
            log.warning("slot %s missed: %s", slot.slot_key, reason)
            return SlotOutcome(slot, "missed", detail=reason)
        return await self._run(conn, slot, resumed_from)

    async def _run(self, conn: asyncpg.Connection, slot: ScheduledSlot, resumed_from: str | None) -> SlotOutcome:
        resumed = f"resumed after scheduler {resumed_from} stopped mid-run" if resumed_from else None
        log.info("running slot %s (%s)", slot.slot_key, ", ".join(slot.tickers))
        try:
            run_id = await self.run_slot(slot)
            if not isinstance(run_id, str) or not run_id:
                raise TypeError(f"run_slot returned {run_id!r}, expected a non-empty run id string")
        except Exception as exc:  # a failed run is recorded, never allowed to stop the scheduler
            detail = f"{type(exc).__name__}: {exc}"[:_MAX_DETAIL]
            log.exception("slot %s failed", slot.slot_key)
            await self._finish(conn, slot, "failed", None, detail)
            return SlotOutcome(slot, "failed", detail=detail)
        await self._finish(conn, slot, "completed", run_id, resumed)
        return SlotOutcome(slot, "ran", run_id=run_id, detail=resumed)

    async def _finish(self, conn: asyncpg.Connection, slot: ScheduledSlot, status: str, run_id: str | None,
                      detail: str | None) -> None:
        await schedule_slots.finish(conn, slot.slot_key, status, run_id, detail, self._now())

    async def run_forever(self, stop_event: asyncio.Event, poll_seconds: float = 20,
                          after_tick: Callable[[list[SlotOutcome]], Awaitable[Any]] | None = None) -> None:
        """Tick every `poll_seconds` until `stop_event` is set. A failing tick is logged, not fatal.
        `after_tick(outcomes)` runs after every tick (housekeeping: marks when a slot ran)."""
        if not 0 < poll_seconds < self.config.grace_minutes * 60:
            raise ValueError(f"poll_seconds must be in (0, {self.config.grace_minutes * 60}) so no slot "
                             f"outlives its grace period between ticks, got {poll_seconds}")
        while not stop_event.is_set():
            outcomes: list[SlotOutcome] = []
            try:
                outcomes = await self.tick()
            except Exception:
                log.exception("scheduler tick failed; retrying in %s s", poll_seconds)
            if after_tick is not None:
                await after_tick(outcomes)
            try:
                await asyncio.wait_for(stop_event.wait(), timeout=poll_seconds)
            except TimeoutError:
                pass


def _hms(delta: timedelta) -> str:
    return str(timedelta(seconds=int(delta.total_seconds())))
