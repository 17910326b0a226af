"""A backtest: the same graph and the same book, driven by a historical clock.

Each NYSE session from `start` to `end`:

1. at each slot (default 15:30 New York; on a half day, 30 minutes before the early close) the
   clock is set there, exits approved at the previous close go out (`approvals.recover_pending`:
   the order manager held them while the market was closed), and a normal decision run
   (`operations.run_decision`) decides on the historical market;
2. the approval policy decides each staged order through `approvals.decide`, so fills come from
   the same order manager and the paper broker's slippage model as live;
3. at the close, `housekeeping(ctx, mark=True)`: expiry settlement, marks, an account snapshot,
   exit rules; each exit it stages is decided by the same policy (and, the market being closed, is
   sent at the next slot).

The historical market is end of day (daily bars): a 15:30 run sees the previous session's close
and fills at prices modelled from it; the close's housekeeping sees that session's close.

Isolation: a backtest runs in a database of its own (`hedgegraph_bt_<id>` on the same server)
with its own paper account (`backtest-<id>`). Approvals, expiry, recovery, exit runs, memories
and the kill switch are database-wide, so sharing the user's database would let a backtest
resume, expire or fill the user's orders (and the user's runs recall backtest memories). The
main database keeps the index (`backtests`, `backtest_days`); `backtest show` prints the
`DATABASE_URL` under which `runs show`, `replay` and `fork` open any backtest day.

A backtest that did not finish continues after its last recorded day when run again (same id,
same database and account); a day cut short runs again from its start, which repeats nothing
(deterministic run ids, decided orders skipped, housekeeping idempotent at the same instant).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Literal

from config.settings import DecisionConfig, defaults
from tools.chain import NEW_YORK

log = logging.getLogger(__name__)
DEFAULT_SLOTS = (time(15, 30),)
WATCHLIST = "backtest"
APPROVER = "backtest-policy"


# Bump when a fix changes what a backtest computes (book, quotes, fills, exits): the same command
# then runs afresh instead of reporting a result the old code made. 2: zero-bid wings are quoted,
# assigned shares are valued at market (the 2011-2019 study). 3: delivered shares are flattened by
# an exit the session after delivery, and their P&L is the position's. 4: time to expiry is elapsed
# time (a modelled chain's 16:00 New York as_of was an hour off in T across a DST change).
RESULTS_VERSION = 4


class BacktestError(ValueError):
    """A backtest that cannot start (no sessions, bad dates, missing data); one line says why."""


@dataclass(frozen=True)
class BacktestSpec:
    start: date
    end: date
    tickers: tuple[str, ...]
    data_dir: str
    slots: tuple[time, ...] = DEFAULT_SLOTS
    approve: Literal["all", "policy"] = "all"
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    chains_dir: str | None = None

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise BacktestError(f"--to {self.end} is before --from {self.start}")
        if not self.tickers:
            raise BacktestError("a backtest needs at least one ticker")
        if self.approve not in ("all", "policy"):
            raise BacktestError(f"--approve must be all or policy, got {self.approve!r}")

    def config(self) -> DecisionConfig:
        return defaults().decision.with_overrides(self.overrides)

    def params(self) -> dict[str, Any]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(), "tickers": list(self.tickers),
                "slots": [s.strftime("%H:%M") for s in self.slots], "approve": self.approve,
                "overrides": dict(sorted(self.overrides.items())), "seed": self.seed, "data_dir": self.data_dir,
                "chains_dir": self.chains_dir}

    def backtest_id(self, data_fingerprint: str) -> str:
        """Same parameters, same data files, same configuration and results version: same backtest."""
        text = json.dumps(self.params() | {"data": data_fingerprint, "results_version": RESULTS_VERSION,
                                           "config": self.config().model_dump(mode="json")}, sort_keys=True)
        return "bt_" + hashlib.sha256(text.encode()).hexdigest()[:12]


def slot_time(day: date, slot: time, opens: datetime, closes: datetime) -> datetime:
    """The slot on `day`, kept inside the session (a half day closes at 13:00)."""
    at = datetime.combine(day, slot, tzinfo=NEW_YORK)
    if at >= closes:
        at = closes - timedelta(minutes=30)
    return max(at, opens + timedelta(minutes=1))


class SimulatedClock:
    """The backtest's clock: every component that asks for "now" gets the simulated instant."""

    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@dataclass(frozen=True)
