"""Backtests end to end on the real shared history: the CLI, the book and approvals under a
historical clock, and no look-ahead."""
from __future__ import annotations

import json
import shutil
from datetime import date, datetime
from pathlib import Path

import pytest

from service.backtest import BacktestSpec, run_backtest
from service.backtest_attribution import QuotesAt, valuations
from service.backtest_report import build_report
from storage.backtests import BacktestRepository, book_history
from service.cli import app
from storage.database import connect
from tests.conftest import SHARED_DATA
from tests.test_notify import channels, smtp  # noqa: F401 (fixtures: a local webhook receiver and SMTP server)
from tools.chain import NEW_YORK
from tools.providers.base import LookAheadError
from tools.providers.history import HistoricalMarket

HISTORY = SHARED_DATA / "history"


def test_backtest_command_runs_january_2022_and_every_day_stays_inspectable(cli_env, tmp_path, pg_server, monkeypatch):
    out = cli_env.invoke(app, ["backtest", "--from", "2022-01-03", "--to", "2022-01-31", "--tickers", "SPY",
                               "--results", str(tmp_path / "results"), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    try:
        assert report["days"] == 20  # NYSE sessions in January 2022
        assert len(report["modelled_chain_days"]) == 20  # no recorded SPY chain in January 2022
        for key in ("cagr", "annual_volatility", "sharpe", "sortino", "calmar", "max_drawdown", "var_95", "cvar_95",
                    "win_rate", "profit_factor", "turnover"):
            assert key in report["metrics"]
        spy = report["baselines"]["spy_buy_and_hold"]
        assert spy["total_return"] == pytest.approx(-0.0527, abs=0.01)  # SPY fell ~5% in January 2022
        assert report["baselines"]["iron_condor_16d_45dte"]["trades"] >= 1
        html = (tmp_path / "results" / report["backtest_id"] / "report.html").read_text()
        assert html.count("<svg") == 4 and "<script" not in html and "http" not in html.replace("http://www.w3.org", "")
        saved = json.loads((tmp_path / "results" / report["backtest_id"] / "report.json").read_text())
        assert saved["metrics"] == report["metrics"]

        listed = json.loads(cli_env.invoke(app, ["backtest", "list", "--json"]).stdout)
        assert [b["backtest_id"] for b in listed] == [report["backtest_id"]] and listed[0]["status"] == "completed"
        shown = json.loads(cli_env.invoke(app, ["backtest", "show", report["backtest_id"], "--json"]).stdout)
        assert len(shown["days"]) == 20
        run_id = shown["days"][5]["run_ids"][0]
        # The day's run is a normal run in the backtest's own database: runs show and replay open it.
        monkeypatch.setenv("DATABASE_URL", shown["database_url"])
        run = json.loads(cli_env.invoke(app, ["runs", "show", run_id, "--json"]).stdout)
        assert run["run"]["provider"] == "history" and run["run"]["as_of"].startswith("2022-01-10T20:30")  # 15:30 New York, in UTC
        replay = cli_env.invoke(app, ["replay", run_id, "--json"])
        assert replay.exit_code == 0, replay.output
    finally:
        pg_server.psql(f"DROP DATABASE IF EXISTS {report['database']} WITH (FORCE);")


def test_bad_backtest_input_is_one_line(cli_env):
    out = cli_env.invoke(app, ["backtest", "--from", "2022-02-01", "--to", "2022-01-01"])
    assert out.exit_code != 0 and "before" in out.output and "Traceback" not in out.output
    out = cli_env.invoke(app, ["backtest", "--from", "2022-01-03", "--to", "2022-01-04", "--set", "nope=1"])
    assert out.exit_code != 0 and "unknown decision setting" in out.output
    out = cli_env.invoke(app, ["backtest", "--from", "2022-01-01", "--to", "2022-01-02"])
    assert out.exit_code != 0 and "no NYSE session" in out.output


async def test_trades_fill_through_approvals_and_the_kelly_journal_reads_only_the_backtest_account(
        db, pg_server, channels, monkeypatch):
    from service import housekeeping as housekeeping_module, notify

    # Each day's runs have finished (their orders all decided at the slot) when the close's
    # housekeeping starts: none is left for it to resume at the close.
    awaiting_at_close, keep = [], housekeeping_module.housekeeping

    async def housekeeping(ctx, *, mark):
        awaiting_at_close.append(await ctx.db.pool.fetchval("SELECT count(*) FROM runs WHERE status = 'awaiting_approval'"))
        return await keep(ctx, mark=mark)

    monkeypatch.setattr(housekeeping_module, "housekeeping", housekeeping)
    spec = BacktestSpec(date(2022, 1, 3), date(2022, 1, 14), ("SPY",), str(HISTORY),
                        overrides={"min_agreeing_sources": 1, "conviction_threshold": 0.2})
    result = await run_backtest(db, spec)
    try:
        assert sum(d.filled for d in result.days) >= 1
        assert awaiting_at_close == [0] * len(result.days)
        bt = await connect(result.database_url, max_size=2)
        try:
            # The desk's webhook and email are configured, yet the backtest's staged orders, fills
            # and exits were announced to nobody (and nothing was recorded as sent).
            await notify.drain()
            httpserver, inbox = channels
            assert list(httpserver.log) == [] and inbox.messages == []
            assert await bt.pool.fetchval("SELECT count(*) FROM notifications") == 0
            fills = await bt.pool.fetch("SELECT DISTINCT account_id FROM broker_fills")
            assert [r["account_id"] for r in fills] == [result.account_id]
            approvers = {r["approver"] for r in await bt.pool.fetch("SELECT approver FROM approvals")}
            assert approvers == {"backtest-policy"}
            assert await db.pool.fetchval("SELECT count(*) FROM orders") == 0  # the main database saw no order
            # Every run's Kelly journal held exactly the positions closed by its as-of time, in this account.
            closed = await bt.pool.fetch("SELECT closed_at FROM strategy_positions WHERE status <> 'open'")
            from graph.graph import compiled_graph
            app_ = compiled_graph(bt.checkpointer)
            for day in result.days:
                state = (await app_.aget_state({"configurable": {"thread_id": day.run_ids[0]}})).values
                as_of = state["run"].as_of
                outcomes = state["context"].closed_outcomes
                assert all(o.closed_at <= as_of for o in outcomes)
                assert len(outcomes) == sum(1 for r in closed if r["closed_at"] <= as_of)

            report = await build_report(bt, result)
            await _check_agreement_and_attribution(bt, result, report)
        finally:
            await bt.close()
    finally:
        pg_server.psql(f"DROP DATABASE IF EXISTS {result.database} WITH (FORCE);")


async def _check_agreement_and_attribution(bt, result, report) -> None:
    """P&L by agreement adds up to the closed positions' P&L, each count read from the opening run's
    signals and verdict; the attribution's columns add up each day and in total to the book's P&L."""
    closed = await bt.pool.fetch("SELECT realized_pnl FROM strategy_positions WHERE status <> 'open'")
    assert closed, "the window must close a position"
    groups = report["pnl_by_agreement"]
    assert sum(g["trades"] for g in groups.values()) == len(closed)
    assert sum(g["realized_pnl"] for g in groups.values()) == pytest.approx(sum(float(r["realized_pnl"]) for r in closed))
    assert "unknown" not in groups and all(0 <= int(k) <= 4 for k in groups)
    assert report["not_measured"] == []

    attribution = report["greeks_attribution"]
    parts = ("delta", "gamma", "theta", "vega", "commissions", "residual")
    for row in attribution["by_day"] + [attribution["total"]]:
        assert sum(row[k] for k in parts) == pytest.approx(row["actual"], abs=1e-6)
    # The book's P&L: realized on every position plus the open ones' last unrealized mark.
    book = await bt.pool.fetchval(
        """SELECT sum(p.realized_pnl) + coalesce(sum((SELECT m.unrealized_pnl FROM position_marks m
                  WHERE m.position_id = p.position_id ORDER BY m.marked_at DESC LIMIT 1)) FILTER (WHERE p.status = 'open'), 0)
           FROM strategy_positions p""")
    assert attribution["total"]["actual"] == pytest.approx(float(book), abs=1e-6)
    # The legs' vegas the vega term uses are the stored position vega split by leg.
    positions, fills, marks = await book_history(bt.pool, result.account_id)
    quotes_at = QuotesAt(HistoricalMarket(HISTORY))
    for p in positions:
        points = valuations(p, [f for f in fills if f["position_id"] == p["position_id"]],
                            [m for m in marks if m["position_id"] == p["position_id"]], quotes_at)
        assert points[0].pnl == 0.0 and points[0].delta is not None  # the opening fill, Greeks from its quotes
        for point in points[1:-1] if p["status"] != "open" else points[1:]:
            assert sum(point.leg_vegas) == pytest.approx(point.vega, rel=1e-9)
    # The Greeks explain most of a day's move: the residual is smaller than what they explain in total.
    explained = sum(abs(attribution["total"][k]) for k in ("delta", "gamma", "theta", "vega"))
    assert explained > 0 and abs(attribution["total"]["residual"]) < explained


def test_a_future_bar_moved_into_the_past_is_caught(tmp_path):
    """A snapshot never reads a bar dated after its session; a bar planted in the past window with a
    future date is refused by the snapshot's own check."""
    for name in ("VIX_History.csv", "VIX3M_History.csv", "VIX9D_History.csv", "SKEW_History.csv", "SPY_daily_ohlcv.csv"):
        shutil.copy(HISTORY / name, tmp_path / name)
    as_of = datetime(2022, 3, 8, 16, 30, tzinfo=NEW_YORK)
    before = HistoricalMarket(tmp_path).snapshot(["SPY"], as_of)
    # Change every bar after the session: the snapshot at as_of must not change at all.
    spy = (tmp_path / "SPY_daily_ohlcv.csv").read_text().splitlines()
    header, rows = spy[0], spy[1:]
    date_col = [c.strip().lower() for c in header.split(",")].index("date")
    changed = []
    for row in rows:
        cells = row.split(",")
        if cells[date_col] > "2022-03-08":
            cells = [cells[i] if i == date_col or not _is_number(c) else str(float(c) * 3) for i, c in enumerate(cells)]
        changed.append(",".join(cells))
    (tmp_path / "SPY_daily_ohlcv.csv").write_text("\n".join([header, *changed]) + "\n")
    after = HistoricalMarket(tmp_path).snapshot(["SPY"], as_of)
    assert after.tickers["SPY"].spot == before.tickers["SPY"].spot
    assert (after.tickers["SPY"].bars.close == before.tickers["SPY"].bars.close).all()
    # A future bar moved into the past window is caught by the snapshot itself.
    bars = before.tickers["SPY"].bars
    planted = bars.dates.copy()
    planted[-1] = planted[-1] + 1  # the last bar now claims to be from the next day
    from dataclasses import replace

    from tools.providers.base import Bars, MarketSnapshot
    late = Bars(planted, bars.open, bars.high, bars.low, bars.close, bars.volume)
    with pytest.raises(LookAheadError):
        MarketSnapshot(as_of=as_of, provider="history",
                       tickers={"SPY": replace(before.tickers["SPY"], bars=late)}, vix=before.vix, vix3m=before.vix3m,
                       benchmark=before.benchmark, rate=before.rate, meta=before.meta)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _sweep_and_check(cli_env, tmp_path, pg_server, extra: list[str]) -> list[dict]:
    out = cli_env.invoke(app, ["backtest", "--from", "2022-01-03", "--to", "2022-01-06", "--tickers", "SPY",
                               "--sweep", "kelly_multiplier=0.25,0.5", "--results", str(tmp_path / "r"), "--json", *extra])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    try:
        assert [r["overrides"] for r in rows] == [{"kelly_multiplier": 0.25}, {"kelly_multiplier": 0.5}]
        assert len({r["backtest_id"] for r in rows}) == 2
        assert len({r["worker_pid"] for r in rows}) == 2  # two workers ran them side by side
        listed = json.loads(cli_env.invoke(app, ["backtest", "list", "--json"]).stdout)
        assert sorted(b["backtest_id"] for b in listed) == sorted(r["backtest_id"] for r in rows)
        assert all(b["status"] == "completed" for b in listed)
        for r in rows:
            assert (Path(r["results_dir"]) / "report.json").exists()
    finally:
        for r in rows:
            pg_server.psql(f"DROP DATABASE IF EXISTS hedgegraph_{r['backtest_id']} WITH (FORCE);")
    return rows


def test_a_sweep_runs_its_backtests_in_parallel_local_processes(cli_env, tmp_path, pg_server):
    _sweep_and_check(cli_env, tmp_path, pg_server, ["--workers", "2"])


def test_a_sweep_runs_as_tasks_on_a_local_ray_cluster_with_two_cpus(cli_env, tmp_path, pg_server, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _sweep_and_check(cli_env, tmp_path, pg_server, ["--ray", "--workers", "2"])


def test_bad_sweeps_are_one_line(cli_env):
    out = cli_env.invoke(app, ["backtest", "--from", "2022-01-03", "--to", "2022-01-04", "--sweep", "kelly_multiplier"])
    assert out.exit_code != 0 and "key=v1,v2" in out.output
    out = cli_env.invoke(app, ["backtest", "--from", "2022-01-03", "--to", "2022-01-04", "--sweep", "kelly_multiplier=2"])
    assert out.exit_code != 0 and "kelly_multiplier" in out.output and "Traceback" not in out.output


def test_chain_model_command_prints_the_modelled_chain_for_a_date(cli_env):
    out = cli_env.invoke(app, ["chain", "--model", "SPY", "--as-of", "2022-03-08", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["modelled"] is True and data["underlying"] == "SPY"
    assert data["chain_note"] == "chain modelled from VIX9D/VIX/VIX3M/SKEW on 2022-03-08"
    out = cli_env.invoke(app, ["chain", "--model", "SPY"])
    assert out.exit_code != 0 and "--as-of" in out.output
    out = cli_env.invoke(app, ["chain"])
    assert out.exit_code != 0 and "either" in out.output


class _Killed(Exception):
    """Stands for the process dying mid-day."""


class _DiesAt(HistoricalMarket):
    """The shared history, but asking it anything at `at` fails: the backtest stops mid-day."""

    def __init__(self, data_dir, at: datetime):
        super().__init__(data_dir)
        self.at = at

    def snapshot(self, tickers, as_of):
        if as_of == self.at:
            raise _Killed(f"killed at {as_of}")
        return super().snapshot(tickers, as_of)


async def test_a_backtest_cut_short_continues_from_its_last_finished_day(db, pg_server):
    spec = BacktestSpec(date(2022, 1, 3), date(2022, 1, 12), ("SPY",), str(HISTORY),
                        overrides={"min_agreeing_sources": 1, "conviction_threshold": 0.2})
    try:
        whole = await run_backtest(db, spec)
        book = await _book_summary(whole)
        # Cut short on Wednesday 5 January after its 15:30 run decided and filled, before the close's
        # housekeeping (its marks, exits and snapshot) ran.
        cut = datetime(2022, 1, 5, 16, 0, tzinfo=NEW_YORK)
        with pytest.raises(_Killed):
            await run_backtest(db, spec, market=_DiesAt(HISTORY, cut), reuse=False)
        record = await BacktestRepository(db.pool).get(whole.backtest_id)
        assert record.status == "failed" and "killed" in record.error
        assert [d["session"] for d in await BacktestRepository(db.pool).days(whole.backtest_id)] == \
            [date(2022, 1, 3), date(2022, 1, 4)]

        ran = []
        resumed = await run_backtest(db, spec, on_day=lambda day, n, total: ran.append((day.session, n, total)))
        assert not resumed.reused and resumed.continued_after == date(2022, 1, 4)
        assert [s for s, _, _ in ran] == [d.session for d in whole.days][2:]  # from the cut day on, nothing before
        assert [n for _, n, _ in ran] == list(range(3, len(whole.days) + 1))
        assert [(d.session, d.run_ids, d.staged, d.filled, d.net_liquidation) for d in resumed.days] == \
            [(d.session, d.run_ids, d.staged, d.filled, d.net_liquidation) for d in whole.days]
        assert await _book_summary(resumed) == book  # same runs, fills and positions: no day ran twice
        assert (await BacktestRepository(db.pool).get(whole.backtest_id)).status == "running"  # until reported
        again = await run_backtest(db, spec)  # still not marked completed: nothing left to run
        assert [d.session for d in again.days] == [d.session for d in whole.days]
    finally:
        pg_server.psql(f"DROP DATABASE IF EXISTS hedgegraph_{spec.backtest_id(HistoricalMarket(HISTORY).fingerprint())} WITH (FORCE);")


async def _book_summary(result) -> dict:
    bt = await connect(result.database_url, max_size=2)
    try:
        return {
            "runs": await bt.pool.fetchval("SELECT count(*) FROM runs WHERE watchlist = 'backtest'"),
            "fills": [tuple(r) for r in await bt.pool.fetch(
                "SELECT order_id, price, quantity FROM broker_fills ORDER BY order_id")],
            "positions": [tuple(r) for r in await bt.pool.fetch(
                "SELECT position_id, status, realized_pnl, closed_at FROM strategy_positions ORDER BY position_id")],
            "snapshots": [tuple(r) for r in await bt.pool.fetch(
                "SELECT captured_at, net_liquidation FROM account_snapshots ORDER BY captured_at")],
        }
    finally:
        await bt.close()


async def test_memory_recall_in_a_backtest_knows_a_closed_trade_only_from_its_close_on(db, pg_server):
    """The situation behind a trade learns its realized P&L when the position closes; a decision run
    before that instant cannot recall it (nor did any debate cite it), a run after it can."""
    from memory.store import MemoryStore

    spec = BacktestSpec(date(2022, 1, 3), date(2022, 1, 10), ("SPY",), str(HISTORY),
                        overrides={"min_agreeing_sources": 1, "conviction_threshold": 0.2})
    result = await run_backtest(db, spec)
    try:
        bt = await connect(result.database_url, max_size=2)
        try:
            closed = await bt.pool.fetch("SELECT run_id, ticker, realized_pnl, closed_at FROM strategy_positions "
                                         "WHERE status <> 'open' ORDER BY closed_at")
            assert closed, "the window must close a position"
            position = closed[0]
            memory = await bt.pool.fetchrow(
                "SELECT id, embedding, outcome, outcome_known_at FROM memories WHERE run_id = $1 AND ticker = $2 "
                "AND trade IS NOT NULL", position["run_id"], position["ticker"])
            assert memory["outcome"]["realized"] is True
            assert memory["outcome"]["pnl"] == float(position["realized_pnl"])
            assert memory["outcome_known_at"] == position["closed_at"]

            runs = await bt.pool.fetch("SELECT run_id, as_of FROM runs WHERE watchlist = 'backtest' ORDER BY as_of")
            before = [r for r in runs if r["as_of"] < position["closed_at"]]
            after = [r for r in runs if r["as_of"] >= position["closed_at"]]
            assert before and after
            store = MemoryStore(bt.pool)
            for run in runs:  # what each day's run could recall, searched with the situation itself
                found = await store.similar(memory["embedding"].to_numpy(), as_of=run["as_of"], k=50)
                assert all(m.outcome_known_at <= run["as_of"] for m in found)
                assert (memory["id"] in {m.id for m in found}) == (run in after), run["as_of"]
            cited = f"P&L {float(position['realized_pnl']):+}"
            debates = await bt.pool.fetch("SELECT d.memories_used, r.as_of FROM debates d JOIN runs r USING (run_id)")
            assert debates
            for debate in debates:
                if debate["as_of"] < position["closed_at"]:
                    assert not any(cited in used for used in debate["memories_used"])
        finally:
            await bt.close()
    finally:
        pg_server.psql(f"DROP DATABASE IF EXISTS {result.database} WITH (FORCE);")


async def test_a_results_changing_fix_runs_the_same_command_afresh(db, pg_server, monkeypatch):
    """`RESULTS_VERSION` is part of a backtest's id: after a fix that changes what a backtest
    computes, the same command runs every day again instead of reporting the old code's days."""
    import service.backtest as backtest

    spec = BacktestSpec(date(2022, 1, 3), date(2022, 1, 4), ("SPY",), str(HISTORY),
                        overrides={"min_agreeing_sources": 1})
    fingerprint = HistoricalMarket(HISTORY).fingerprint()
    ids = [spec.backtest_id(fingerprint)]
    try:
        first = await run_backtest(db, spec)
        ran: list = []
        await run_backtest(db, spec, on_day=lambda day, n, total: ran.append(day.session))
        assert ran == []  # the same code: its recorded days stand
        monkeypatch.setattr(backtest, "RESULTS_VERSION", backtest.RESULTS_VERSION + 1)
        ids.append(spec.backtest_id(fingerprint))
        again = await run_backtest(db, spec, on_day=lambda day, n, total: ran.append(day.session))
        assert again.backtest_id == ids[1] != first.backtest_id
        assert ran == [date(2022, 1, 3), date(2022, 1, 4)] and not again.reused
    finally:
        for backtest_id in ids:
            pg_server.psql(f"DROP DATABASE IF EXISTS hedgegraph_{backtest_id} WITH (FORCE);")
