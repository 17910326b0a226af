"""The two baselines a backtest is judged against, on the same data, account size and costs.

* **SPY buy-and-hold**: the opening cash buys whole SPY shares at the first session's close and
  holds them; equity is cash plus shares at each close (the shared SPY file is dividend-adjusted,
  so dividends are in).
* **Mechanical iron condor** on the first ticker: with no condor open, at a session's close it
  sells the expiry nearest 45 days (at least 22), short strikes nearest 16 delta on each side,
  long wings 2.5% of spot further out (nearest listed strike); closes at 50% of the
  credit or at 21 days to expiry. Sized like the graph's single-position limit: whole contracts
  whose max loss fits in 5% of NLV. Fills at mid worsened by the paper broker's slippage
  fraction (0.25) of the half-spreads, $0.65 per contract per leg, on the same chains the graph
  saw (modelled from VIX9D/VIX/VIX3M/SKEW unless a recorded one exists). A modelled chain lists
  strikes around each day's spot, so a leg can drop out of it: the condor then keeps its last
  value and is managed on the next day that quotes every leg (or settled at expiry).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd

from tools.chain import OptionChain
from tools.implied_vol import implied_vol
from tools.pricing import bsm_greeks

EXIT_DTE = 21
SLIPPAGE_FRACTION = 0.25
COMMISSION_PER_CONTRACT = 0.65
MAX_LOSS_NLV = 0.05


def buy_and_hold(closes: pd.Series, cash: float) -> pd.Series:
    """Equity of whole shares bought at the first close with `cash`, held (index: session dates)."""
    closes = closes.astype(float)
    shares = np.floor(cash / closes.iloc[0])
    return (cash - shares * closes.iloc[0]) + shares * closes


@dataclass(frozen=True)
class CondorRule:
    """How the mechanical condor picks and manages its trade. The default is the baseline every
    report carries; the 2011-2019 study (README) varies short delta, DTE and wing width."""

    short_delta: float = 0.16
    target_dte: int = 45
    wing_fraction: float = 0.025  # long wings this fraction of spot beyond the shorts
    exit_dte: int = EXIT_DTE
    profit_take: float = 0.5  # of the credit

    @property
    def min_dte(self) -> int:
        return self.exit_dte + 1


@dataclass
class Condor:
    expiry: np.datetime64
    strikes: tuple[float, float, float, float]  # long put, short put, short call, long call
    credit: float  # per share, received
    quantity: int
    opened: date


def _deltas(chain: OptionChain, t: np.ndarray) -> np.ndarray:
    iv = implied_vol(chain.mid, chain.spot, chain.strike, t, chain.rate, chain.dividend_yield, chain.is_call).vol
    return bsm_greeks(chain.spot, chain.strike, t, chain.rate, chain.dividend_yield, iv, chain.is_call).delta


def _row(chain: OptionChain, expiry: np.datetime64, strike: float, call: bool) -> int | None:
    rows = np.flatnonzero((chain.expiry == expiry) & (chain.is_call == call) & (chain.strike == strike))
    return int(rows[0]) if len(rows) else None


def condor_value(chain: OptionChain, condor: Condor, worsen: float) -> float | None:
    """Per-share value of the (short) condor, i.e. what closing it costs: shorts' mids less longs'
    mids, plus `worsen` times the half-spreads (None: a leg unquoted)."""
    rows = [_row(chain, condor.expiry, k, c) for k, c in zip(condor.strikes, (False, False, True, True))]
    if any(r is None for r in rows):
        return None
    sign = np.array([-1.0, 1.0, 1.0, -1.0])  # long put, short put, short call, long call
    mid, half = chain.mid[rows], (chain.ask[rows] - chain.bid[rows]) / 2
    return float(np.sum(sign * mid) + worsen * np.sum(half))


def open_condor(chain: OptionChain, day: date, nlv: float, rule: CondorRule = CondorRule()) -> Condor | None:
    dte = (chain.expiry - np.datetime64(day)).astype(int)
    candidates = np.unique(chain.expiry[dte >= rule.min_dte])
    if not len(candidates):
        return None
    expiry = candidates[np.argmin(np.abs((candidates - np.datetime64(day)).astype(int) - rule.target_dte))]
    t = np.maximum((chain.expiry - np.datetime64(day)).astype(float) / 365.0, 1e-6)
    delta = _deltas(chain, t)
    same = (chain.expiry == expiry) & np.isfinite(delta) & (chain.bid > 0)
    puts, calls = same & ~chain.is_call & (chain.strike < chain.spot), same & chain.is_call & (chain.strike > chain.spot)
    if not puts.any() or not calls.any():
        return None
    short_put = float(chain.strike[puts][np.argmin(np.abs(delta[puts] + rule.short_delta))])
    short_call = float(chain.strike[calls][np.argmin(np.abs(delta[calls] - rule.short_delta))])
    width = rule.wing_fraction * chain.spot
    listed_puts = chain.strike[(chain.expiry == expiry) & ~chain.is_call & (chain.strike < short_put)]
    listed_calls = chain.strike[(chain.expiry == expiry) & chain.is_call & (chain.strike > short_call)]
    if not len(listed_puts) or not len(listed_calls):
        return None
    long_put = float(listed_puts[np.argmin(np.abs(listed_puts - (short_put - width)))])
    long_call = float(listed_calls[np.argmin(np.abs(listed_calls - (short_call + width)))])
    condor = Condor(expiry, (long_put, short_put, short_call, long_call), 0.0, 0, day)
    credit = condor_value(chain, condor, -SLIPPAGE_FRACTION)  # sold: its value less the slippage
    if credit is None or credit <= 0:
        return None
    max_loss = (max(short_put - long_put, long_call - short_call) - credit) * chain.multiplier
    quantity = int(np.floor(MAX_LOSS_NLV * nlv / max_loss)) if max_loss > 0 else 0
    if quantity < 1:
        return None
    condor.credit, condor.quantity = credit, quantity
    return condor


def mechanical_condor(chains: dict[date, OptionChain], cash: float,
                      rule: CondorRule = CondorRule()) -> tuple[pd.Series, list[dict]]:
    """Equity at each session's close and the closed trades of the managed condor (by default the
    16-delta, 45-DTE baseline)."""
    equity, trades = {}, []
    condor: Condor | None = None
    value = 0.0
    for day in sorted(chains):
        chain = chains[day]
        if condor is not None:
            dte = int((condor.expiry - np.datetime64(day)).astype(int))
            close_cost = condor_value(chain, condor, SLIPPAGE_FRACTION)
            mid_cost = condor_value(chain, condor, 0.0)
            expired = dte <= 0
            if expired:  # settle at intrinsic value on the close
                s = chain.spot
                lp, sp, sc, lc = condor.strikes
                close_cost = max(sp - s, 0) - max(lp - s, 0) + max(s - sc, 0) - max(s - lc, 0)
            if close_cost is not None and (expired or dte <= rule.exit_dte or
                                           (mid_cost is not None and condor.credit - mid_cost >= rule.profit_take * condor.credit)):
                fees = 0 if expired else COMMISSION_PER_CONTRACT * 4 * condor.quantity
                pnl = (condor.credit - close_cost) * chain.multiplier * condor.quantity - fees
                cash += -close_cost * chain.multiplier * condor.quantity - fees
                trades.append({"opened": condor.opened, "closed": day, "strikes": condor.strikes,
                               "expiry": str(condor.expiry), "quantity": condor.quantity,
                               "credit": condor.credit, "close_cost": close_cost, "realized_pnl": pnl,
                               "reason": "expiry" if expired else (f"{rule.exit_dte} DTE" if dte <= rule.exit_dte else "profit take")})
                condor = None
        if condor is None:
            nlv = cash
            condor = open_condor(chain, day, nlv, rule)
            if condor is not None:
                cash += condor.credit * chain.multiplier * condor.quantity - COMMISSION_PER_CONTRACT * 4 * condor.quantity
        if condor is None:
            value = 0.0
        else:  # a leg the modelled chain no longer lists keeps its last value until it is quoted again
            mid_cost = condor_value(chain, condor, 0.0)
            value = value if mid_cost is None and condor.opened != day else \
                -(mid_cost if mid_cost is not None else condor.credit) * chain.multiplier * condor.quantity
        equity[day] = cash + value
    return pd.Series(equity, dtype=float), trades


def condor_chains(market, ticker: str, sessions: list[tuple[date, datetime, datetime]]) -> dict[date, OptionChain]:
    """The chain at each session's close (what the graph's housekeeping sees then)."""
    return {day: market.chain(ticker, closes).chain for day, _, closes in sessions}
