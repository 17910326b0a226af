"""The implied-volatility surface of one chain: an SVI smile per expiry, its no-arbitrage checks,
25-delta skew, the ATM term structure, and the quotes that stray from the fit.

Units and conventions
---------------------
* Vols are annualized decimals (0.20 = 20%); fields named ``*_vol_points`` are in vol points
  (1.0 = one percentage point). t is in years (ACT/365 to the 16:00 New York close).
* Log-moneyness k = ln(K / F) on each expiry's forward F (put-call parity, `tools.cboe`).
* Deltas are Black-76 *forward* deltas, N(d1) for calls and N(d1) - 1 for puts (undiscounted,
  premium excluded), d1 = -k / sqrt(w) + sqrt(w) / 2 with w the fitted total variance.
* 25-delta risk reversal = vol(25-delta call) - vol(25-delta put) (negative for the usual equity
  skew); 25-delta butterfly = mean of the two - ATM vol, ATM meaning k = 0 (at the forward).
  The 25-delta strikes are found on the fitted smile; a 25-delta vol is NaN when its strike lies
  outside the quotes the smile was fitted to (no extrapolation).

Which quotes are fitted ("usable"): the out-of-the-money side of each strike (calls at and above
the forward, puts at and below), a valid mid implied vol, a positive bid, and a relative spread
(ask - bid) / mid of at most MAX_RELATIVE_SPREAD. Wider quotes are placeholders or tick-limited
markets whose mid says little (SPX 2022-12-30 shows 5.00 x 85.00 on far puts, 0.01 x 0.02 is
common on SPY wings); on the real SPX and SPY chains they were the whole difference between fits
within 1.5 vol points of the mids and fits that are not. An expiry quoted under several roots
(SPX AM-settled monthlies and SPXW PM weeklies on the same date) uses the root with the most
usable quotes. Expiries with fewer than MIN_USABLE_STRIKES usable quotes are reported, not fitted.

Weights: each point's squared vol error is weighted by 1 / (vol spread of its quote), the vol
spread being ask IV - bid IV (floored at 0.1 vol point); quotes whose bid or ask IV is not
computable get the slice's widest spread.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.special import ndtri

from tools.chain import OptionChain
from tools.implied_vol import ChainIV, IVFailure, implied_vol_black76
from tools.pricing import black76_greeks, black76_price
from tools.svi import (
    CalendarViolation,
    SmileData,
    SVIFit,
    SVIParams,
    butterfly_violations,
    calendar_violations,
    fit_svi_many,
)

MAX_RELATIVE_SPREAD = 0.5
MIN_USABLE_STRIKES = 5
MIN_VOL_SPREAD = 0.001
# Points per slice for the final (dense, uniform) butterfly verification of a fitted smile.
BUTTERFLY_VERIFY_POINTS = 2001
# Term-structure shape: the 90-day ATM vol above/below the 30-day one by more than this.
TERM_FLAT_BAND_VOL_POINTS = 0.25
TERM_TENORS_DAYS = (30, 90)
DELTA_25 = 0.25


@dataclass(frozen=True)
class SmileSlice:
    """One expiry's smile. ``params``/``fit`` are None (with ``message``) when it was not fitted."""

    expiry: np.datetime64
    t: float
    forward: float
    discount: float
    root: str | None
    n_usable: int
    rows: np.ndarray  # chain row indices of the usable quotes that were fitted
    k_range: tuple[float, float]  # log-moneyness span of those quotes
    fit: SVIFit | None
    message: str
    atm_vol: float = float("nan")  # fitted vol at k = 0
    butterfly_ok: bool = False
    butterfly_violation_k: np.ndarray = field(default_factory=lambda: np.empty(0))
    call_25d_vol: float = float("nan")
    put_25d_vol: float = float("nan")
    call_25d_strike: float = float("nan")
    put_25d_strike: float = float("nan")

    @property
    def params(self) -> SVIParams | None:
        return None if self.fit is None else self.fit.params

    @property
    def fitted(self) -> bool:
        return self.fit is not None and self.fit.success

    @property
    def rmse_vol_points(self) -> float:
        return float("nan") if self.fit is None else self.fit.rmse_vol_points

    @property
    def risk_reversal_25d(self) -> float:
        return self.call_25d_vol - self.put_25d_vol

    @property
    def butterfly_25d(self) -> float:
        return 0.5 * (self.call_25d_vol + self.put_25d_vol) - self.atm_vol

    def implied_vol(self, strike) -> np.ndarray:
        """Fitted vol at the given strikes (NaN if the slice was not fitted)."""
        strike = np.asarray(strike, dtype=float)
        if not self.fitted:
            return np.full(strike.shape, np.nan)
        return self.params.implied_vol(np.log(strike / self.forward), self.t)


