"""Scheduled decision runs: XNYS trading days, half days, DST, grace, restarts and racing schedulers.

Time is an injected clock; the database is the real embedded Postgres. `run_slot` is the
scheduler's injected dependency (the decision run itself), so a recording coroutine stands in.
"""
from __future__ import annotations

import asyncio
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.settings import defaults
from service.scheduler import (
    ScheduleConfig,
    ScheduleConfigError,
    ScheduledSlot,
    Scheduler,
    due_dropped_slots,
    due_slots,
    dropped_slots,
    load_schedule,
    lookback_start,
    slots_for_session,
)
from storage.database import advisory_key

NY = ZoneInfo("America/New_York")
UTC = timezone.utc


def ny(y: int, m: int, d: int, hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, tzinfo=NY)


def config(**overrides) -> ScheduleConfig:
    raw = {
        "timezone": "America/New_York",
        "grace_minutes": 15,
        "half_day_policy": "record_missed",
        "watchlists": {"core": ["SPY", "QQQ"], "tech": ["AAPL", "MSFT"]},
        "slots": [
            {"name": "open", "time": "09:35", "watchlist": "core"},
            {"name": "midday", "time": "12:00", "watchlist": "core"},
            {"name": "close", "time": "15:30", "watchlist": "core"},
        ],
    }
    raw.update(overrides)
    return ScheduleConfig.model_validate(raw)


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class RecordingRun:
    """The injected run_slot: records (slot_key, clock time) and returns a run id."""

    def __init__(self, clock: FakeClock, delay: float = 0.0, fail_on: set[str] | None = None) -> None:
        self.clock, self.delay, self.fail_on = clock, delay, fail_on or set()
        self.calls: list[tuple[str, datetime]] = []

    async def __call__(self, slot: ScheduledSlot) -> str:
        self.calls.append((slot.slot_key, self.clock()))
        if self.delay:
            await asyncio.sleep(self.delay)
        if slot.slot_name in self.fail_on:
            raise RuntimeError(f"provider timed out for {slot.slot_name}")
        return f"run-{slot.slot_key}"


async def slot_rows(db) -> dict[str, dict]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM schedule_slots ORDER BY scheduled_at, slot_key")
    return {r["slot_key"]: dict(r) for r in rows}


# --------------------------------------------------------------------------------------------
# Configuration


def test_shipped_schedule_loads_and_core_is_the_default_watchlist():
    cfg = load_schedule()
    assert cfg.timezone == "America/New_York"
    assert cfg.grace_minutes == 15
    assert cfg.half_day_policy == "record_missed"
    assert [(s.name, s.time, s.watchlist) for s in cfg.slots] == [
        ("open", time(9, 35), "core"), ("midday", time(12, 0), "core"), ("close", time(15, 30), "core"),
    ]
    assert list(cfg.watchlists["core"]) == defaults().watchlist


def test_unquoted_yaml_times_are_read_as_clock_times_not_base_60_numbers(tmp_path):
    # Plain YAML 1.1 reads 12:00 as the integer 720.
    path = tmp_path / "s.yaml"
    path.write_text("watchlists: {core: [SPY]}\nslots:\n  - {name: noon, time: 12:00, watchlist: core}\n")
    assert load_schedule(path).slots[0].time == time(12, 0)


@pytest.mark.parametrize(
    ("slot_time", "message"),
    [("25:00", "not a time of day"), ("9.35", "HH:MM"), ("09:35:10", "HH:MM"), (935, "quoted 'HH:MM'"),
     ("08:00", "outside regular trading hours"), ("16:00", "outside regular trading hours")],
)
def test_bad_slot_time_is_a_clear_error(slot_time, message):
    with pytest.raises(ValueError, match=message):
        config(slots=[{"name": "x", "time": slot_time, "watchlist": "core"}])


