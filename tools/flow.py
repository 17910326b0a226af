"""Options-flow instruments: dealer gamma/vanna/charm exposure, zero-gamma level, put/call
ratios, max pain, OpEx pinning strikes and unusual activity.

Everything here is a pure function over the arrays of one chain (one element per option row:
strike, is_call, open_interest, volume, iv, t) plus spot, carry and multiplier. Carry (`rate`,
`div_yield`, continuously compounded decimals) is one number or one value per row, e.g. each
expiry's rate and yield implied by put-call parity. `analyze_chain_flow` is the one convenience
entry point that takes an `OptionChain`.

Dealer sign convention (SPEC)
-----------------------------
Customers are assumed to buy calls from and sell puts to dealers, so dealers are modelled as
LONG the calls and SHORT the puts in open interest: call rows count +, put rows count -. The
same sign applies to gamma, vanna and charm exposure. Positive total GEX means dealers are long
gamma (they sell rallies and buy dips, damping moves); negative means they chase moves.

Units
-----
* GEX: dollars of underlying delta-notional that dealers must trade per 1 % move in spot,
  Gamma * OI * multiplier * S^2 * 0.01 per row (Gamma per share per $1 of spot).
* Vanna exposure: dollars of delta-notional per +1 vol point (0.01 of sigma),
  vanna * OI * multiplier * S * 0.01 (vanna = d delta / d sigma, per 1.00 of vol).
* Charm exposure: dollars of delta-notional per calendar day of time passing,
  charm / 365 * OI * multiplier * S (charm = d delta / dt per year of time passing).

Rows that cannot carry an exposure (implied vol missing or <= 0, expired t <= 0, open interest
missing) are left out and counted in `rows_excluded` with a note saying why; they are never
silently treated as zero-vol or zero-gamma options.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
from scipy.optimize import brentq

from tools.chain import OptionChain
from tools.pricing import _pdf, bsm_gamma, bsm_greeks

DAYS_PER_YEAR = 365.0
ONE_PERCENT = 0.01
ONE_VOL_POINT = 0.01
# Upper bound on spots x options elements per block of the zero-gamma sweep: bsm_greeks keeps
# about twenty temporaries of this size alive, so 2.5e5 keeps a block near 50 MB.
_SWEEP_BLOCK_ELEMENTS = 250_000


# ----------------------------------------------------------------------------- input checks


def _as_float(name: str, a, n: int | None) -> np.ndarray:
    arr = np.asarray(a, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} rows, strike has {n}")
    return arr


def _check_spot(spot: float) -> float:
    spot = float(spot)
    if not np.isfinite(spot) or spot <= 0:
        raise ValueError(f"spot must be a positive finite number, got {spot}")
    return spot


def _check_non_negative(name: str, a: np.ndarray) -> None:
    if np.any(a < 0):  # NaN compares False: missing values are handled by the callers
        raise ValueError(f"{name} has negative values; contract counts cannot be negative")


@dataclass(frozen=True)
class _Rows:
    """Validated chain rows that can carry an exposure, and what was left out."""

    strike: np.ndarray
    sign: np.ndarray  # +1 call (dealer long), -1 put (dealer short)
    open_interest: np.ndarray
    iv: np.ndarray
    t: np.ndarray
    rate: np.ndarray
    div_yield: np.ndarray
    rows_excluded: int
    notes: tuple[str, ...]


def _exposure_rows(strike, is_call, open_interest, iv, t, rate=0.0, div_yield=0.0) -> _Rows:
    strike = _as_float("strike", strike, None)
    n = len(strike)
    is_call = np.asarray(is_call, dtype=bool)
    if is_call.shape != (n,):
        raise ValueError(f"is_call has shape {is_call.shape}, strike has {n} rows")
    oi = _as_float("open_interest", open_interest, n)
    iv = _as_float("iv", iv, n)
    t = _as_float("t", t, n)
    # Carry may be one number or one per row (e.g. each expiry's rate implied by parity).
    rate = np.broadcast_to(np.asarray(rate, dtype=float), (n,))
    div_yield = np.broadcast_to(np.asarray(div_yield, dtype=float), (n,))
    _check_non_negative("open_interest", oi)
    if np.any(strike <= 0):
        raise ValueError("strike has non-positive values")

    notes = []
    reasons = [
        (~np.isfinite(strike), "strike missing"),
        (~np.isfinite(oi), "open interest missing"),
        (~(np.isfinite(iv) & (iv > 0)), "implied vol missing or not positive"),
        (~(np.isfinite(t) & (t > 0)), "expired (t <= 0) or expiry missing"),
        (~(np.isfinite(rate) & np.isfinite(div_yield)), "rate or dividend yield missing"),
    ]
    bad = np.zeros(n, dtype=bool)
    for mask, why in reasons:
        new = mask & ~bad
        if new.any():
            notes.append(f"{int(new.sum())} rows excluded: {why}")
        bad |= mask
    # Zero open interest carries no exposure; dropping it is exact and keeps the sweep small.
    keep = ~bad & (oi > 0)
    return _Rows(
        strike=strike[keep], sign=np.where(is_call[keep], 1.0, -1.0), open_interest=oi[keep],
        iv=iv[keep], t=t[keep], rate=rate[keep], div_yield=div_yield[keep],
        rows_excluded=int(bad.sum()), notes=tuple(notes),
    )


# ----------------------------------------------------------------------------- inputs


def otm_side_iv(strike, is_call, expiry, iv, forward, root=None) -> np.ndarray:
    """Each row's IV replaced by the out-of-the-money side's IV at the same (root, expiry, strike).

    Under put-call parity a call and a put on one strike share one implied vol, and the OTM
    quote is the one that pins it: vendors' IVs for in-the-money rows are often junk (the SPX
    file of 2022-02-04 shows 0.02 on 2 %-ITM puts, which would zero out their gamma). `forward`
    (per row or scalar; spot if no forward is known) decides which side is OTM. A row keeps its
    own IV when its strike has no OTM IV.
    """
    strike = _as_float("strike", strike, None)
    n = len(strike)
    is_call = np.asarray(is_call, dtype=bool)
    iv = _as_float("iv", iv, n)
    forward = np.broadcast_to(np.asarray(forward, dtype=float), (n,))
    root_code = np.zeros(n, dtype=np.int64) if root is None else np.unique(np.asarray(root), return_inverse=True)[1]
    expiry_code = np.asarray(expiry).astype("datetime64[D]").astype(np.int64)
    expiry_code = np.unique(expiry_code, return_inverse=True)[1].ravel()
    strike_code = np.unique(strike, return_inverse=True)[1].ravel()
    root_code = root_code.ravel()
    # One integer per (root, expiry, strike): the codes are dense, so the product cannot collide.
    key = (root_code * (expiry_code.max(initial=0) + 1) + expiry_code) * (strike_code.max(initial=0) + 1) + strike_code
    _, group = np.unique(key, return_inverse=True)
    group = group.ravel()
    otm = np.where(is_call, strike >= forward, strike <= forward)
    donor = otm & np.isfinite(iv)
    group_iv = np.full(group.max() + 1 if n else 0, np.nan)
    group_iv[group[donor]] = iv[donor]
    return np.where(np.isfinite(group_iv[group]), group_iv[group], iv)


# ----------------------------------------------------------------------------- exposures


@dataclass(frozen=True)
class ExposureByStrike:
    """Dealer exposure summed per strike (all expiries together), dealer sign convention."""

    strikes: np.ndarray  # unique strikes, ascending
    exposure: np.ndarray  # per strike, in `unit`
    total: float  # sum over all rows, in `unit`
    unit: str
    rows_used: int
    rows_excluded: int
    notes: tuple[str, ...] = ()


def _by_strike(strike: np.ndarray, per_row: np.ndarray, unit: str, rows: _Rows) -> ExposureByStrike:
    strikes, inverse = np.unique(strike, return_inverse=True)
    exposure = np.bincount(inverse, weights=per_row, minlength=len(strikes))
    return ExposureByStrike(
        strikes=strikes, exposure=exposure, total=float(per_row.sum()), unit=unit,
        rows_used=len(strike), rows_excluded=rows.rows_excluded, notes=rows.notes,
    )


def _greeks(rows: _Rows, spot):
    return bsm_greeks(spot, rows.strike, rows.t, rows.rate, rows.div_yield, rows.iv, rows.sign > 0)


def _gex_per_row(rows: _Rows, spot, multiplier) -> np.ndarray:
    gamma = bsm_gamma(spot, rows.strike, rows.t, rows.rate, rows.div_yield, rows.iv)
    spot = np.asarray(spot, dtype=float)
    return rows.sign * gamma * rows.open_interest * multiplier * spot**2 * ONE_PERCENT


def gamma_exposure_by_strike(
    strike, is_call, open_interest, iv, t, spot: float, *,
    rate=0.0, div_yield=0.0, multiplier: float = 100.0,
) -> ExposureByStrike:
    """Dealer gamma exposure per strike: sum of sign * Gamma * OI * multiplier * S^2 * 0.01.

    Dollars of delta-notional dealers trade per 1 % move of spot; calls +, puts - (see module
    docstring). Gamma is Black-Scholes-Merton at each row's implied vol and time to expiry.
    """
    spot = _check_spot(spot)
    rows = _exposure_rows(strike, is_call, open_interest, iv, t, rate, div_yield)
    per_row = _gex_per_row(rows, spot, multiplier)
    return _by_strike(rows.strike, per_row, "USD per 1% move", rows)


def total_gamma_exposure(
    strike, is_call, open_interest, iv, t, spot: float, *,
    rate=0.0, div_yield=0.0, multiplier: float = 100.0,
) -> float:
    """Total dealer GEX in dollars per 1 % move (sum of `gamma_exposure_by_strike`)."""
    return gamma_exposure_by_strike(
        strike, is_call, open_interest, iv, t, spot, rate=rate, div_yield=div_yield, multiplier=multiplier
    ).total


def vanna_exposure(
    strike, is_call, open_interest, iv, t, spot: float, *,
    rate=0.0, div_yield=0.0, multiplier: float = 100.0,
) -> ExposureByStrike:
    """Dealer vanna exposure: sign * vanna * OI * multiplier * S * 0.01.

    Dollars of delta-notional dealers gain per +1 vol point rise in every option's IV (they
    must sell that much underlying to stay hedged when it is positive). Calls +, puts -.
    """
    spot = _check_spot(spot)
    rows = _exposure_rows(strike, is_call, open_interest, iv, t, rate, div_yield)
    vanna = _greeks(rows, spot).vanna
    per_row = rows.sign * vanna * rows.open_interest * multiplier * spot * ONE_VOL_POINT
    return _by_strike(rows.strike, per_row, "USD delta per +1 vol point", rows)


def charm_exposure(
    strike, is_call, open_interest, iv, t, spot: float, *,
    rate=0.0, div_yield=0.0, multiplier: float = 100.0,
) -> ExposureByStrike:
    """Dealer charm exposure: sign * charm / 365 * OI * multiplier * S.

    Dollars of delta-notional dealers gain per calendar day that passes with spot and vol
    unchanged (charm = d delta / dt per year of time passing). Calls +, puts -.
    """
    spot = _check_spot(spot)
    rows = _exposure_rows(strike, is_call, open_interest, iv, t, rate, div_yield)
    charm = _greeks(rows, spot).charm
    per_row = rows.sign * charm / DAYS_PER_YEAR * rows.open_interest * multiplier * spot
    return _by_strike(rows.strike, per_row, "USD delta per calendar day", rows)


# ----------------------------------------------------------------------------- zero gamma


def gamma_exposure_profile(
    strike, is_call, open_interest, iv, t, spots, *,
    rate=0.0, div_yield=0.0, multiplier: float = 100.0,
) -> np.ndarray:
    """Total dealer GEX (USD per 1 % move) at each hypothetical spot in `spots`.

    Every option's gamma is recomputed at each spot with its implied vol held fixed (sticky
    strike) and its time to expiry unchanged: a 2-D (spots x options) evaluation, in blocks of
    spots so memory stays bounded on large chains.
    """
    spots = np.atleast_1d(np.asarray(spots, dtype=float))
    if np.any(~np.isfinite(spots) | (spots <= 0)):
        raise ValueError("hypothetical spots must be positive and finite")
    rows = _exposure_rows(strike, is_call, open_interest, iv, t, rate, div_yield)
    return _profile(rows, spots, multiplier)


class _GammaSweep:
    """Total GEX of fixed rows at any hypothetical spots, for sweeps and root finding.

    The same arithmetic as `_gex_per_row` (so the same numbers, bit for bit), with the parts that
    do not depend on spot (vol * sqrt(t), the carry, exp(-q t)) computed once per chain rather
    than once per spot, and without `bsm_gamma`'s edge-case masks: `_exposure_rows` has already
    left out every row they would catch (t <= 0, vol <= 0, a missing input) and the spots are
    positive and finite."""

    def __init__(self, rows: _Rows, multiplier: float) -> None:
        self.rows, self.multiplier = rows, multiplier
        self.sd = rows.iv * np.sqrt(rows.t)
        self.carry = (rows.rate - rows.div_yield) * rows.t
        self.half_sd = 0.5 * self.sd
        self.disc_q = np.exp(-rows.div_yield * rows.t)

    def __call__(self, spots: np.ndarray) -> np.ndarray:
        rows = self.rows
        n = len(rows.strike)
        if n == 0:
            return np.full(len(spots), np.nan)
        out = np.empty(len(spots))
        block = max(1, _SWEEP_BLOCK_ELEMENTS // n)
        with np.errstate(all="ignore"):
            for start in range(0, len(spots), block):
                s = spots[start:start + block, None]
                d1 = (np.log(s / rows.strike) + self.carry) / self.sd + self.half_sd
                gamma = self.disc_q * _pdf(d1) / (s * self.sd)
                per_row = rows.sign * gamma * rows.open_interest * self.multiplier * s**2 * ONE_PERCENT
                out[start:start + block] = per_row.sum(axis=1)
        return out


def _profile(rows: _Rows, spots: np.ndarray, multiplier: float) -> np.ndarray:
    return _GammaSweep(rows, multiplier)(spots)


@dataclass(frozen=True)
class ZeroGamma:
    """Where total dealer GEX changes sign as spot is swept; `level` NaN (with `reason`) if never."""

    level: float  # spot at which total GEX crosses zero, nearest to the current spot
    reason: str | None  # why `level` is NaN, else None
    crossings: np.ndarray  # every crossing found on the grid (refined), ascending
    spot_grid: np.ndarray  # the hypothetical spots swept
    gex_profile: np.ndarray  # total GEX (USD per 1 % move) at each grid spot
    rows_used: int = 0
    notes: tuple[str, ...] = ()


def zero_gamma_level(
    strike, is_call, open_interest, iv, t, spot: float, *,
    rate=0.0, div_yield=0.0, multiplier: float = 100.0,
    grid_width: float = 0.20, grid_points: int = 201,
) -> ZeroGamma:
    """The spot at which total dealer gamma exposure flips sign ("gamma flip").

    Sweeps hypothetical spot over spot * (1 +- grid_width) on `grid_points` points, recomputing
    every option's gamma at each (IV and t held fixed), finds each sign change of total GEX,
    refines it by root-finding on the exact profile between the bracketing grid points, and
    reports the crossing nearest to the current spot. No sign change on the grid gives
    level=NaN and a reason (all positive: dealers long gamma throughout the range, etc.).
    """
    spot = _check_spot(spot)
    if not (0 < grid_width < 1):
        raise ValueError(f"grid_width must be in (0, 1), got {grid_width}")
    if grid_points < 3:
        raise ValueError(f"grid_points must be at least 3, got {grid_points}")
    rows = _exposure_rows(strike, is_call, open_interest, iv, t, rate, div_yield)
    grid = spot * (1.0 + np.linspace(-grid_width, grid_width, grid_points))
    sweep = _GammaSweep(rows, multiplier)
    profile = sweep(grid)

    def result(level, reason, crossings=np.empty(0)):
        return ZeroGamma(level=level, reason=reason, crossings=crossings, spot_grid=grid,
                         gex_profile=profile, rows_used=len(rows.strike), notes=rows.notes)

    if len(rows.strike) == 0:
        return result(np.nan, "no option rows with open interest, implied vol and time to expiry")
    if not np.all(np.isfinite(profile)):
        return result(np.nan, "gamma exposure profile is not finite on the grid")

    sign = np.sign(profile)
    crossings = list(grid[sign == 0])
    brackets = np.nonzero(sign[:-1] * sign[1:] < 0)[0]

    def f(s):
        return float(sweep(np.array([s]))[0])

    for i in brackets:
        crossings.append(brentq(f, grid[i], grid[i + 1], xtol=1e-10 * spot, rtol=1e-12))
    crossings = np.unique(np.asarray(crossings, dtype=float))
    if len(crossings) == 0:
        side = "positive (dealers long gamma)" if profile[0] > 0 else "negative (dealers short gamma)"
        return result(np.nan, f"total GEX stays {side} for spot within +-{grid_width:.0%} of {spot:g}")
    nearest = crossings[np.argmin(np.abs(crossings - spot))]
    return result(float(nearest), None, crossings)


# ----------------------------------------------------------------------------- ratios, max pain


@dataclass(frozen=True)
class PutCallRatios:
    """Put/call ratios by volume and by open interest; NaN (with a note) when calls are zero."""

    volume_ratio: float
    open_interest_ratio: float
    put_volume: float
    call_volume: float
    put_open_interest: float
    call_open_interest: float
    notes: tuple[str, ...] = ()


def put_call_ratios(is_call, volume, open_interest) -> PutCallRatios:
    """Sum(put) / sum(call) of volume and of open interest, in contracts; missing rows skipped."""
    is_call = np.asarray(is_call, dtype=bool)
    n = len(is_call)
    volume = _as_float("volume", volume, n)
    oi = _as_float("open_interest", open_interest, n)
    _check_non_negative("volume", volume)
    _check_non_negative("open_interest", oi)
    notes = []
    for name, a in (("volume", volume), ("open interest", oi)):
        missing = int(np.isnan(a).sum())
        if missing:
            notes.append(f"{missing} rows with missing {name} skipped")

    def ratio(a, label):
        put, call = float(np.nansum(a[~is_call])), float(np.nansum(a[is_call]))
        if call == 0:
            notes.append(f"no call {label}: {label} put/call ratio undefined")
            return np.nan, put, call
        return put / call, put, call

    v_ratio, put_v, call_v = ratio(volume, "volume")
    oi_ratio, put_oi, call_oi = ratio(oi, "open interest")
    return PutCallRatios(v_ratio, oi_ratio, put_v, call_v, put_oi, call_oi, tuple(notes))


@dataclass(frozen=True)
class MaxPain:
    """The settlement price (among listed strikes) minimizing what option holders collect."""

    expiry: np.datetime64
    strike: float  # NaN when the expiry has no open interest
    holder_payout: float  # USD paid to holders if settled at `strike` (OI * multiplier * intrinsic)
    reason: str | None = None


def max_pain(strike, is_call, open_interest, expiry, *, multiplier: float = 100.0) -> list[MaxPain]:
    """Max-pain strike per expiry, ascending by expiry.

    For each candidate settlement P among the expiry's strikes, holders collect
    sum_calls OI max(P - K, 0) + sum_puts OI max(K - P, 0) (times multiplier); max pain is
    the P that minimizes it. Rows with missing open interest are skipped.
    """
    strike = _as_float("strike", strike, None)
    n = len(strike)
    is_call = np.asarray(is_call, dtype=bool)
    oi = _as_float("open_interest", open_interest, n)
    _check_non_negative("open_interest", oi)
    expiry = np.asarray(expiry).astype("datetime64[D]")
    if expiry.shape != (n,) or is_call.shape != (n,):
        raise ValueError("strike, is_call, open_interest and expiry must have the same length")
    out = []
    for e in np.unique(expiry):
        m = (expiry == e) & np.isfinite(oi) & np.isfinite(strike)
        k, c, w = strike[m], is_call[m], oi[m]
        if w.sum() == 0:
            out.append(MaxPain(e, np.nan, np.nan, "no open interest for this expiry"))
            continue
        candidates = np.unique(k)[:, None]
        # Calls pay max(P - K, 0), puts max(K - P, 0) = max(-(P - K), 0): one difference, its
        # sign flipped on the put columns (exact; at P = K maximum(-0.0, 0.0) gives +0.0 as before).
        payout = np.maximum((candidates - k) * np.where(c, 1.0, -1.0), 0.0) * w
        total = payout.sum(axis=1) * multiplier
        i = int(np.argmin(total))
        out.append(MaxPain(e, float(candidates[i, 0]), float(total[i])))
    return out


# ----------------------------------------------------------------------------- pinning


def is_monthly_opex(d: np.datetime64 | date) -> bool:
    """Third Friday of the month (the standard monthly expiry; holiday shifts not modelled)."""
    d = np.datetime64(d, "D").astype(object)
    return d.weekday() == 4 and 15 <= d.day <= 21


@dataclass(frozen=True)
class PinStrike:
    strike: float
    open_interest: float  # calls + puts at this strike for the expiry, contracts
    share_of_expiry_oi: float  # fraction of the expiry's total open interest
    distance: float  # (strike - spot) / spot


@dataclass(frozen=True)
class PinningStrikes:
    expiry: np.datetime64 | None  # the expiry examined; None when no live expiry exists
    strikes: tuple[PinStrike, ...]  # largest open interest first
    reason: str | None = None


def pinning_strikes(
    strike, is_call, open_interest, expiry, t, spot: float, *,
    max_distance: float = 0.05, top_n: int = 3, min_share: float = 0.02, monthly_only: bool = False,
) -> PinningStrikes:
    """Strikes with the largest combined (call + put) open interest near spot for the next expiry.

    The nearest expiry still alive (t > 0; with `monthly_only`, the nearest third-Friday
    expiry) is examined; strikes within `max_distance` (fraction of spot) whose open interest
    is at least `min_share` of that expiry's total are returned, largest first, at most `top_n`.
    """
    spot = _check_spot(spot)
    strike = _as_float("strike", strike, None)
    n = len(strike)
    oi = _as_float("open_interest", open_interest, n)
    _check_non_negative("open_interest", oi)
    t = _as_float("t", t, n)
    expiry = np.asarray(expiry).astype("datetime64[D]")
    if expiry.shape != (n,):
        raise ValueError("expiry must have one value per row")
    live = np.isfinite(t) & (t > 0)
    if monthly_only:
        live &= np.array([is_monthly_opex(e) for e in expiry], dtype=bool)
    if not live.any():
        return PinningStrikes(None, (), "no unexpired expiry" + (" on a monthly OpEx" if monthly_only else ""))
    nearest = expiry[live][np.argmin(t[live])]
    m = (expiry == nearest) & np.isfinite(oi)
    strikes, inverse = np.unique(strike[m], return_inverse=True)
    per_strike = np.bincount(inverse, weights=oi[m], minlength=len(strikes))
    total = per_strike.sum()
    if total == 0:
        return PinningStrikes(nearest, (), "no open interest on the nearest expiry")
    distance = (strikes - spot) / spot
    share = per_strike / total
    ok = (np.abs(distance) <= max_distance) & (share >= min_share)
    order = np.argsort(-per_strike[ok], kind="stable")[:top_n]
    picks = tuple(
        PinStrike(float(strikes[ok][i]), float(per_strike[ok][i]), float(share[ok][i]), float(distance[ok][i]))
        for i in order
    )
    return PinningStrikes(nearest, picks, None if picks else "no strike near spot holds enough open interest")


# ----------------------------------------------------------------------------- unusual activity


@dataclass(frozen=True)
class UnusualActivity:
    """Rows whose volume is unusually large; `rows` index into the chain arrays."""

    rows: np.ndarray  # int indices of flagged rows, largest volume first
    volume_to_open_interest: np.ndarray  # per chain row; inf where OI is 0 and volume > 0
    volume_to_average: np.ndarray | None  # per chain row when a history was given
    by_open_interest: np.ndarray  # bool per row: volume > oi_multiple * OI
    by_average: np.ndarray  # bool per row: volume > average_multiple * average volume


def unusual_activity(
    volume, open_interest, *, volume_history=None,
    oi_multiple: float = 1.5, average_multiple: float = 3.0, min_volume: float = 500.0,
) -> UnusualActivity:
    """Flag rows trading at least `min_volume` contracts and either more than `oi_multiple` x
    their open interest (fresh positioning) or, when `volume_history` (days x rows, contracts;
    NaN where unknown) is given, more than `average_multiple` x their average daily volume.
    """
    volume = _as_float("volume", volume, None)
    n = len(volume)
    oi = _as_float("open_interest", open_interest, n)
    _check_non_negative("volume", volume)
    _check_non_negative("open_interest", oi)
    with np.errstate(divide="ignore", invalid="ignore"):
        to_oi = np.where(oi > 0, volume / oi, np.where(volume > 0, np.inf, np.nan))
    big = np.nan_to_num(volume, nan=0.0) >= min_volume
    by_oi = big & (to_oi > oi_multiple)
    to_avg = None
    by_avg = np.zeros(n, dtype=bool)
    if volume_history is not None:
        hist = np.asarray(volume_history, dtype=float)
        if hist.ndim != 2 or hist.shape[1] != n:
            raise ValueError(f"volume_history must be (days, {n}), got {hist.shape}")
        _check_non_negative("volume_history", hist)
        with np.errstate(divide="ignore", invalid="ignore"):
            seen = np.isfinite(hist).sum(axis=0)
            avg = np.where(seen > 0, np.nansum(hist, axis=0) / np.maximum(seen, 1), np.nan)
            to_avg = np.where(avg > 0, volume / avg, np.where((volume > 0) & (avg == 0), np.inf, np.nan))
        by_avg = big & (to_avg > average_multiple)
    flagged = np.nonzero(by_oi | by_avg)[0]
    flagged = flagged[np.argsort(-volume[flagged], kind="stable")]
    return UnusualActivity(flagged, to_oi, to_avg, by_oi, by_avg)


# ----------------------------------------------------------------------------- chain entry point


@dataclass(frozen=True)
class FlowSummary:
    gamma: ExposureByStrike
    zero_gamma: ZeroGamma
    vanna: ExposureByStrike
    charm: ExposureByStrike
    put_call: PutCallRatios
    max_pain: list[MaxPain]
    pinning: PinningStrikes
    unusual: UnusualActivity
    data_quality: list[str] = field(default_factory=list)


def analyze_chain_flow(chain: OptionChain, iv: np.ndarray | None = None, *,
                       volume_history: np.ndarray | None = None) -> FlowSummary:
    """All flow instruments on one chain, at the chain's spot, rate and dividend yield.

    `iv` (per row) defaults to the vendor IV with each strike's OTM-side value used for both
    rights (`otm_side_iv`, OTM judged against spot); rows without any IV are left out.
    """
    notes: list[str] = []
    if iv is None:
        if chain.vendor_iv is None:
            iv = np.full(len(chain), np.nan)
            notes.append("no implied vols given and the chain has no vendor IV: exposures empty")
        else:
            iv = otm_side_iv(chain.strike, chain.is_call, chain.expiry, chain.vendor_iv, chain.spot, chain.root)
            notes.append("exposures use the vendor's implied vols (OTM side per strike)")
    t = chain.time_to_expiry
    common = dict(rate=chain.rate, div_yield=chain.dividend_yield, multiplier=chain.multiplier)
    args = (chain.strike, chain.is_call, chain.open_interest, iv, t, chain.spot)
    gamma = gamma_exposure_by_strike(*args, **common)
    notes.extend(gamma.notes)
    return FlowSummary(
        gamma=gamma,
        zero_gamma=zero_gamma_level(*args, **common),
        vanna=vanna_exposure(*args, **common),
        charm=charm_exposure(*args, **common),
        put_call=put_call_ratios(chain.is_call, chain.volume, chain.open_interest),
        max_pain=max_pain(chain.strike, chain.is_call, chain.open_interest, chain.expiry,
                          multiplier=chain.multiplier),
        pinning=pinning_strikes(chain.strike, chain.is_call, chain.open_interest, chain.expiry, t, chain.spot),
        unusual=unusual_activity(chain.volume, chain.open_interest, volume_history=volume_history),
        data_quality=notes,
    )
