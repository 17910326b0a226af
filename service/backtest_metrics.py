"""Performance figures of an equity curve and of a list of closed trades.

Return statistics come from empyrical (empyrical-reloaded: the library Quantopian's pyfolio used),
on daily simple returns of the account's net liquidation value; nothing here re-derives them.
Trade statistics are ratios of the realized P&L of closed positions. The calibration table bins
the predicted probability of profit and sets the realized win rate beside it.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import empyrical
import numpy as np
import pandas as pd

TRADING_DAYS = 252


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def daily_returns(equity: pd.Series) -> pd.Series:
    """Simple daily returns of an equity curve indexed by session date."""
    equity = equity.astype(float).dropna()
    return equity.pct_change().dropna()


def return_metrics(equity: pd.Series) -> dict[str, float | None]:
    """CAGR, annual volatility, Sharpe, Sortino, Calmar, max drawdown, historical 95% VaR and CVaR
    (one day, as a return: the 5% quantile and the mean beyond it), total return."""
    returns = daily_returns(equity)
    equity = equity.astype(float).dropna()
    out: dict[str, float | None] = {"days": int(len(equity)),
                                    "total_return": _finite(equity.iloc[-1] / equity.iloc[0] - 1) if len(equity) else None}
    if len(returns) < 2:
        return out | dict.fromkeys(("cagr", "annual_volatility", "sharpe", "sortino", "calmar", "max_drawdown",
                                    "var_95", "cvar_95"))
    return out | {
        "cagr": _finite(empyrical.cagr(returns, period="daily")),
        "annual_volatility": _finite(empyrical.annual_volatility(returns, period="daily")),
        "sharpe": _finite(empyrical.sharpe_ratio(returns, period="daily")),
        "sortino": _finite(empyrical.sortino_ratio(returns, period="daily")),
        "calmar": _finite(empyrical.calmar_ratio(returns, period="daily")),
        "max_drawdown": _finite(empyrical.max_drawdown(returns)),
        "var_95": _finite(empyrical.value_at_risk(returns, cutoff=0.05)),
        "cvar_95": _finite(empyrical.conditional_value_at_risk(returns, cutoff=0.05)),
    }


def drawdown(equity: pd.Series) -> pd.Series:
    """Drawdown from the running peak (0 at a new high, negative below it)."""
    equity = equity.astype(float)
    return equity / equity.cummax() - 1.0


def trade_metrics(pnls: Sequence[float]) -> dict[str, float | int | None]:
    """Win rate, average win and loss, profit factor (gross wins over gross losses) of closed trades."""
    pnl = np.asarray(pnls, dtype=float)
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    return {
        "trades": int(len(pnl)),
        "win_rate": float(len(wins) / len(pnl)) if len(pnl) else None,
        "average_win": float(wins.mean()) if len(wins) else None,
        "average_loss": float(losses.mean()) if len(losses) else None,
        "profit_factor": float(wins.sum() / -losses.sum()) if len(losses) else None,
        "total_pnl": float(pnl.sum()),
    }


def turnover(traded_premium: float, equity: pd.Series) -> float | None:
    """Annualized turnover: dollars of premium traded (opening and closing) over average NLV, per year."""
    equity = equity.astype(float).dropna()
    if len(equity) < 2 or equity.mean() <= 0:
        return None
    return float(traded_premium / equity.mean() * TRADING_DAYS / len(equity))


def calibration_table(predicted: Sequence[float | None], won: Sequence[bool],
                      edges: Sequence[float] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)) -> list[dict[str, Any]]:
    """Reliability table: per bin of predicted probability of profit, trades, mean predicted and
    realized win rate (trades without a prediction are left out)."""
    pairs = [(float(p), bool(w)) for p, w in zip(predicted, won) if p is not None and math.isfinite(float(p))]
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = [(p, w) for p, w in pairs if lo <= p < hi or (hi == edges[-1] and p == hi)]
        rows.append({"bin": f"{lo:.1f}-{hi:.1f}", "trades": len(inside),
                     "mean_predicted": float(np.mean([p for p, _ in inside])) if inside else None,
                     "realized": float(np.mean([w for _, w in inside])) if inside else None})
    return rows


def agreeing_analysts(signals: Sequence[dict[str, Any]], price_view: str | None, vol_view: str | None) -> int:
    """How many analysts agreed with a verdict: the price analysts (flow, technical, social) whose
    direction is the verdict's bullish/bearish price view, plus the volatility-surface analyst when
    its rich/cheap is the verdict's volatility view; a signal with no conviction agrees with nothing.
    The count `min_agreeing_sources` gates on the price side (`agents.aggregate`)."""
    from agents.aggregate import PRICE_SOURCES

    count = 0
    for s in signals:
        if float(s["conviction"]) <= 0:
            continue
        if s["source"] in PRICE_SOURCES and price_view in ("bullish", "bearish") and s["direction"] == price_view:
            count += 1
        elif s["source"] == "vol_surface" and vol_view in ("rich", "cheap") and s["direction"] == vol_view:
            count += 1
    return count


def pnl_by(rows: Sequence[dict[str, Any]], key: str) -> dict[str, dict[str, float | int]]:
    """Realized P&L, trades and wins grouped by `key` of each closed-position row."""
    out: dict[str, dict[str, float | int]] = {}
    for row in rows:
        value = row.get(key)
        group = out.setdefault("unknown" if value is None or value == "" else str(value),
                               {"trades": 0, "wins": 0, "realized_pnl": 0.0})
        pnl = float(row["realized_pnl"])
        group["trades"] += 1
        group["wins"] += int(pnl > 0)
        group["realized_pnl"] += pnl
    return out