@dataclass(frozen=True)
class TermStructure:
    """ATM vol by expiry (fitted slices only) and its 30- vs 90-day shape.

    ``atm_vol_30d``/``atm_vol_90d`` interpolate ATM total variance linearly in t between the
    bracketing expiries (NaN with ``reason`` when the chain does not span the tenor).
    ``slope_per_year`` = (vol_90d - vol_30d) / (60/365); ``shape`` is "contango" (rising),
    "backwardation" (falling), "flat" (within TERM_FLAT_BAND_VOL_POINTS) or "unknown".
    """

    expiry: np.ndarray
    t: np.ndarray
    atm_vol: np.ndarray
    atm_vol_30d: float
    atm_vol_90d: float
    slope_per_year: float
    shape: str
    reason: str | None = None


@dataclass(frozen=True)
class CalendarIssue:
    """Total variance falls from ``earlier`` to ``later`` expiry: on the k range both expiries
    are quoted over, the violating points lie between k_min and k_max (not necessarily all of
    that interval); ``worst_shortfall`` is the largest w_earlier - w_later found."""

    earlier: np.datetime64
    later: np.datetime64
    k_min: float
    k_max: float
    worst_shortfall: float  # total-variance units


@dataclass(frozen=True)
class VolSurface:
    underlying: str
    as_of: object
    spot: float
    slices: list[SmileSlice]
    term_structure: TermStructure
    calendar_issues: list[CalendarIssue]

    @property
    def fitted_slices(self) -> list[SmileSlice]:
        return [s for s in self.slices if s.fitted]

    def slice_for(self, expiry) -> SmileSlice:
        key = np.datetime64(expiry, "D")
        for s in self.slices:
            if s.expiry == key:
                return s
        raise KeyError(f"no expiry {key} in the surface")


# ----------------------------------------------------------------------------- usable quotes


def usable_quotes(chain: OptionChain, chain_iv: ChainIV) -> np.ndarray:
    """Boolean mask of the rows an SVI fit may use (see module docstring)."""
    mid = 0.5 * (chain.bid + chain.ask)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative_spread = (chain.ask - chain.bid) / mid
        otm = np.where(chain.is_call, chain.strike >= chain_iv.forward, chain.strike <= chain_iv.forward)
        return (
            (chain_iv.reason == IVFailure.OK)
            & np.isfinite(chain_iv.vol) & (chain_iv.vol > 0)
            & otm & (chain.bid > 0)
            & (relative_spread <= MAX_RELATIVE_SPREAD)
        )


