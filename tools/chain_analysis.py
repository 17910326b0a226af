"""Whole-chain analysis: quote validation, parity forwards, implied vols, the SVI surface, the
quotes that stray from it, and the dealer-flow totals -- one call, one JSON-safe result.

Pipeline (each stage's wall time is kept in `ChainAnalysis.timings`, seconds):
1. `tools.quotes.quote_problems`: every row gets a reason code; rejects are counted by reason.
2. `tools.cboe.implied_forwards`: forward and discount per expiry from put-call parity.
3. `tools.implied_vol.chain_implied_vol`: Black-76 IV of every valid mid on those forwards.
4. `tools.surface.build_surface` + `mispriced_strikes`: SVI per expiry, checks, skew, terms.
5. `tools.flow`: total dealer gamma exposure (USD per 1% move), zero-gamma level, put/call
   volume and open-interest ratios, max pain per expiry. Exposures use each strike's OTM-side
   IV from step 3 and each expiry's parity carry (rate from the discount, dividend yield from
   the forward), not the vendor's IV column.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np

from tools import flow
from tools.cboe import ForwardCurve, implied_forwards
from tools.chain import OptionChain
from tools.implied_vol import ChainIV, IVFailure, chain_implied_vol
from tools.quotes import QuoteProblem, summarize_rejections
from tools.surface import MispricedQuotes, VolSurface, build_surface, mispriced_strikes, usable_quotes

# The zero-gamma sweep re-prices every open-interest row at each grid spot; 41 points over
# +-20% of spot (1% apart, each crossing then refined by root finding) keeps it within the
# chain-analysis time budget on a 20,000-row SPX chain.
ZERO_GAMMA_GRID_POINTS = 41
ZERO_GAMMA_GRID_WIDTH = 0.20
MISPRICED_MIN_VOL_POINTS = 1.0
MISPRICED_LISTED = 20


@dataclass(frozen=True)
class FlowTotals:
    """Chain-level dealer flow numbers (sign convention and units as in `tools.flow`)."""

    total_gamma_exposure: float  # USD of delta per 1% move in spot; + dealers long gamma
    zero_gamma_level: float  # spot where total GEX changes sign; NaN with zero_gamma_reason
    zero_gamma_reason: str | None
    put_call_volume_ratio: float
    put_call_open_interest_ratio: float
    max_pain: list[flow.MaxPain]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChainAnalysis:
    underlying: str
    as_of: datetime
    spot: float
    n_rows: int
    quote_rejections: dict[str, int]  # rejected quotes by tools.quotes.QuoteProblem name
    iv_failures: dict[str, int]  # valid quotes whose mid had no implied vol, by IVFailure name
    n_usable_quotes: int  # quotes the surface may fit (see tools.surface.usable_quotes)
    forwards: ForwardCurve
    chain_iv: ChainIV
    surface: VolSurface
    mispriced: MispricedQuotes
    flow: FlowTotals | None
    flow_error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON types only: NaN becomes None, dates ISO strings, arrays lists."""
        surface = self.surface
        slices = []
        for s in surface.slices:
            p = s.params
            slices.append({
                "expiry": str(s.expiry), "root": s.root, "t": s.t, "forward": s.forward,
                "discount": s.discount, "n_usable": s.n_usable, "fitted": s.fitted, "message": s.message,
                "k_range": list(s.k_range), "atm_vol": s.atm_vol,
                "svi": None if p is None else {"a": p.a, "b": p.b, "rho": p.rho, "m": p.m, "sigma": p.sigma},
                "rmse_vol_points": s.rmse_vol_points, "butterfly_ok": s.butterfly_ok,
                "butterfly_violation_points": int(s.butterfly_violation_k.size),
                "call_25d_vol": s.call_25d_vol, "put_25d_vol": s.put_25d_vol,
                "call_25d_strike": s.call_25d_strike, "put_25d_strike": s.put_25d_strike,
                "risk_reversal_25d": s.risk_reversal_25d, "butterfly_25d": s.butterfly_25d,
            })
        ts = surface.term_structure
        m = self.mispriced
        top = slice(0, MISPRICED_LISTED)
        out = {
            "underlying": self.underlying, "as_of": self.as_of, "spot": self.spot, "n_rows": self.n_rows,
            "quote_rejections": self.quote_rejections, "iv_failures": self.iv_failures,
            "n_usable_quotes": self.n_usable_quotes,
            "forwards": [
                {"expiry": str(e), "t": t, "forward": f, "discount": d, "rate": r}
                for e, t, f, d, r in zip(self.forwards.expiry, self.forwards.t, self.forwards.forward,
                                         self.forwards.discount, self.forwards.rate)
            ],
            "slices": slices,
            "term_structure": {
                "expiry": [str(e) for e in ts.expiry], "t": ts.t, "atm_vol": ts.atm_vol,
                "atm_vol_30d": ts.atm_vol_30d, "atm_vol_90d": ts.atm_vol_90d,
                "slope_per_year": ts.slope_per_year, "shape": ts.shape, "reason": ts.reason,
            },
            "calendar_issues": [
                {"earlier": str(c.earlier), "later": str(c.later), "k_min": c.k_min, "k_max": c.k_max,
                 "worst_shortfall": c.worst_shortfall}
                for c in surface.calendar_issues
            ],
            "mispriced": {
                "count": len(m), "min_vol_points": MISPRICED_MIN_VOL_POINTS,
                "top": [
                    {"expiry": str(e), "strike": k, "is_call": c, "market_vol": mv, "fitted_vol": fv,
                     "vol_diff_points": dv, "dollars_per_contract": usd, "fit_outside_spread": o}
                    for e, k, c, mv, fv, dv, usd, o in zip(
                        m.expiry[top], m.strike[top], m.is_call[top], m.market_vol[top], m.fitted_vol[top],
                        m.vol_diff_points[top], m.dollars_per_contract[top], m.fit_outside_spread[top])
                ],
            },
            "flow": None if self.flow is None else {
                "total_gamma_exposure": self.flow.total_gamma_exposure,
                "zero_gamma_level": self.flow.zero_gamma_level,
                "zero_gamma_reason": self.flow.zero_gamma_reason,
                "put_call_volume_ratio": self.flow.put_call_volume_ratio,
                "put_call_open_interest_ratio": self.flow.put_call_open_interest_ratio,
                "max_pain": [{"expiry": str(mp.expiry), "strike": mp.strike, "holder_payout": mp.holder_payout,
                              "reason": mp.reason} for mp in self.flow.max_pain],
                "notes": list(self.flow.notes),
            },
            "flow_error": self.flow_error,
            "timings": self.timings,
        }
        return _json_safe(out)


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, np.datetime64):
        return str(value)
    return value


