"""The numbers behind an order's three plots, from the order and its run's recorded market:

- payoff: P&L of the whole order (all contracts, dollars) against the underlying at expiry, and
  today by Black-Scholes-Merton on each leg at its recorded implied vol;
- smile: the market implied vols of the legs' expiry, the SVI fit through them and the chosen
  strikes — recomputed from the run's recorded snapshot (`storage.runs.load_snapshot`) with the
  same chain analysis the analysts ran, so it is what the run saw, never a later market;
- GEX: dealer gamma exposure per strike with spot and the zero-gamma level.

Analyses are cached per (run, ticker): a snapshot never changes once recorded.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np

from service.svg import Chart, Marker, Series
from storage.database import Database
from storage.runs import RunRepository
from tools import flow
from tools.chain import NEW_YORK, SECONDS_PER_YEAR, seconds_to_expiry
from tools.chain_analysis import ChainAnalysis, analyze_chain
from tools.pricing import bsm_price

PAYOFF_POINTS = 161
_CACHE_SIZE = 16
_analyses: OrderedDict[tuple[str, str], tuple[Any, ChainAnalysis | None]] = OrderedDict()
_lock = asyncio.Lock()


def _legs(order: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"strike": float(leg["strike"]), "is_call": leg["right"] == "C", "sign": 1 if leg["side"] == "buy" else -1,
             "ratio": int(leg.get("ratio") or 1), "iv": leg.get("iv"), "expiry": date.fromisoformat(str(leg["expiry"]))}
            for leg in order["legs"]]


def payoff_chart(order: dict[str, Any], as_of: datetime, rate: float = 0.0) -> Chart:
    """The order's P&L in dollars (all contracts) at expiry and today, against the underlying."""
    legs = _legs(order)
    spot = float(order.get("underlying_price") or np.mean([leg["strike"] for leg in legs]))
    strikes = [leg["strike"] for leg in legs]
    lo, hi = min(strikes + [spot]), max(strikes + [spot])
    span = max(hi - lo, spot * 0.04)
    grid = np.linspace(lo - 0.6 * span, hi + 0.6 * span, PAYOFF_POINTS)
    scale = 100.0 * int(order["quantity"])  # multiplier × contracts
    premium = float(Decimal(str(order["limit_price"])))
    at_expiry = np.zeros_like(grid)
    today = np.zeros_like(grid)
    for leg in legs:
        intrinsic = np.maximum(grid - leg["strike"], 0) if leg["is_call"] else np.maximum(leg["strike"] - grid, 0)
        at_expiry += leg["sign"] * leg["ratio"] * intrinsic
        t = max(seconds_to_expiry(leg["expiry"], as_of) / SECONDS_PER_YEAR, 0.0)
        vol = float(leg["iv"]) if leg["iv"] else 0.3
        today += leg["sign"] * leg["ratio"] * bsm_price(grid, leg["strike"], t, rate, 0.0, vol, leg["is_call"])
    markers = [Marker(spot, f"spot {spot:,.2f}", "m-spot")]
    markers += [Marker(k, f"K {k:g}", "m-strike") for k in sorted(set(strikes))]
    for b in order.get("breakevens") or []:
        markers.append(Marker(float(b), f"BE {float(b):,.2f}", "m-be"))
    return Chart(
        title=f"{order['ticker']} {order['structure']}: P&L at expiry and today ({order['quantity']} contracts)",
        x_label=f"{order['ticker']} price", y_label="P&L, dollars", zero_line=True,
        series=[Series("at expiry", grid, (at_expiry - premium) * scale, "line", "s1"),
                Series("today (BSM)", grid, (today - premium) * scale, "line", "s2")],
        markers=markers)


async def chain_analysis(db: Database, run_id: str, ticker: str) -> tuple[Any, ChainAnalysis | None]:
    """(snapshot ticker data, analysis of its chain) for a run's recorded market; (None, None) when
    the run recorded no snapshot or no chain for the ticker."""
    key = (run_id, ticker)
    async with _lock:
        if key in _analyses:
            _analyses.move_to_end(key)
            return _analyses[key]
        loaded = await RunRepository(db.pool).load_snapshot(run_id)
        data = loaded[0].tickers.get(ticker) if loaded else None
        analysis = None
        if data is not None and data.chain is not None:
            analysis = await asyncio.to_thread(analyze_chain, data.chain)
        _analyses[key] = (data, analysis)
        while len(_analyses) > _CACHE_SIZE:
            _analyses.popitem(last=False)
        return data, analysis


def smile_chart(order: dict[str, Any], data: Any, analysis: ChainAnalysis | None) -> Chart:
    """Market implied vols and the SVI fit of the legs' (first) expiry, the chosen strikes marked."""
    legs = _legs(order)
    title = f"{order['ticker']} smile and SVI fit"
    if analysis is None or data is None or data.chain is None:
        return Chart(title, "strike", "implied vol, %", [])
    expiry = np.datetime64(legs[0]["expiry"], "D")
    slices = [s for s in analysis.surface.slices if s.expiry == expiry]
    if not slices:
        return Chart(title + f" (no slice for {legs[0]['expiry']})", "strike", "implied vol, %", [])
    smile = slices[0]
    strikes = np.asarray(data.chain.strike[smile.rows], dtype=float)
    market = analysis.chain_iv.vol[smile.rows] * 100
    order_ = np.argsort(strikes)
    grid = np.linspace(strikes.min(), strikes.max(), 120) if strikes.size else np.empty(0)
    series = [Series("market IV", strikes[order_], market[order_], "points", "s2")]
    if smile.fitted:
        series.append(Series(f"SVI fit (rmse {smile.rmse_vol_points:.2f} pts)", grid, smile.implied_vol(grid) * 100,
                             "line", "s1"))
    markers = [Marker(leg["strike"], f"{'+' if leg['sign'] > 0 else '-'}{leg['strike']:g}{'C' if leg['is_call'] else 'P'}",
                      "m-strike") for leg in legs]
    markers.append(Marker(analysis.spot, f"spot {analysis.spot:,.2f}", "m-spot"))
    return Chart(f"{title}, expiry {legs[0]['expiry']}", "strike", "implied vol, %", series, markers,
                 y_format="{:.1f}", x_format="{:,.0f}")