def test_unknown_field_bad_reference_and_clashes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="grace_minuts"):
        config(grace_minuts=10)
    with pytest.raises(ValueError, match="unknown watchlists"):
        config(slots=[{"name": "x", "time": "10:00", "watchlist": "nope"}])
    with pytest.raises(ValueError, match="same watchlist at the same time"):
        config(slots=[{"name": "a", "time": "10:00", "watchlist": "core"},
                      {"name": "b", "time": "10:00", "watchlist": "core"}])
    with pytest.raises(ValueError, match="unique"):
        config(slots=[{"name": "a", "time": "10:00", "watchlist": "core"},
                      {"name": "a", "time": "11:00", "watchlist": "tech"}])
    with pytest.raises(ValueError, match="half_day_policy"):
        config(half_day_policy="ignore")
    with pytest.raises(ValueError, match="America/New_York"):
        config(timezone="Europe/London")
    with pytest.raises(ValueError, match="malformed tickers"):
        config(watchlists={"core": ["SPY", "A|B"]})
    path = tmp_path / "bad.yaml"
    path.write_text("watchlists: {core: [SPY]}\nslots: [{name: x, time: '10:00', watchlist: core, colour: red}]\n")
    with pytest.raises(ScheduleConfigError, match=r"(?s)bad\.yaml.*slots\.0\.colour"):
        load_schedule(path)
    with pytest.raises(ScheduleConfigError, match="cannot read"):
        load_schedule(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------------------------
# Calendar and slots


def test_normal_day_slots_and_keys():
    slots = slots_for_session(config(), date(2026, 7, 15))
    assert [s.slot_key for s in slots] == ["core|2026-07-15|09:35", "core|2026-07-15|12:00", "core|2026-07-15|15:30"]
    assert [s.scheduled_at for s in slots] == [ny(2026, 7, 15, 9, 35), ny(2026, 7, 15, 12, 0), ny(2026, 7, 15, 15, 30)]
    assert slots[0].tickers == ("SPY", "QQQ") and slots[0].slot_name == "open"


def test_dst_09_35_new_york_is_13_35_utc_in_july_and_14_35_utc_in_december():
    cfg = config()
    july = slots_for_session(cfg, date(2026, 7, 15))[0].scheduled_at
    december = slots_for_session(cfg, date(2026, 12, 15))[0].scheduled_at
    assert july.astimezone(UTC) == datetime(2026, 7, 15, 13, 35, tzinfo=UTC)
    assert december.astimezone(UTC) == datetime(2026, 12, 15, 14, 35, tzinfo=UTC)
    # Either side of the 2026-03-08 spring-forward weekend.
    assert slots_for_session(cfg, date(2026, 3, 6))[0].scheduled_at.astimezone(UTC).hour == 14
    assert slots_for_session(cfg, date(2026, 3, 9))[0].scheduled_at.astimezone(UTC).hour == 13


def test_holidays_and_weekends_have_no_slots():
    cfg = config()
    assert slots_for_session(cfg, date(2026, 11, 26)) == []  # Thanksgiving
    assert dropped_slots(cfg, date(2026, 11, 26)) == []
    assert slots_for_session(cfg, date(2026, 12, 25)) == []  # Christmas
    assert slots_for_session(cfg, date(2026, 11, 28)) == []  # Saturday


def test_half_day_drops_slots_at_or_after_the_early_close():
    cfg = config(slots=[{"name": "open", "time": "09:35", "watchlist": "core"},
                        {"name": "at_close", "time": "13:00", "watchlist": "core"},
                        {"name": "close", "time": "15:30", "watchlist": "core"}])
    day = date(2026, 11, 27)  # day after Thanksgiving: XNYS closes 13:00
    assert [s.slot_name for s in slots_for_session(cfg, day)] == ["open"]
    dropped = dropped_slots(cfg, day)
    assert [d.slot.slot_name for d in dropped] == ["at_close", "close"]
    assert all("half day" in d.reason and "13:00" in d.reason for d in dropped)
    due = due_dropped_slots(cfg, now=ny(2026, 11, 27, 15, 30), since=ny(2026, 11, 27, 13, 0))
    assert [d.slot.slot_key for d in due] == ["core|2026-11-27|15:30"]


def test_dates_outside_the_calendar_are_a_clear_error():
    with pytest.raises(ValueError, match="outside the XNYS calendar"):
        slots_for_session(config(), date(1990, 1, 3))


def test_due_slots_window_is_open_at_since_and_closed_at_now_and_spans_weekends():
    cfg = config()
    # Friday 12:00 exactly is excluded (since), Monday 12:00 exactly is included (now).
    due = due_slots(cfg, now=ny(2026, 7, 20, 12, 0), since=ny(2026, 7, 17, 12, 0))
    assert [s.slot_key for s in due] == ["core|2026-07-17|15:30", "core|2026-07-20|09:35", "core|2026-07-20|12:00"]
    with pytest.raises(ValueError, match="timezone-aware"):
        due_slots(cfg, now=datetime(2026, 7, 20, 12, 0), since=ny(2026, 7, 17, 12, 0))


@settings(max_examples=40, deadline=None)
@given(
    start=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 20)),
    cuts=st.lists(st.integers(min_value=0, max_value=10 * 24 * 60), min_size=1, max_size=6),
)
def test_consecutive_windows_see_every_slot_exactly_once(start, cuts):
    cfg = config()
    start = start.replace(tzinfo=NY)
    bounds = [start] + [start + timedelta(minutes=c) for c in sorted(cuts)]
    pieces = [s.slot_key for a, b in zip(bounds, bounds[1:]) for s in due_slots(cfg, now=b, since=a)]
    whole = [s.slot_key for s in due_slots(cfg, now=bounds[-1], since=bounds[0])]
    assert pieces == whole
    assert len(set(whole)) == len(whole)