def analyze_chain(chain: OptionChain, *, include_flow: bool = True,
                  zero_gamma_grid_points: int = ZERO_GAMMA_GRID_POINTS) -> ChainAnalysis:
    """Run the whole pipeline on one chain (see the module docstring)."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    forwards = implied_forwards(chain)
    lap("forwards")
    chain_iv = chain_implied_vol(chain, forwards.forwards_by_expiry(), forwards.discounts_by_expiry())
    lap("implied_vol")
    valid = chain_iv.quote_problem == QuoteProblem.OK
    rejections = summarize_rejections(chain_iv.quote_problem)
    codes, counts = np.unique(chain_iv.reason[valid], return_counts=True)
    iv_failures = {IVFailure(int(c)).name: int(n) for c, n in zip(codes, counts) if c != IVFailure.OK}
    usable = usable_quotes(chain, chain_iv)
    surface = build_surface(chain, chain_iv, forwards)
    lap("surface")
    mispriced = mispriced_strikes(surface, chain, chain_iv, min_vol_points=MISPRICED_MIN_VOL_POINTS)
    lap("mispriced")
    flow_totals, flow_error = None, None
    if include_flow:
        flow_totals, flow_error = _flow_totals(chain, chain_iv, zero_gamma_grid_points)
        lap("flow")
    timings["total"] = sum(timings.values())
    return ChainAnalysis(
        underlying=chain.underlying, as_of=chain.as_of, spot=chain.spot, n_rows=len(chain),
        quote_rejections=rejections, iv_failures=iv_failures, n_usable_quotes=int(usable.sum()),
        forwards=forwards, chain_iv=chain_iv, surface=surface, mispriced=mispriced,
        flow=flow_totals, flow_error=flow_error, timings=timings,
    )


def _flow_totals(chain: OptionChain, chain_iv: ChainIV, grid_points: int) -> tuple[FlowTotals | None, str | None]:
    t = chain.time_to_expiry
    iv = flow.otm_side_iv(chain.strike, chain.is_call, chain.expiry, chain_iv.vol, chain_iv.forward, chain.root)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(t > 0, -np.log(chain_iv.discount) / t, 0.0)
        # F = S exp((r - q) t)  =>  q = r - ln(F / S) / t
        div_yield = np.where(t > 0, rate - np.log(chain_iv.forward / chain.spot) / t, 0.0)
    args = (chain.strike, chain.is_call, chain.open_interest, iv, t, chain.spot)
    carry = dict(rate=rate, div_yield=div_yield, multiplier=chain.multiplier)
    try:
        gex = flow.gamma_exposure_by_strike(*args, **carry)
        zero = flow.zero_gamma_level(*args, **carry, grid_width=ZERO_GAMMA_GRID_WIDTH, grid_points=grid_points)
        ratios = flow.put_call_ratios(chain.is_call, chain.volume, chain.open_interest)
        pains = flow.max_pain(chain.strike, chain.is_call, chain.open_interest, chain.expiry,
                              multiplier=chain.multiplier)
    except ValueError as error:  # malformed open interest / volume: report, keep the vol analysis
        return None, str(error)
    notes = tuple(dict.fromkeys(gex.notes + ratios.notes))
    return FlowTotals(
        total_gamma_exposure=float(gex.total), zero_gamma_level=float(zero.level), zero_gamma_reason=zero.reason,
        put_call_volume_ratio=float(ratios.volume_ratio), put_call_open_interest_ratio=float(ratios.open_interest_ratio),
        max_pain=pains, notes=notes,
    ), None