def _vol_spreads(chain: OptionChain, chain_iv: ChainIV, rows: np.ndarray) -> np.ndarray:
    t = chain.time_to_expiry[rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = -np.log(chain_iv.discount[rows]) / t
    args = (chain_iv.forward[rows], chain.strike[rows], t, rate, chain.is_call[rows])
    # Bids and asks in one solve (each row's iteration is its own: the same vols as two calls).
    vols = implied_vol_black76(np.concatenate([chain.bid[rows], chain.ask[rows]]),
                               *(np.concatenate([a, a]) for a in args)).vol
    bid_vol, ask_vol = vols[:rows.size], vols[rows.size:]
    return ask_vol - bid_vol


# ----------------------------------------------------------------------------- surface


def build_surface(chain: OptionChain, chain_iv: ChainIV, forwards=None) -> VolSurface:
    """Fit an SVI smile to every expiry with >= MIN_USABLE_STRIKES usable quotes.

    ``chain_iv`` comes from `tools.implied_vol.chain_implied_vol` (its per-row forward and
    discount are the ones used here). ``forwards`` (a `tools.cboe.ForwardCurve`) is optional and
    only cross-checked: the chain IV's forwards must be the curve's.
    """
    if forwards is not None:
        _check_forwards(forwards, chain.expiry.astype("datetime64[D]"), chain_iv.forward, usable_quotes(chain, chain_iv))
    slices, pending = _collect_slices(chain, chain_iv)
    fits = fit_svi_many([p.data for p in pending])
    for p, fit in zip(pending, fits):
        slices[p.slot] = _describe_slice(p.expiry, p.t, p.forward, p.discount, p.root, p.rows, p.k_range, fit)
    _add_25_delta(slices)
    fitted = [s for s in slices if s.fitted]
    return VolSurface(
        underlying=chain.underlying, as_of=chain.as_of, spot=chain.spot, slices=slices,
        term_structure=_term_structure(fitted), calendar_issues=_calendar_issues(fitted),
    )


def smile_inputs(chain: OptionChain, chain_iv: ChainIV) -> list[tuple[np.datetime64, SmileData]]:
    """The (expiry, points and weights) that `build_surface` hands to `fit_svi_many`, for every
    expiry it fits (benchmarks and diagnostics)."""
    _, pending = _collect_slices(chain, chain_iv)
    return [(p.expiry, p.data) for p in pending]


@dataclass(frozen=True)
class _PendingFit:
    slot: int
    expiry: np.datetime64
    t: float
    forward: float
    discount: float
    root: str | None
    rows: np.ndarray
    k_range: tuple[float, float]
    data: SmileData


def _collect_slices(chain: OptionChain, chain_iv: ChainIV) -> tuple[list, list[_PendingFit]]:
    """One entry per expiry: a finished SmileSlice for those that will not be fitted, None as a
    placeholder for those that will (described by the _PendingFit with that slot)."""
    t_all = chain.time_to_expiry
    usable = usable_quotes(chain, chain_iv)
    expiry_days = chain.expiry.astype("datetime64[D]")
    spreads = np.full(len(chain), np.nan)
    idx_usable = np.flatnonzero(usable)
    spreads[idx_usable] = _vol_spreads(chain, chain_iv, idx_usable)

    slices: list[SmileSlice | None] = []
    pending: list[_PendingFit] = []
    # Each expiry's rows in chain order, from one stable sort rather than a mask per expiry.
    expiries, which = np.unique(expiry_days, return_inverse=True)
    by_expiry = np.argsort(which.ravel(), kind="stable")
    ends = np.cumsum(np.bincount(which.ravel(), minlength=len(expiries)))
    for expiry, end, count in zip(expiries, ends, np.diff(ends, prepend=0)):
        members = by_expiry[end - count:end]
        first = members[0]
        t = float(t_all[first])
        forward = float(chain_iv.forward[first])
        discount = float(chain_iv.discount[first])
        rows, root = _best_root_rows(members[usable[members]], chain.root)
        k = np.log(chain.strike[rows] / forward) if rows.size else np.empty(0)
        k_range = (float(k.min()), float(k.max())) if rows.size else (float("nan"), float("nan"))
        if t <= 0:
            slices.append(SmileSlice(expiry, t, forward, discount, root, 0, rows[:0], k_range, None, "expired"))
            continue
        if rows.size < MIN_USABLE_STRIKES:
            slices.append(SmileSlice(expiry, t, forward, discount, root, int(rows.size), rows, k_range, None,
                                     f"only {rows.size} usable quotes (need {MIN_USABLE_STRIKES})"))
            continue
        vol = chain_iv.vol[rows]
        w = vol * vol * t
        spread = spreads[rows]
        widest = np.nanmax(spread) if np.isfinite(spread).any() else 0.01
        spread = np.maximum(np.where(np.isfinite(spread) & (spread > 0), spread, widest), MIN_VOL_SPREAD)
        # Vol weight 1/spread on squared vol errors; a vol error dv moves w by ~2 sqrt(w t) dv.
        weights = 1.0 / (spread * 4.0 * w * t)
        slices.append(None)
        pending.append(_PendingFit(len(slices) - 1, expiry, t, forward, discount, root, rows, k_range,
                                   SmileData(k=k, w=w, weights=weights, t=t)))
    return slices, pending


def _check_forwards(forwards, expiry_days, row_forward, usable) -> None:
    for e, f in zip(forwards.expiry, forwards.forward):
        rows = (expiry_days == e) & usable
        if rows.any() and np.isfinite(f) and not np.allclose(row_forward[rows], f, rtol=1e-12):
            raise ValueError(f"chain IV for {e} used forward {row_forward[rows][0]}, the forward curve has {f}")


def _best_root_rows(rows: np.ndarray, roots: np.ndarray | None) -> tuple[np.ndarray, str | None]:
    """Of one expiry's usable ``rows`` (ascending), those of the root with the most of them
    (ties: the first root name in sorted order); no roots given: all of them."""
    if rows.size == 0 or roots is None:
        return rows, None
    names, counts = np.unique(roots[rows].astype(str), return_counts=True)
    best = names[np.argmax(counts)]
    return rows[roots[rows].astype(str) == best], (best or None)


def _describe_slice(expiry, t, forward, discount, root, rows, k_range, fit: SVIFit) -> SmileSlice:
    if not fit.success:
        return SmileSlice(expiry, t, forward, discount, root, int(rows.size), rows, k_range, fit, fit.message)
    params = fit.params
    lo, hi = fit.check_range
    violations = butterfly_violations(params, np.linspace(lo, hi, BUTTERFLY_VERIFY_POINTS))
    return SmileSlice(
        expiry, t, forward, discount, root, int(rows.size), rows, k_range, fit, "ok",
        atm_vol=float(params.implied_vol(0.0, t)),
        butterfly_ok=violations.size == 0, butterfly_violation_k=violations,
    )


def _add_25_delta(slices: list[SmileSlice]) -> None:
    """Fill the 25-delta call/put vols and strikes of every fitted slice, in place (all slices'
    roots are found together by vectorized bisection on k)."""
    fitted = [i for i, s in enumerate(slices) if s.fitted]
    if not fitted:
        return
    params = [slices[i].params for i in fitted]
    cols = {name: np.array([getattr(p, name) for p in params])[:, None] for name in ("a", "b", "rho", "m", "sigma")}

    def d1(k):
        x = k - cols["m"]
        w = cols["a"] + cols["b"] * (cols["rho"] * x + np.sqrt(x * x + cols["sigma"] ** 2))
        sqrt_w = np.sqrt(np.maximum(w, 1e-300))
        return -k / sqrt_w + 0.5 * sqrt_w

    # Targets N(d1) = 0.25 (call) and 0.75 (put). Near the money d1 falls as k rises; far out it
    # need not (with a wing slope near 2, d1 -> 0 as k -> infinity), so the root is bracketed
    # within +-6 ATM standard deviations, where the 25-delta strikes (about +-0.7 sd) lie.
    target = ndtri(np.array([DELTA_25, 1.0 - DELTA_25]))[None, :]
    atm_sd = np.sqrt(np.array([p.total_variance(0.0) for p in params]))[:, None]
    lo = np.repeat(-6.0 * atm_sd, 2, axis=1)
    hi = np.repeat(6.0 * atm_sd, 2, axis=1)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        above = d1(mid) > target
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    k25 = 0.5 * (lo + hi)
    for row, i in enumerate(fitted):
        s = slices[i]
        # No extrapolation: a 25-delta strike beyond the quotes the smile was fitted to gets NaN.
        inside = (k25[row] >= s.k_range[0]) & (k25[row] <= s.k_range[1])
        vols = np.where(inside, s.params.implied_vol(k25[row], s.t), np.nan)
        strikes = s.forward * np.exp(k25[row])
        slices[i] = replace(s, call_25d_vol=float(vols[0]), put_25d_vol=float(vols[1]),
                             call_25d_strike=float(strikes[0]), put_25d_strike=float(strikes[1]))


def _term_structure(fitted: list[SmileSlice]) -> TermStructure:
    expiry = np.array([s.expiry for s in fitted], dtype="datetime64[D]")
    t = np.array([s.t for s in fitted])
    atm = np.array([s.atm_vol for s in fitted])
    order = np.argsort(t)
    expiry, t, atm = expiry[order], t[order], atm[order]
    tenors = np.array(TERM_TENORS_DAYS) / 365.0
    nan = float("nan")
    if t.size < 2 or tenors[0] < t[0] or tenors[-1] > t[-1]:
        span = f"{t[0] * 365:.0f}-{t[-1] * 365:.0f} days" if t.size else "no fitted expiries"
        reason = f"fitted expiries cover {span}; the {TERM_TENORS_DAYS[0]}/{TERM_TENORS_DAYS[1]}-day shape needs both"
        return TermStructure(expiry, t, atm, nan, nan, nan, "unknown", reason)
    total_var = atm * atm * t
    vol_at = np.sqrt(np.interp(tenors, t, total_var) / tenors)
    slope = (vol_at[1] - vol_at[0]) / (tenors[1] - tenors[0])
    band = TERM_FLAT_BAND_VOL_POINTS / 100.0
    shape = "contango" if vol_at[1] > vol_at[0] + band else "backwardation" if vol_at[1] < vol_at[0] - band else "flat"
    return TermStructure(expiry, t, atm, float(vol_at[0]), float(vol_at[1]), float(slope), shape)


def _calendar_issues(fitted: list[SmileSlice]) -> list[CalendarIssue]:
    """Check consecutive fitted expiries where both have quotes: over the k range both share."""
    ordered = sorted(fitted, key=lambda s: s.t)
    issues = []
    for near, far in zip(ordered[:-1], ordered[1:]):
        lo, hi = max(near.k_range[0], far.k_range[0]), min(near.k_range[1], far.k_range[1])
        if not hi > lo:
            continue
        found: list[CalendarViolation] = calendar_violations([near, far], np.linspace(lo, hi, 201))
        for v in found:
            issues.append(CalendarIssue(near.expiry, far.expiry, float(v.k.min()), float(v.k.max()), v.worst_shortfall))
    return issues


# ----------------------------------------------------------------------------- mispriced quotes


@dataclass(frozen=True)
class MispricedQuotes:
    """Quotes whose mid IV strays from their expiry's fit, largest dollar amount first.

    ``vol_diff_points`` = market mid IV - fitted IV in vol points (positive: rich against the
    fit). ``dollars_per_contract`` = Black-76 vega (per 1.00 vol, discounted) x vol difference x
    multiplier, the mid's premium over the fitted price to first order (positive: rich).
    ``fit_outside_spread``: the fitted price lies outside the quote's bid-ask, i.e. the quote
    itself, not just its mid, disagrees with the smile.
    """

    rows: np.ndarray
    expiry: np.ndarray
    strike: np.ndarray
    is_call: np.ndarray
    market_vol: np.ndarray
    fitted_vol: np.ndarray
    vol_diff_points: np.ndarray
    dollars_per_contract: np.ndarray
    fit_outside_spread: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def mispriced_strikes(surface: VolSurface, chain: OptionChain, chain_iv: ChainIV, *,
                      min_vol_points: float = 1.0, min_dollars: float = 0.0,
                      only_fitted_quotes: bool = True) -> MispricedQuotes:
    """Quotes of fitted expiries whose |mid IV - fitted IV| >= ``min_vol_points`` and whose
    |dollar difference| per contract >= ``min_dollars``.

    With ``only_fitted_quotes`` (default) only the usable quotes the smiles were fitted to are
    judged; otherwise every row with a valid mid IV in a fitted expiry within its quoted k range.
    """
    if min_vol_points < 0 or min_dollars < 0:
        raise ValueError("thresholds must be non-negative")
    expiry_days = chain.expiry.astype("datetime64[D]")
    candidates, fitted_vol = [], []
    for s in surface.fitted_slices:
        if only_fitted_quotes:
            rows = s.rows
        else:
            k = np.log(chain.strike / s.forward)
            rows = np.flatnonzero((expiry_days == s.expiry) & (chain_iv.reason == IVFailure.OK)
                                  & (k >= s.k_range[0]) & (k <= s.k_range[1]))
        candidates.append(rows)
        fitted_vol.append(s.implied_vol(chain.strike[rows]))
    rows = np.concatenate(candidates) if candidates else np.empty(0, dtype=int)
    model = np.concatenate(fitted_vol) if fitted_vol else np.empty(0)
    market = chain_iv.vol[rows]
    diff_points = 100.0 * (market - model)
    t = chain.time_to_expiry[rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = -np.log(chain_iv.discount[rows]) / t
    args = (chain_iv.forward[rows], chain.strike[rows], t, rate, model, chain.is_call[rows])
    vega = black76_greeks(*args).vega
    dollars = vega * (market - model) * chain.multiplier
    fitted_price = black76_price(*args)
    outside = (fitted_price < chain.bid[rows]) | (fitted_price > chain.ask[rows])
    keep = (np.abs(diff_points) >= min_vol_points) & (np.abs(dollars) >= min_dollars) & np.isfinite(dollars)
    order = np.argsort(-np.abs(dollars[keep]), kind="stable")
    pick = np.flatnonzero(keep)[order]
    return MispricedQuotes(
        rows=rows[pick], expiry=expiry_days[rows[pick]], strike=chain.strike[rows[pick]],
        is_call=chain.is_call[rows[pick]], market_vol=market[pick], fitted_vol=model[pick],
        vol_diff_points=diff_points[pick], dollars_per_contract=dollars[pick], fit_outside_spread=outside[pick],
    )