def test_lookback_reaches_the_previous_session_across_a_weekend_and_holiday():
    # Tuesday after Labor Day 2026-09-07: the previous session is Friday 2026-09-04.
    assert lookback_start(ny(2026, 9, 8, 9, 0)) == ny(2026, 9, 4, 0, 0)
    assert lookback_start(ny(2026, 7, 15, 9, 0)) == ny(2026, 7, 14, 0, 0)


# --------------------------------------------------------------------------------------------
# Scheduler against the real database


async def tick_through(scheduler: Scheduler, clock: FakeClock, start: datetime, end: datetime, step_minutes: int):
    outcomes = []
    clock.now = start
    while clock.now <= end:
        outcomes.extend(await scheduler.tick())
        clock.now += timedelta(minutes=step_minutes)
    return outcomes


async def test_a_normal_day_runs_each_slot_once_at_its_time(db):
    clock = FakeClock(ny(2026, 7, 15, 9, 0))
    run = RecordingRun(clock)
    scheduler = Scheduler(db, config(), run, clock, "s1")
    outcomes = await tick_through(scheduler, clock, ny(2026, 7, 15, 9, 0), ny(2026, 7, 15, 17, 0), 5)

    assert run.calls == [
        ("core|2026-07-15|09:35", ny(2026, 7, 15, 9, 35)),
        ("core|2026-07-15|12:00", ny(2026, 7, 15, 12, 0)),
        ("core|2026-07-15|15:30", ny(2026, 7, 15, 15, 30)),
    ]
    today_outcomes = [o for o in outcomes if o.slot.session_date == date(2026, 7, 15)]
    assert [(o.slot.slot_key, o.action, o.run_id) for o in today_outcomes] == [
        ("core|2026-07-15|09:35", "ran", "run-core|2026-07-15|09:35"),
        ("core|2026-07-15|12:00", "ran", "run-core|2026-07-15|12:00"),
        ("core|2026-07-15|15:30", "ran", "run-core|2026-07-15|15:30"),
    ]
    rows = await slot_rows(db)
    today = {k: r for k, r in rows.items() if r["session_date"] == date(2026, 7, 15)}
    assert {k: (r["status"], r["run_id"], r["claimed_by"]) for k, r in today.items()} == {
        k: ("completed", f"run-{k}", "s1") for k in today
    }
    assert today["core|2026-07-15|09:35"]["scheduled_at"] == datetime(2026, 7, 15, 13, 35, tzinfo=UTC)
    # The scheduler had not been running the day before: those slots are recorded, never run.
    yesterday = {k: r["status"] for k, r in rows.items() if r["session_date"] == date(2026, 7, 14)}
    assert yesterday == {f"core|2026-07-14|{t}": "missed" for t in ("09:35", "12:00", "15:30")}