class PolicyDecision:
    action: Literal["approve", "reject", "resize"]
    quantity: int | None = None
    reason: str | None = None


def policy_decision(review: dict[str, Any], approve: str, *, min_probability: float = 0.5) -> PolicyDecision:
    """What the approval policy decides on an order review (what a human would see).

    `all`: approve every order (more than 10 contracts acknowledged). `policy`: exits are always
    approved; an opening order is rejected when its probability of profit is below `min_probability`
    or its expected P&L is not positive, and resized to 10 contracts when larger (a human would
    need to acknowledge more)."""
    if approve == "all" or review.get("closes_position_id"):
        return PolicyDecision("approve")
    proposal_pop = review.get("probability_of_profit")
    expected = review.get("expected_pnl_per_unit")
    if proposal_pop is not None and float(proposal_pop) < min_probability:
        return PolicyDecision("reject", reason=f"policy: probability of profit {float(proposal_pop):.2f} "
                                               f"< {min_probability:.2f}")
    if expected is not None and float(expected) <= 0:
        return PolicyDecision("reject", reason=f"policy: expected P&L {expected} is not positive")
    if int(review["quantity"]) > 10:
        return PolicyDecision("resize", quantity=10)
    return PolicyDecision("approve")


@dataclass
class DayResult:
    session: date
    run_ids: list[str]
    staged: int
    filled: int
    exits_staged: int
    settled: int
    net_liquidation: Decimal | None
    modelled_chains: bool = False  # the day's runs decided on a modelled (not recorded) chain


@dataclass
class BacktestResult:
    backtest_id: str
    database: str
    database_url: str
    account_id: str
    spec: BacktestSpec
    days: list[DayResult]
    modelled_chain_days: list[str]
    reused: bool = False
    continued_after: date | None = None  # the last day an earlier, unfinished attempt had recorded

    def to_dict(self) -> dict[str, Any]:
        from service.operations import jsonable

        return jsonable({"backtest_id": self.backtest_id, "database": self.database, "account_id": self.account_id,
                         "params": self.spec.params(), "days": [asdict(d) for d in self.days],
                         "modelled_chain_days": self.modelled_chain_days, "reused": self.reused,
                         "continued_after": self.continued_after})


async def _decide_all(ctx, order_ids: list[str], approve: str) -> set[str]:
    """The approval policy's decision on each order, transmitted as approved. Returns the runs of
    the orders it decided: the caller finishes them (`approvals.finish_run`)."""
    from service import approvals

    runs: set[str] = set()

    def policy(review: dict[str, Any]) -> approvals.Decision:
        runs.add(review["run_id"])
        choice = policy_decision(review, approve)
        return approvals.Decision(action=choice.action, approver=APPROVER, quantity=choice.quantity,
                                  reason=choice.reason, acknowledge=True)

    for order_id in order_ids:
        try:
            await approvals.decide_by_policy(ctx, order_id, policy)
        except approvals.ApprovalError as exc:  # as for a human: the order stays staged and expires
            log.warning("backtest: order %s could not be decided: %s", order_id, exc)
    return runs


async def _settle(task: asyncio.Task | None) -> None:
    """Wait for the driver's side task (the next run's head start, which reports nothing: that run
    asks the market itself)."""
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)


async def _finish(ctx, run_ids: set[str]) -> None:
    from service import approvals

    for run_id in sorted(run_ids):
        await approvals.finish_run(ctx, run_id)


async def _prefetch_analyses(market, tickers: tuple[str, ...], at: datetime) -> None:
    """Start the chain analyses of the run at `at` (`agents.chain_analyses`: keyed by the chain's
    content, so only the identical chain can take one). The market serves `at` exactly as it will
    to that run; nothing reaches the runs before it."""
    from agents.chain_analyses import prefetch
    from storage.snapshots import encode_snapshot

    try:
        # Asked for as the run will ask: at its as_of, which comes back from Postgres in UTC. A
        # market that keeps one snapshot object per (tickers, instant, zone), the simulated one,
        # serves the run this very object, encoded already (`storage.snapshots`).
        snapshot = await asyncio.to_thread(market.snapshot, list(tickers), at.astimezone(timezone.utc))
        prefetch(data.chain for data in snapshot.tickers.values() if data.chain is not None)
        await asyncio.to_thread(encode_snapshot, snapshot)
    except Exception as exc:  # only a head start: that run asks the market itself and reports any error
        log.debug("backtest: no head start on the chains at %s: %s", at.isoformat(), exc)


