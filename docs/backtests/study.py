"""The 2011-2019 / 2020-2025 study behind the README's "What the backtest revealed" (issue 9).

    python docs/backtests/study.py ivrv  --from 2011-01-03 --to 2019-12-31
    python docs/backtests/study.py grid  --from 2011-01-03 --to 2019-12-31
    python docs/backtests/study.py grid  --from 2020-01-02 --to 2025-12-31 --rules 0.10/35/0.05 0.25/35/0.01
    python docs/backtests/study.py figures BEFORE_ID AFTER_ID --name 2011-2019

* `ivrv`: is "rich" (30-day ATM IV over 20-day realized at or above `rich_iv_rv`) or "cheap" right
  about what happened next? Per bucket of the ratio, how often the IV exceeded the realized vol of
  the next 21 sessions. The IV is SPY's 30-day ATM vol as the historical market serves it (that
  day's VIX through that day's SKEW smile), the same number the vol analyst's IV rank reads.
* `grid`: the mechanical condor (`service.backtest_baselines`, the same chain model, fills,
  costs and sizing as every report's baseline) over short delta x target DTE x wing width.
* `figures`: equity before/after against both baselines, from two backtests' report.json, as SVG.
Reads the shared history files in place; prints tables; `figures` writes into docs/backtests/.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

FUTURE_SESSIONS = 21
BUCKETS = [0, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4, 1.7, 10]


def ivrv(start: date, end: date) -> pd.DataFrame:
    from tools.market_hours import sessions_between
    from tools.providers.history import HistoricalMarket
    from tools.volstats import close_to_close_vol

    sessions = sessions_between(start, end)
    # One snapshot at the end whose window reaches back to the start (+ 20 sessions for RV20);
    # each day's IV in it is that day's VIX through that day's SKEW, so nothing is looked ahead.
    market = HistoricalMarket(history_sessions=len(sessions) + 40)
    spy = market.snapshot(["SPY"], sessions[-1][2]).tickers["SPY"]
    days = pd.to_datetime(spy.bars.dates)
    close = pd.Series(spy.bars.close, index=days)
    iv = pd.Series(spy.atm_iv_history, index=days)
    rv20 = pd.Series(close_to_close_vol(spy.bars.close, window=20), index=days)
    returns = np.log(close).diff()
    future = returns[::-1].rolling(FUTURE_SESSIONS).std()[::-1].shift(-1) * np.sqrt(252)
    frame = pd.DataFrame({"iv": iv, "ratio": iv / rv20, "future_rv": future}).dropna()
    frame = frame[(frame.index >= pd.Timestamp(start)) & (frame.index <= pd.Timestamp(end))]
    frame["bucket"] = pd.cut(frame.ratio, BUCKETS)
    return frame.groupby("bucket", observed=True).apply(lambda g: pd.Series({
        "sessions": len(g), "iv_above_future_rv": (g.iv > g.future_rv).mean(),
        "median_iv_over_future_rv": (g.iv / g.future_rv).median()}))


def grid(start: date, end: date, rules: list[tuple[float, int, float]]) -> list[dict]:
    import empyrical

    from tools.market_hours import sessions_between
    from service.backtest_baselines import CondorRule, condor_chains, mechanical_condor
    from tools.providers.history import HistoricalMarket

    chains = condor_chains(HistoricalMarket(), "SPY", sessions_between(start, end))
    rows = []
    for short_delta, dte, wing in rules:
        equity, trades = mechanical_condor(chains, 100_000.0, CondorRule(short_delta, dte, wing))
        returns = equity.pct_change().dropna()
        pnl = np.array([t["realized_pnl"] for t in trades])
        rows.append({"short_delta": short_delta, "target_dte": dte, "wing_of_spot": wing,
                     "total_return": round(float(equity.iloc[-1] / 100_000.0 - 1), 4),
                     "sharpe": round(float(empyrical.sharpe_ratio(returns)), 2),
                     "max_drawdown": round(float(empyrical.max_drawdown(returns)), 4),
                     "trades": len(trades), "win_rate": round(float((pnl > 0).mean()), 2) if len(pnl) else None})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def figures(before: str, after: str, name: str) -> list[Path]:
    from service.backtest_metrics import drawdown
    from service.backtest_report import line_chart_svg

    home = Path(os.environ.get("HEDGEGRAPH_HOME", Path.home() / ".hedgegraph"))
    reports = [json.loads((home / "backtests" / b / "report.json").read_text()) for b in (before, after)]
    series = [pd.Series(r["equity"], dtype=float) for r in reports]
    spy = pd.Series(reports[0]["equity_spy"], dtype=float)
    condor = pd.Series(reports[0]["equity_condor"], dtype=float)
    colors = ["#888888", "#1f77b4", "#2ca02c", "#d62728"]
    labels = ["graph, before", "graph, after", "SPY buy-and-hold", "16Δ 45-DTE condor"]
    out = Path(__file__).parent
    paths = [out / f"equity-{name}.svg", out / f"drawdown-{name}.svg"]
    paths[0].write_text(line_chart_svg([*series, spy, condor], colors, labels, f"SPY {name}: equity (NLV, $)"))
    paths[1].write_text(line_chart_svg([drawdown(s) for s in (*series, spy, condor)], colors, labels,
                                  f"SPY {name}: drawdown", percent=True))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("ivrv", "grid", "figures"))
    parser.add_argument("ids", nargs="*")
    parser.add_argument("--from", dest="start", type=date.fromisoformat, default=date(2011, 1, 3))
    parser.add_argument("--to", dest="end", type=date.fromisoformat, default=date(2019, 12, 31))
    parser.add_argument("--rules", nargs="*", help="short_delta/target_dte/wing_of_spot, e.g. 0.10/35/0.05")
    parser.add_argument("--name", default="study")
    args = parser.parse_args()
    if args.what == "ivrv":
        print(ivrv(args.start, args.end).to_string(float_format=lambda v: f"{v:.2f}"))
    elif args.what == "grid":
        rules = ([tuple(float(x) if i != 1 else int(x) for i, x in enumerate(r.split("/"))) for r in args.rules]
                 if args.rules else list(itertools.product((0.08, 0.10, 0.16, 0.25), (35, 45), (0.01, 0.025, 0.05))))
        grid(args.start, args.end, rules)
    else:
        for path in figures(*args.ids, args.name):
            print(path)


if __name__ == "__main__":
    main()