async def test_thanksgiving_has_no_runs_and_no_rows(db):
    clock = FakeClock(ny(2026, 11, 26, 9, 0))
    run = RecordingRun(clock)
    scheduler = Scheduler(db, config(), run, clock, "s1")
    await tick_through(scheduler, clock, ny(2026, 11, 26, 9, 0), ny(2026, 11, 26, 17, 0), 10)
    assert run.calls == []
    assert not [k for k, r in (await slot_rows(db)).items() if r["session_date"] == date(2026, 11, 26)]


async def test_half_day_runs_morning_slots_and_records_the_afternoon_one_as_missed(db):
    clock = FakeClock(ny(2026, 11, 27, 9, 0))
    run = RecordingRun(clock)
    scheduler = Scheduler(db, config(), run, clock, "s1")
    outcomes = await tick_through(scheduler, clock, ny(2026, 11, 27, 9, 0), ny(2026, 11, 27, 16, 0), 5)
    assert [k for k, _ in run.calls] == ["core|2026-11-27|09:35", "core|2026-11-27|12:00"]
    missed = [o for o in outcomes if o.slot.slot_key == "core|2026-11-27|15:30"]
    assert len(missed) == 1 and missed[0].action == "missed" and "half day" in missed[0].detail
    row = (await slot_rows(db))["core|2026-11-27|15:30"]
    assert row["status"] == "missed" and row["run_id"] is None
    assert "half day" in row["detail"] and "13:00" in row["detail"]


async def test_half_day_skip_policy_leaves_no_row(db):
    clock = FakeClock(ny(2026, 11, 27, 15, 35))
    scheduler = Scheduler(db, config(half_day_policy="skip"), RecordingRun(clock), clock, "s1")
    await scheduler.tick()
    assert "core|2026-11-27|15:30" not in await slot_rows(db)


async def test_slot_missed_by_less_than_grace_runs_once_after_a_restart(db):
    clock = FakeClock(ny(2026, 7, 15, 9, 20))
    first = Scheduler(db, config(), RecordingRun(clock), clock, "before-restart")
    await first.tick()  # then the process dies before 09:35
    clock.now = ny(2026, 7, 15, 9, 49, 59)  # 14 min 59 s late
    run = RecordingRun(clock)
    second = Scheduler(db, config(), run, clock, "after-restart")
    outcomes = await second.tick()
    assert [(o.slot.slot_key, o.action) for o in outcomes] == [("core|2026-07-15|09:35", "ran")]
    clock.now += timedelta(minutes=1)
    assert await second.tick() == []
    assert run.calls == [("core|2026-07-15|09:35", ny(2026, 7, 15, 9, 49, 59))]
    assert (await slot_rows(db))["core|2026-07-15|09:35"]["claimed_by"] == "after-restart"


async def test_slot_missed_by_more_than_grace_is_recorded_and_never_run(db):
    clock = FakeClock(ny(2026, 7, 15, 9, 50))  # exactly 15 min late: outside the grace period
    run = RecordingRun(clock)
    scheduler = Scheduler(db, config(), run, clock, "s1")
    outcomes = await scheduler.tick()
    late = [o for o in outcomes if o.slot.slot_key == "core|2026-07-15|09:35"]
    assert late[0].action == "missed" and "0:15:00" in late[0].detail and "grace" in late[0].detail
    await tick_through(scheduler, clock, ny(2026, 7, 15, 9, 55), ny(2026, 7, 15, 11, 0), 5)
    assert run.calls == []
    row = (await slot_rows(db))["core|2026-07-15|09:35"]
    assert (row["status"], row["run_id"]) == ("missed", None) and "grace" in row["detail"]


