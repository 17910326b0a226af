"""A finished backtest's report: metrics, baselines, P&L breakdowns, calibration, and the files
(`report.json`, a self-contained `report.html` with inline SVG plots) in its results folder."""
from __future__ import annotations

import html
import json
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.backtest_attribution import COLUMNS as ATTRIBUTION_COLUMNS
from service.backtest_attribution import book_attribution
from service.backtest_baselines import buy_and_hold, condor_chains, mechanical_condor
from service.backtest_metrics import (agreeing_analysts, calibration_table, drawdown, pnl_by, return_metrics,
                                      trade_metrics, turnover)

ASSUMPTIONS = [
    "end of day: daily bars; a 15:30 slot decides on the previous session's close, housekeeping at the "
    "close sees that session's close",
    "option chains: a recorded Cboe quote table when one exists for the ticker and session, otherwise "
    "modelled from VIX9D/VIX/VIX3M/SKEW with a spread model and modelled open interest (the flow analyst abstains)",
    "fills: the paper broker's slippage model (mid + 0.25 of the half-spreads), limit walk as live, "
    "$0.65 per contract per leg",
    "approval policy stands in for the human (all: approve everything; policy: reject PoP < 0.5 or "
    "expected P&L <= 0, resize above 10 contracts); exits are always approved and go out at the next slot",
    "no social data in history: the social analyst abstains and says so",
    "rate 2%, SPY dividend yield 1.5% (no rate or dividend series in the data)",
]


async def build_report(db, result, market=None) -> dict[str, Any]:
    from tools.market_hours import sessions_between
    from storage.backtests import closed_positions, traded_premium
    from tools.providers.history import HistoricalMarket

    spec = result.spec
    market = market or HistoricalMarket(spec.data_dir, spec.chains_dir)
    days = [d for d in result.days if d.net_liquidation is not None]
    equity = pd.Series({d.session: float(d.net_liquidation) for d in days}, dtype=float)
    opening_cash = float(equity.iloc[0]) if len(equity) else 0.0
    sessions = sessions_between(spec.start, spec.end)

    spy = market.files.bars("SPY")
    closes = pd.Series(spy.close, index=[pd.Timestamp(d).date() for d in spy.dates])
    closes = closes[[s[0] for s in sessions if s[0] in closes.index]]
    hold = buy_and_hold(closes, opening_cash or 100_000.0)
    condor_equity, condor_trades = mechanical_condor(condor_chains(market, spec.tickers[0], sessions),
                                                     opening_cash or 100_000.0)

    closed = await closed_positions(db.pool, result.account_id)
    for row in closed:  # how many analysts agreed with the verdict the trade came from (None: no verdict)
        signals = row.pop("signals") or []
        row["agreeing_analysts"] = (agreeing_analysts(signals, row["price_view"], row["vol_view"])
                                    if row["price_view"] is not None else None)
    pnls = [float(r["realized_pnl"]) for r in closed]
    graph_metrics = return_metrics(equity) | trade_metrics(pnls) | {
        "turnover": turnover(float(await traded_premium(db.pool, result.account_id)), equity)}
    report = {
        "backtest_id": result.backtest_id,
        "params": spec.params(),
        "database": result.database,
        "account_id": result.account_id,
        "days": len(result.days),
        "modelled_chain_days": result.modelled_chain_days,
        "metrics": graph_metrics,
        "baselines": {
            "spy_buy_and_hold": return_metrics(hold),
            "iron_condor_16d_45dte": return_metrics(condor_equity) | trade_metrics(
                [t["realized_pnl"] for t in condor_trades]),
        },
        "pnl_by_strategy": pnl_by(closed, "structure"),
        "pnl_by_regime": pnl_by(closed, "regime"),
        "pnl_by_agreement": dict(sorted(pnl_by(closed, "agreeing_analysts").items())),
        "greeks_attribution": await book_attribution(db.pool, result.account_id, market),
        "calibration": calibration_table([r["probability_of_profit"] for r in closed], [p > 0 for p in pnls]),
        "closed_positions": [{k: (str(v) if not isinstance(v, (int, float, str, type(None))) else v)
                              for k, v in r.items()} for r in closed],
        "condor_trades": [{k: (str(v) if isinstance(v, (date, tuple)) else v) for k, v in t.items()}
                          for t in condor_trades],
        "equity": {str(k): v for k, v in equity.items()},
        "equity_spy": {str(k): float(v) for k, v in hold.items()},
        "equity_condor": {str(k): float(v) for k, v in condor_equity.items()},
        "assumptions": ASSUMPTIONS,
        "not_measured": [],
    }
    report["summary"] = {k: report[k] for k in ("metrics", "baselines", "days")} | {
        "modelled_chain_days": len(result.modelled_chain_days)}
    return report