async def run_backtest(main_db, spec: BacktestSpec, *, on_day: Callable[[DayResult, int, int], None] | None = None,
                       market=None, reuse: bool = True) -> BacktestResult:
    """Run a backtest; see the module docstring. The same backtest already completed is reused (its
    recorded days are reported); one that did not finish (killed, or a day failed) continues after
    its last recorded day.

    `market`: the historical market to drive (default: `HistoricalMarket(spec.data_dir, spec.chains_dir)`);
    `reuse=False` starts afresh even when it already completed or can continue (benchmarks)."""
    from storage.backtests import BacktestRepository, database_exists, database_url, recreate_database
    from service import notify
    from storage.database import LockBusy
    from tools.market_hours import sessions_between  # the calendar loads in ~0.3 s: not for `backtest list`
    from tools.providers.history import HistoricalMarket

    sessions = sessions_between(spec.start, spec.end)
    if not sessions:
        raise BacktestError(f"no NYSE session between {spec.start} and {spec.end}")
    market = market or HistoricalMarket(spec.data_dir, spec.chains_dir)
    config = spec.config()
    # A market without files (the simulated one, for benchmarks) is identified by its name and seed.
    fingerprint = market.fingerprint() if hasattr(market, "fingerprint") else f"{market.name}:{getattr(market, 'seed', '')}"
    backtest_id = spec.backtest_id(fingerprint)
    database, account_id = f"hedgegraph_{backtest_id}", f"backtest-{backtest_id}"
    url = database_url(main_db.url, database)
    repo = BacktestRepository(main_db.pool)
    try:
        # One process per backtest: the lock dies with its holder, so a killed run frees it.
        async with main_db.advisory_lock(f"backtest:{backtest_id}"):
            previous = await repo.get(backtest_id)
            recorded = [_recorded_day(d) for d in await repo.days(backtest_id)] if previous is not None else []
            if reuse and previous is not None and previous.status == "completed":
                return BacktestResult(backtest_id, database, url, account_id, spec, recorded,
                                      [d.session.isoformat() for d in recorded if d.modelled_chains], reused=True)
            if reuse and previous is not None and recorded and await database_exists(main_db.pool, database):
                # A backtest whose process died (or whose day failed) goes on after its last
                # recorded day, in the same database and account: no day runs twice. A day cut
                # short is run again from its start: runs, decisions and housekeeping are
                # idempotent at the same instants (the same run ids resume or report).
                await repo.resume(backtest_id)
            else:
                recorded = []
                await recreate_database(main_db.pool, database)
                await repo.start(backtest_id, spec.params(), database, account_id)
            with notify.silenced():  # the runs, fills and exits of a backtest are announced to nobody
                return await _drive(main_db, spec, market, config, sessions, backtest_id, database, url,
                                    account_id, recorded, on_day)
    except LockBusy as exc:
        raise BacktestError(f"backtest {backtest_id} is running in another process") from exc


def _recorded_day(row: dict[str, Any]) -> DayResult:
    return DayResult(row["session"], list(row["run_ids"]), row["orders_staged"], row["orders_filled"],
                     row["exits_staged"], row["settled"], row["net_liquidation"], row["modelled_chains"])