async def test_two_schedulers_ticking_at_once_run_each_slot_once(db):
    cfg = config(slots=[{"name": "open", "time": "09:35", "watchlist": "core"},
                        {"name": "open_tech", "time": "09:35", "watchlist": "tech"},
                        {"name": "midday", "time": "12:00", "watchlist": "core"}])
    clock = FakeClock(ny(2026, 7, 15, 9, 30))
    runs = [RecordingRun(clock, delay=0.05), RecordingRun(clock, delay=0.05)]
    schedulers = [Scheduler(db, cfg, runs[i], clock, f"s{i}") for i in range(2)]
    for minute in (datetime(2026, 7, 15, 9, 35), datetime(2026, 7, 15, 9, 36), datetime(2026, 7, 15, 12, 0)):
        clock.now = minute.replace(tzinfo=NY)
        await asyncio.gather(*(s.tick() for s in schedulers))
    calls = sorted(k for r in runs for k, _ in r.calls)
    assert calls == ["core|2026-07-15|09:35", "core|2026-07-15|12:00", "tech|2026-07-15|09:35"]
    rows = await slot_rows(db)
    assert {k: r["status"] for k, r in rows.items() if r["session_date"] == date(2026, 7, 15)} == {
        "core|2026-07-15|09:35": "completed", "core|2026-07-15|12:00": "completed",
        "tech|2026-07-15|09:35": "completed",
    }


async def test_a_raising_run_is_recorded_failed_and_the_next_tick_goes_on(db):
    clock = FakeClock(ny(2026, 7, 15, 9, 35))
    run = RecordingRun(clock, fail_on={"open"})
    scheduler = Scheduler(db, config(), run, clock, "s1")
    outcomes = await scheduler.tick()
    failed = [o for o in outcomes if o.slot.slot_key == "core|2026-07-15|09:35"]
    assert failed[0].action == "failed" and failed[0].detail == "RuntimeError: provider timed out for open"
    clock.now = ny(2026, 7, 15, 12, 0)
    outcomes = await scheduler.tick()
    assert [(o.slot.slot_key, o.action) for o in outcomes] == [("core|2026-07-15|12:00", "ran")]
    assert [k for k, _ in run.calls] == ["core|2026-07-15|09:35", "core|2026-07-15|12:00"]  # no retry
    row = (await slot_rows(db))["core|2026-07-15|09:35"]
    assert (row["status"], row["run_id"], row["detail"]) == ("failed", None, "RuntimeError: provider timed out for open")
    assert row["finished_at"] == ny(2026, 7, 15, 9, 35)


async def test_a_run_that_returns_no_run_id_is_a_failure(db):
    clock = FakeClock(ny(2026, 7, 15, 9, 36))

    async def returns_nothing(slot):
        return None

    outcomes = await Scheduler(db, config(), returns_nothing, clock, "s1").tick()
    today = [o for o in outcomes if o.slot.session_date == date(2026, 7, 15)]
    assert today[0].action == "failed" and "expected a non-empty run id" in today[0].detail


async def insert_claimed(db, key: str, at: datetime, by: str) -> None:
    watchlist, day, _ = key.split("|")
    async with db.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO schedule_slots (slot_key, slot_name, watchlist, session_date, scheduled_at, status, claimed_by)"
            " VALUES ($1, 'open', $2, $3, $4, 'claimed', $5)",
            key, watchlist, date.fromisoformat(day), at, by,
        )


async def test_a_slot_left_claimed_by_a_dead_scheduler_is_resumed_within_grace(db):
    key = "core|2026-07-15|09:35"
    await insert_claimed(db, key, ny(2026, 7, 15, 9, 35), "crashed")  # no one holds its lock
    clock = FakeClock(ny(2026, 7, 15, 9, 40))
    run = RecordingRun(clock)
    outcomes = await Scheduler(db, config(), run, clock, "s2").tick()
    resumed = [o for o in outcomes if o.slot.slot_key == key][0]
    assert resumed.action == "ran" and "crashed" in resumed.detail
    assert [k for k, _ in run.calls] == [key]
    assert (await slot_rows(db))[key]["status"] == "completed"