def line_chart_svg(series: list[pd.Series], colors: list[str], labels: list[str], title: str, *,
                   width: int = 720, height: int = 260, percent: bool = False) -> str:
    """One inline SVG line chart of several series sharing an index (no external assets)."""
    pad = 40
    values = (np.concatenate([s.to_numpy(dtype=float) for s in series if len(s)]) if any(len(s) for s in series)
              else np.array([0.0]))
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    hi = hi if hi > lo else lo + 1.0
    n = max(len(s) for s in series) if series else 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<text x="{pad}" y="16" font-size="13">{html.escape(title)}</text>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - 10}" y2="{height - pad}" stroke="#999"/>']
    fmt = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:,.0f}")
    parts.append(f'<text x="2" y="{pad}" font-size="10">{fmt(hi)}</text>')
    parts.append(f'<text x="2" y="{height - pad}" font-size="10">{fmt(lo)}</text>')
    for s, color, label, k in zip(series, colors, labels, range(len(series))):
        if not len(s):
            continue
        xs = pad + np.arange(len(s)) * (width - pad - 10) / max(n - 1, 1)
        ys = (height - pad) - (s.to_numpy(dtype=float) - lo) / (hi - lo) * (height - 2 * pad)
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys) if np.isfinite(y))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>')
        step = min(150, (width - pad) // len(series))
        parts.append(f'<text x="{pad + step * k}" y="{height - 8}" font-size="11" fill="{color}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _attribution_svg(attribution: dict[str, Any], sessions: list[str]) -> str:
    """Cumulative P&L of each attribution component (and the actual) over every session of the
    backtest (so it lines up with the equity plot)."""
    rows = pd.DataFrame(attribution["by_day"], columns=["session", *ATTRIBUTION_COLUMNS]).set_index("session")
    rows = rows.reindex(sorted(set(sessions) | set(rows.index)), fill_value=0.0).astype(float)
    series = [rows[k].cumsum() for k in ATTRIBUTION_COLUMNS]
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f", "#000000"]
    return line_chart_svg(series, colors, list(ATTRIBUTION_COLUMNS), "Greeks P&L attribution, cumulative ($)")


def _calibration_svg(rows: list[dict[str, Any]], size: int = 260) -> str:
    pad = 30
    scale = size - 2 * pad
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img">',
             f'<text x="{pad}" y="16" font-size="13">calibration: predicted vs realized PoP</text>',
             f'<line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{pad}" stroke="#bbb" stroke-dasharray="4"/>']
    for r in rows:
        if r["trades"]:
            x, y = pad + r["mean_predicted"] * scale, size - pad - r["realized"] * scale
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{3 + min(r["trades"], 30) / 5:.1f}" fill="#c33"/>')
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: dict[str, Any] | list[dict[str, Any]]) -> str:
    if isinstance(rows, dict):
        rows = [{"": k} | (v if isinstance(v, dict) else {"value": v}) for k, v in rows.items()]
    if not rows:
        return "<p>none</p>"
    cols = list(rows[0])

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: dict[str, Any]) -> str:
    equity = pd.Series(report["equity"], dtype=float)
    spy = pd.Series(report["equity_spy"], dtype=float)
    condor = pd.Series(report["equity_condor"], dtype=float)
    metrics = {"graph": report["metrics"], "SPY buy-and-hold": report["baselines"]["spy_buy_and_hold"],
               "16Δ 45-DTE iron condor": report["baselines"]["iron_condor_16d_45dte"]}
    keys = sorted({k for m in metrics.values() for k in m})
    metric_rows = [{"metric": k} | {name: m.get(k) for name, m in metrics.items()} for k in keys]
    p = report["params"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>backtest {report['backtest_id']}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head><body>
<h1>Backtest {html.escape(report['backtest_id'])}</h1>
<p>{html.escape(p['from'])} to {html.escape(p['to'])}, tickers {html.escape(', '.join(p['tickers']))},
slots {html.escape(', '.join(p['slots']))}, approval {html.escape(p['approve'])},
settings {html.escape(json.dumps(p['overrides']))}; {report['days']} sessions,
{len(report['modelled_chain_days'])} on modelled chains.</p>
{line_chart_svg([equity, spy, condor], ['#1f77b4', '#2ca02c', '#d62728'],
           ['graph', 'SPY buy-and-hold', 'iron condor'], 'equity (NLV, $)')}
{line_chart_svg([drawdown(equity), drawdown(spy), drawdown(condor)], ['#1f77b4', '#2ca02c', '#d62728'],
           ['graph', 'SPY buy-and-hold', 'iron condor'], 'drawdown', percent=True)}
{_attribution_svg(report['greeks_attribution'], list(report['equity']))}
{_calibration_svg(report['calibration'])}
<h2>Metrics</h2>{_table(metric_rows)}
<h2>P&amp;L by strategy</h2>{_table(report['pnl_by_strategy'])}
<h2>P&amp;L by regime</h2>{_table(report['pnl_by_regime'])}
<h2>P&amp;L by analyst agreement</h2>
<p>Closed positions grouped by how many analysts (flow, technical, social on the price view;
vol surface on the volatility view) agreed with the verdict the trade came from.</p>{_table(report['pnl_by_agreement'])}
<h2>Greeks P&amp;L attribution</h2>
<p>Each position's P&amp;L between its opening fill, its marks and its closing fill, explained by the
Greeks at the earlier point: delta&middot;dS + &frac12;gamma&middot;dS&sup2; + theta&middot;dt +
&Sigma; vega&middot;d&sigma; per leg (vol points); commissions apart; residual = actual &minus; the rest.</p>
{_table([{"": "total"} | report['greeks_attribution']['total']])}
{_table(report['greeks_attribution']['by_day'])}
<h2>Calibration (reliability table)</h2>{_table(report['calibration'])}
<h2>Assumptions</h2><ul>{''.join(f'<li>{html.escape(a)}</li>' for a in report['assumptions'])}</ul>
{f"<p>Not measured yet: {html.escape(', '.join(report['not_measured']))}.</p>" if report['not_measured'] else ""}
<p>Days on modelled chains: {html.escape(', '.join(report['modelled_chain_days']))}</p>
</body></html>"""


def write_report(report: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (folder / "report.html").write_text(render_html(report))
    return folder