async def _drive(main_db, spec: BacktestSpec, market, config: DecisionConfig, sessions, backtest_id: str,
                 database: str, url: str, account_id: str, recorded: list[DayResult],
                 on_day: Callable[[DayResult, int, int], None] | None) -> BacktestResult:
    """Run the sessions after the `recorded` ones (see the module docstring)."""
    from memory.store import MemoryStore
    from service import approvals
    from service.housekeeping import housekeeping
    from service.operations import run_decision
    from storage.backtests import BacktestRepository, filled_orders, run_order_count, staged_order_ids
    from storage.database import connect

    repo = BacktestRepository(main_db.pool)
    db = await connect(url, max_size=6)
    clock = SimulatedClock(sessions[0][1])

    def provider_factory(name: str, seed: int):
        if name != market.name:
            raise approvals.ApprovalError(f"a backtest quotes only its {market.name!r} market, not {name!r}")
        return market

    ctx = approvals.ServiceContext(db=db, clock=clock, provider_factory=provider_factory,
                                   memory=MemoryStore(db.pool), account_id=account_id, market=market.name)
    broker = ctx.broker_for(market)
    days: list[DayResult] = list(recorded)
    last = recorded[-1].session if recorded else None
    slot_times = [slot_time(day, slot, opens, closes) for day, opens, closes in sessions for slot in spec.slots]
    upcoming = iter(slot_times[1:])
    prefetching: asyncio.Task | None = None
    try:
        for n, (day, opens, closes) in enumerate(sessions, 1):
            if last is not None and day <= last:
                continue
            run_ids, staged, modelled = [], 0, False
            for slot in spec.slots:
                clock.at = slot_time(day, slot, opens, closes)
                await approvals.recover_pending(ctx)  # exits approved at the last close go out now
                outcome = await run_decision(db, market, watchlist=WATCHLIST, tickers=list(spec.tickers),
                                             as_of=clock.at, seed=spec.seed, config=config, now=clock,
                                             broker=broker)
                # The next run's chains are analysed in the worker pool while this one's orders are
                # decided and the close is kept, on the event loop.
                following = next((t for t in upcoming if t > clock.at), None)
                if prefetching is not None:
                    await prefetching  # long done by now; the loop keeps only a weak reference to a task
                prefetching = None if following is None else asyncio.create_task(
                    _prefetch_analyses(market, spec.tickers, following))
                run_ids.append(outcome.run.run_id)
                context = outcome.state.get("context")
                if context is not None and any("modelled" in line for lines in context.data_quality.values()
                                               for line in lines):
                    modelled = True
                staged += await run_order_count(db.pool, outcome.run.run_id)
                decided = await _decide_all(ctx, await staged_order_ids(db.pool, outcome.run.run_id), spec.approve)
                # The run finishes (its graph's execution report and reflection) at the instant its
                # last order was decided, before the close: run beside the close's housekeeping, it
                # overlapped nothing, as housekeeping's first step (`approvals.expire_due`) resumes
                # every run awaiting approval and so waited on the run's lock, or finished the run
                # itself at the close while this finish waited to find it done.
                await _finish(ctx, decided)
            clock.at = closes
            report = await housekeeping(ctx, mark=True)
            exit_ids = [e["order_id"] for e in report.exits_staged if e["order_id"] and e["created"]]
            await _finish(ctx, await _decide_all(ctx, exit_ids, spec.approve))
            nlv = Decimal(report.net_liquidation) if report.net_liquidation is not None else None
            result = DayResult(day, run_ids, staged, await filled_orders(db.pool, run_ids), len(exit_ids),
                               len(report.settled), nlv, modelled)
            days.append(result)
            await repo.record_day(backtest_id, day, run_ids, staged, result.filled, nlv, exits_staged=len(exit_ids),
                                  settled=len(report.settled), modelled_chains=modelled)
            if on_day is not None:
                on_day(result, n, len(sessions))
    except Exception as exc:
        await repo.finish(backtest_id, "failed", error=f"{type(exc).__name__}: {exc}"[:4000])
        await db.close()
        raise
    finally:
        await _settle(prefetching)  # nothing left working on the pool that closes next
    await db.close()
    return BacktestResult(backtest_id, database, url, account_id, spec, days,
                          [d.session.isoformat() for d in days if d.modelled_chains], continued_after=last)


async def finish_backtest(main_db, result: BacktestResult, results_root: Path) -> dict[str, Any]:
    """Metrics, baselines and the report files of a finished backtest; recorded in the index."""
    from service.backtest_report import build_report, write_report
    from storage.backtests import BacktestRepository
    from storage.database import connect

    repo = BacktestRepository(main_db.pool)
    db = await connect(result.database_url, max_size=4)
    try:
        report = await build_report(db, result)
    finally:
        await db.close()
    folder = write_report(report, results_root / result.backtest_id)
    report["results_dir"] = str(folder)
    await repo.finish(result.backtest_id, "completed", summary=report["summary"], results_dir=str(folder))
    return report