def gex_chart(order: dict[str, Any], data: Any, analysis: ChainAnalysis | None) -> Chart:
    """Dealer gamma exposure per strike (USD per 1% move), with spot and the zero-gamma level."""
    title = f"{order['ticker']} dealer gamma exposure by strike"
    if analysis is None or data is None or data.chain is None:
        return Chart(title, "strike", "GEX, USD per 1% move", [])
    chain, chain_iv = data.chain, analysis.chain_iv
    t = chain.time_to_expiry
    iv = flow.otm_side_iv(chain.strike, chain.is_call, chain.expiry, chain_iv.vol, chain_iv.forward, chain.root)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(t > 0, -np.log(chain_iv.discount) / t, 0.0)
        div_yield = np.where(t > 0, rate - np.log(chain_iv.forward / chain.spot) / t, 0.0)
    gex = flow.gamma_exposure_by_strike(chain.strike, chain.is_call, chain.open_interest, iv, t, chain.spot,
                                        rate=rate, div_yield=div_yield, multiplier=chain.multiplier)
    window = (gex.strikes >= chain.spot * 0.75) & (gex.strikes <= chain.spot * 1.25)
    markers = [Marker(chain.spot, f"spot {chain.spot:,.2f}", "m-spot")]
    zero = analysis.flow.zero_gamma_level if analysis.flow is not None else float("nan")
    if np.isfinite(zero):
        markers.append(Marker(zero, f"zero gamma {zero:,.2f}", "m-zero"))
    markers += [Marker(leg["strike"], f"K {leg['strike']:g}", "m-strike") for leg in _legs(order)]
    reason = analysis.flow.zero_gamma_reason if analysis.flow is not None else analysis.flow_error
    return Chart(title + (f" (zero gamma: {reason})" if reason and not np.isfinite(zero) else ""),
                 "strike", "GEX, USD per 1% move",
                 [Series(f"GEX (total {gex.total / 1e6:,.1f}M)", gex.strikes[window], gex.exposure[window], "bars", "s3")],
                 markers, x_format="{:,.0f}")


async def order_charts(db: Database, order: dict[str, Any]) -> dict[str, Chart]:
    """The three charts of an order review (`service.approvals.order_review`); none for an order
    for shares (the book's exit of delivered shares: no payoff at expiry, smile or strikes)."""
    if any(leg["right"] == "S" for leg in order["legs"]):
        return {}
    run = await RunRepository(db.pool).get(order["run_id"])
    as_of = run.as_of if run is not None else datetime.now(NEW_YORK)
    data, analysis = await chain_analysis(db, order["run_id"], order["ticker"])
    rate = data.chain.rate if data is not None and data.chain is not None else 0.0
    return {"payoff": payoff_chart(order, as_of, rate), "smile": smile_chart(order, data, analysis),
            "gex": gex_chart(order, data, analysis)}


def backtest_charts(report: dict[str, Any]) -> dict[str, Chart]:
    """A backtest report's three plots, from its report.json: equity of the graph against both
    baselines, their drawdowns, and the calibration of the predicted probability of profit."""
    import pandas as pd

    from service.backtest_metrics import drawdown

    curves = {"graph": report.get("equity") or {}, "SPY buy-and-hold": report.get("equity_spy") or {},
              "16Δ 45-DTE iron condor": report.get("equity_condor") or {}}
    sessions = sorted({day for curve in curves.values() for day in curve})
    index = {day: i for i, day in enumerate(sessions)}
    x_label = f"sessions since {sessions[0]}" if sessions else "sessions"
    styles = ("s1", "s2", "s3")

    def series(values: dict[str, float], name: str, css: str) -> Series:
        days = sorted(values)
        return Series(name, [float(index[d]) for d in days], [float(values[d]) for d in days], css=css)

    equity = [series(curve, name, css) for (name, curve), css in zip(curves.items(), styles)]
    drawdowns = []
    for (name, curve), css in zip(curves.items(), styles):
        if curve:
            dd = drawdown(pd.Series({d: float(v) for d, v in sorted(curve.items())}, dtype=float))
            drawdowns.append(series({d: float(v) for d, v in dd.items()}, name, css))
    bins = [r for r in report.get("calibration") or [] if r.get("trades")]
    return {
        "equity": Chart(title="Equity: the graph against both baselines", x_label=x_label, y_label="NLV $",
                        series=equity, x_format="{:,.0f}"),
        "drawdown": Chart(title="Drawdown from the running peak", x_label=x_label, y_label="drawdown",
                          series=drawdowns, x_format="{:,.0f}", y_format="{:.1%}", zero_line=True),
        "calibration": Chart(
            title="Calibration: predicted probability of profit against the realized win rate",
            x_label="mean predicted PoP", y_label="realized win rate", x_format="{:.0%}", y_format="{:.0%}",
            series=[Series("perfect calibration", [0.0, 1.0], [0.0, 1.0], css="ref"),
                    Series("closed trades per bin", [float(r["mean_predicted"]) for r in bins],
                           [float(r["realized"]) for r in bins], kind="points", css="s1")]),
    }