async def test_a_slot_left_claimed_past_grace_is_marked_abandoned(db):
    key = "core|2026-07-15|09:35"
    await insert_claimed(db, key, ny(2026, 7, 15, 9, 35), "crashed")
    clock = FakeClock(ny(2026, 7, 15, 10, 30))
    run = RecordingRun(clock)
    outcomes = await Scheduler(db, config(), run, clock, "s2").tick()
    abandoned = [o for o in outcomes if o.slot.slot_key == key][0]
    assert abandoned.action == "failed" and "abandoned" in abandoned.detail
    assert run.calls == [] and (await slot_rows(db))[key]["status"] == "failed"


async def test_a_slot_being_run_by_a_live_scheduler_is_left_alone(db):
    key = "core|2026-07-15|09:35"
    await insert_claimed(db, key, ny(2026, 7, 15, 9, 35), "alive")
    clock = FakeClock(ny(2026, 7, 15, 9, 40))
    run = RecordingRun(clock)
    async with db.pool.acquire() as holder:  # the live scheduler's lock on the slot
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", advisory_key(f"schedule_slot:{key}"))
        outcomes = await Scheduler(db, config(), run, clock, "s2").tick()
        await holder.execute("SELECT pg_advisory_unlock_all()")
    assert [o.action for o in outcomes if o.slot.slot_key == key] == ["skipped_claimed"]
    assert run.calls == [] and (await slot_rows(db))[key]["status"] == "claimed"


async def test_a_naive_clock_is_refused(db):
    scheduler = Scheduler(db, config(), RecordingRun(FakeClock(ny(2026, 7, 15, 9, 0))),
                          lambda: datetime(2026, 7, 15, 9, 40), "s1")
    with pytest.raises(ValueError, match="timezone-aware"):
        await scheduler.tick()


async def test_run_forever_survives_a_failing_tick_and_stops_on_the_event(db):
    stop = asyncio.Event()
    readings = iter([datetime(2026, 7, 15, 9, 36)])  # first reading is naive: that tick fails

    def clock() -> datetime:
        return next(readings, ny(2026, 7, 15, 9, 36))

    calls = []

    async def run_slot(slot):
        calls.append(slot.slot_key)
        stop.set()
        return "run-1"

    scheduler = Scheduler(db, config(), run_slot, clock, "s1")
    with pytest.raises(ValueError, match="poll_seconds"):
        await scheduler.run_forever(stop, poll_seconds=15 * 60)
    await asyncio.wait_for(scheduler.run_forever(stop, poll_seconds=0.01), timeout=10)
    assert calls == ["core|2026-07-15|09:35"]


async def test_a_large_backlog_neither_exhausts_the_pool_nor_runs_more_than_the_limit_at_once(db):
    # Five watchlists at noon, plus yesterday's and this morning's slots to record as missed: more
    # slots than the test pool (6 connections), while each run itself needs a connection too.
    names = [f"w{i}" for i in range(5)]
    cfg = config(watchlists={n: ["SPY"] for n in names},
                 slots=[{"name": f"{n}_{t}", "time": t, "watchlist": n} for n in names for t in ("09:35", "12:00")])
    clock = FakeClock(ny(2026, 7, 15, 12, 5))
    in_flight, peak, ran = 0, 0, []

    async def run_slot(slot):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        async with db.pool.acquire() as conn:  # the run writes its own rows
            await conn.execute("SELECT pg_sleep(0.05)")
        in_flight -= 1
        ran.append(slot.slot_key)
        return f"run-{slot.slot_key}"

    scheduler = Scheduler(db, cfg, run_slot, clock, "s1", max_concurrent_slots=2)
    outcomes = await asyncio.wait_for(scheduler.tick(), timeout=30)
    assert sorted(ran) == sorted(f"{n}|2026-07-15|12:00" for n in names)
    assert peak == 2
    assert sum(o.action == "missed" for o in outcomes) == 15  # 10 yesterday + 5 this morning
    with pytest.raises(ValueError, match="max_concurrent_slots"):
        Scheduler(db, cfg, run_slot, clock, "s1", max_concurrent_slots=0)
