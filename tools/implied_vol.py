"""Implied volatility for whole chains at once (Black-76 and BSM), with a reason wherever it fails.

Method (Jäckel, "Let's Be Rational", Wilmott 2015), vectorized over arrays:
1. Normalise: beta = undiscounted price / sqrt(F K), x = ln(F/K). An in-the-money price is mapped
   to its out-of-the-money counterpart by put-call parity (subtract the forward intrinsic value),
   so the solver only ever inverts b(x, s) with x <= 0, where there is no cancellation.
2. Initial guess: Jäckel's four-branch rational-cubic interpolation of s(beta) around the
   inflection point s_c = sqrt(2|x|), using transformed maps in the extreme branches; it is already
   accurate to a few digits everywhere.
3. Householder third-order steps (using the analytic db/ds, d2b/ds2, d3b/ds3) on the branch's
   objective: ln b in the lower wing, ln(b_max - b) near the maximum, b itself in between.
   Every iterate is kept inside a bracket [s_left, s_right] that tightens as b is evaluated; an
   iterate that leaves it (or oscillates) is replaced by bisection. All rows iterate together,
   converged rows are masked out.

Reasons (`IVFailure`), first match wins:
* BAD_INPUT: any NaN/inf input, forward/strike/t <= 0 (expired), or price < 0.
* ABOVE_MAXIMUM: price >= the no-arbitrage maximum (D F for a call, D K for a put).
* BELOW_INTRINSIC: price below the discounted forward intrinsic value D max(+-(F-K), 0).
* ZERO_TIME_VALUE: price equals intrinsic to within rounding (time value <= ZERO_TIME_VALUE_FRACTION
  of the price, or an OTM price of 0, or a normalised time value below the smallest normal float):
  every vol below some level reprices it, so none is reported.
* NO_CONVERGENCE: the iteration did not converge within max_iterations (never seen in practice:
  two steps from Jäckel's guess reach machine precision; kept so a stalled row cannot pass).
* REJECTED_QUOTE (chain_implied_vol only): the quote failed tools.quotes validation.
Where the reason is not OK, vol is NaN. Vols are annualised decimals (t in years).
Accuracy: solved vols reprice the input to ~1e-12 relative (checked against vollib's Let's Be
Rational at 1e-10 in the tests). Throughput ~0.9-1M rows/s on one core (numpy only).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy.special import ndtr, ndtri

from tools.chain import OptionChain
from tools.pricing import normalised_black_otm, normalised_vega
from tools.quotes import QuoteProblem, quote_problems

_EPS = np.finfo(float).eps
_DBL_MIN = np.finfo(float).tiny
_DBL_MAX = np.finfo(float).max
_SQRT_DBL_MAX = np.sqrt(_DBL_MAX)
_SQRT_3 = 1.7320508075688772
_SQRT_ONE_OVER_3 = 0.5773502691896257
_TWO_PI = 6.283185307179586
_TWO_PI_OVER_SQRT_27 = 1.2091995761561452
_PI_OVER_6 = 0.5235987755982988
_SQRT_PI_OVER_2 = 1.2533141373155003
_INV_SQRT_2PI = 0.3989422804014327
_R_MIN = -(1.0 - np.sqrt(_EPS))  # rational-cubic control parameter limits (Delbourgo-Gregory)
_R_MAX = 2.0 / (_EPS * _EPS)

# Time value smaller than this fraction of the price is indistinguishable from rounding of the
# price itself (a deep in-the-money option): the vol it implies would be noise.
ZERO_TIME_VALUE_FRACTION = 1e-12
# Accept a solution when the normalised OTM price is reproduced to this relative accuracy
# (b itself is accurate to ~1e-13 relative even in the far wings) ...
PRICE_TOLERANCE = 1e-12
# ... or after a Householder step smaller than this fraction of s (see _solve_normalised).
CONVERGED_STEP = 1e-6
MAX_ITERATIONS = 12
SOLVE_BLOCK = 32768


class IVFailure(IntEnum):
    OK = 0
    BAD_INPUT = 1
    BELOW_INTRINSIC = 2
    ABOVE_MAXIMUM = 3
    ZERO_TIME_VALUE = 4
    NO_CONVERGENCE = 5
    REJECTED_QUOTE = 6  # chain_implied_vol only: the quote failed validation (see quote_problem)


@dataclass(frozen=True)
class IVResult:
    vol: np.ndarray  # annualised implied vol, NaN where reason != OK
    reason: np.ndarray  # int8 IVFailure codes


@dataclass(frozen=True)
class ChainIV:
    """Per-row implied vols of an OptionChain (rows in the chain's order)."""

    vol: np.ndarray  # NaN where reason != OK
    reason: np.ndarray  # int8 IVFailure codes
    forward: np.ndarray  # the Black-76 forward used for the row's expiry
    used_otm_side: np.ndarray  # True: the row's own quote is the OTM side and was inverted directly;
    # False: the row is in the money and its price was mapped to the OTM counterpart by parity
    price: np.ndarray  # the mid price inverted (NaN for rejected quotes)
    quote_problem: np.ndarray  # int8 tools.quotes.QuoteProblem codes
    discount: np.ndarray  # discount factor D = exp(-r t) used for the row


# ----------------------------------------------------------------------------- rational cubic
# Delbourgo-Gregory shape-preserving rational cubic, vectorized (Jäckel's formulation).


def _is_zero(a):
    return np.abs(a) < _DBL_MIN


def _rc_param_left(x_l, x_r, y_l, y_r, d_l, d_r, second_l):
    h = x_r - x_l
    numerator = 0.5 * h * second_l + (d_r - d_l)
    denominator = (y_r - y_l) / h - d_l
    r = np.where(_is_zero(denominator), np.where(numerator > 0, _R_MAX, _R_MIN), numerator / denominator)
    return np.where(_is_zero(numerator), 0.0, r)


def _rc_param_right(x_l, x_r, y_l, y_r, d_l, d_r, second_r):
    h = x_r - x_l
    numerator = 0.5 * h * second_r + (d_r - d_l)
    denominator = d_r - (y_r - y_l) / h
    r = np.where(_is_zero(denominator), np.where(numerator > 0, _R_MAX, _R_MIN), numerator / denominator)
    return np.where(_is_zero(numerator), 0.0, r)


def _rc_min_param(d_l, d_r, slope, prefer_shape: bool):
    monotonic = (d_l * slope >= 0) & (d_r * slope >= 0)
    convex = (d_l <= slope) & (slope <= d_r)
    concave = (d_l >= slope) & (slope >= d_r)
    d_r_m_d_l = d_r - d_l
    d_r_m_s = d_r - slope
    s_m_d_l = slope - d_l
    r1 = np.where(monotonic & ~_is_zero(slope), (d_r + d_l) / slope,
                  np.where(monotonic & prefer_shape, _R_MAX, -_DBL_MAX))
    curvature_ok = ~(_is_zero(s_m_d_l) | _is_zero(d_r_m_s))
    r2_convex = np.where(curvature_ok, np.maximum(np.abs(d_r_m_d_l / d_r_m_s), np.abs(d_r_m_d_l / s_m_d_l)),
                         _R_MAX if prefer_shape else -_DBL_MAX)
    r2 = np.where(convex | concave, r2_convex, np.where(monotonic & prefer_shape, _R_MAX, -_DBL_MAX))
    r = np.maximum(_R_MIN, np.maximum(r1, r2))
    return np.where(monotonic | convex | concave, r, _R_MIN)


def _convex_rc_param_left(x_l, x_r, y_l, y_r, d_l, d_r, second_l, prefer_shape):
    r = _rc_param_left(x_l, x_r, y_l, y_r, d_l, d_r, second_l)
    return np.maximum(r, _rc_min_param(d_l, d_r, (y_r - y_l) / (x_r - x_l), prefer_shape))


def _convex_rc_param_right(x_l, x_r, y_l, y_r, d_l, d_r, second_r, prefer_shape):
    r = _rc_param_right(x_l, x_r, y_l, y_r, d_l, d_r, second_r)
    return np.maximum(r, _rc_min_param(d_l, d_r, (y_r - y_l) / (x_r - x_l), prefer_shape))


def _rc_interpolate(x, x_l, x_r, y_l, y_r, d_l, d_r, r):
    h = x_r - x_l
    t = (x - x_l) / h
    omt = 1.0 - t
    t2, omt2 = t * t, omt * omt
    cubic = ((y_r * t2 * t + (r * y_r - h * d_r) * t2 * omt + (r * y_l + h * d_l) * t * omt2 + y_l * omt2 * omt)
             / (1.0 + (r - 3.0) * t * omt))
    value = np.where(r >= _R_MAX, y_r * t + y_l * omt, cubic)
    return np.where(np.abs(h) <= 0, 0.5 * (y_l + y_r), value)


# ----------------------------------------------------------------------------- transformed maps


def _lower_map(x, s):
    """Jäckel's f_lower(s) and df/dbeta, d2f/dbeta2 (the map that linearises the lower wing)."""
    ax = np.abs(x)
    z = _SQRT_ONE_OVER_3 * ax / s
    y = z * z
    s2 = s * s
    big_phi = ndtr(-z)
    small_phi = _INV_SQRT_2PI * np.exp(-0.5 * z * z)
    fpp = (_PI_OVER_6 * y / (s2 * s) * big_phi
           * (8.0 * _SQRT_3 * s * ax + (3.0 * s2 * (s2 - 8.0) - 8.0 * x * x) * big_phi / small_phi)
           * np.exp(2.0 * y + 0.25 * s2))
    phi2 = big_phi * big_phi
    fp = _TWO_PI * y * phi2 * np.exp(y + 0.125 * s2)
    f = _TWO_PI_OVER_SQRT_27 * ax * (phi2 * big_phi)
    return f, fp, fpp


def _inverse_lower_map(x, f):
    return np.abs(x / (_SQRT_3 * ndtri(np.cbrt(f / (_TWO_PI_OVER_SQRT_27 * np.abs(x))))))


def _upper_map(x, s):
    f = ndtr(-0.5 * s)
    w = (x / s) ** 2
    fp = -0.5 * np.exp(0.5 * w)
    fpp = _SQRT_PI_OVER_2 * np.exp(w + 0.125 * s * s) * w / s
    return f, fp, fpp


# ----------------------------------------------------------------------------- the solver

_PLAIN, _LOWER_LOG, _UPPER_LOG = 0, 1, 2


def _initial_guess(beta, x):
    """s0, bracket and objective per row, for x <= 0 and 0 < beta < exp(x/2) (1-d arrays)."""
    n = beta.shape[0]
    b_max = np.exp(0.5 * x)
    s_c = np.sqrt(np.abs(2.0 * x))
    b_c = normalised_black_otm(x, s_c)
    v_c = normalised_vega(x, s_c)
    s = np.empty(n)
    s_left = np.full(n, _DBL_MIN)
    s_right = np.full(n, _DBL_MAX)
    objective = np.full(n, _PLAIN, dtype=np.int8)

    low = beta < b_c
    # The second node: one Newton step from s_c towards b = 0 (low rows) or b = b_max (high rows),
    # evaluated for all rows in one pass.
    s_node = np.where(low, s_c - b_c / v_c, np.where(v_c > _DBL_MIN, s_c + (b_max - b_c) / v_c, s_c))
    b_node = normalised_black_otm(x, s_node)
    if low.any():
        i = np.flatnonzero(low)
        xi, bi, sc, bc, vc = x[i], beta[i], s_c[i], b_c[i], v_c[i]
        s_l, b_l = s_node[i], b_node[i]
        wing = bi < b_l
        if wing.any():
            j = i[wing]
            xw, bw, slw, blw = xi[wing], bi[wing], s_l[wing], b_l[wing]
            f_l, fp_l, fpp_l = _lower_map(xw, slw)
            r_ll = _convex_rc_param_right(0.0, blw, 0.0, f_l, 1.0, fp_l, fpp_l, True)
            f = _rc_interpolate(bw, 0.0, blw, 0.0, f_l, 1.0, fp_l, r_ll)
            tt = bw / blw
            f = np.where(f > 0, f, (f_l * tt + blw * (1.0 - tt)) * tt)  # roundoff guard for |x| huge
            s[j] = _inverse_lower_map(xw, f)
            s_right[j] = slw
            objective[j] = _LOWER_LOG
        mid = ~wing
        if mid.any():
            j = i[mid]
            xm, bm, slm, blm, scm, bcm, vcm = xi[mid], bi[mid], s_l[mid], b_l[mid], sc[mid], bc[mid], vc[mid]
            v_l = normalised_vega(xm, slm)
            r_lm = _convex_rc_param_right(blm, bcm, slm, scm, 1.0 / v_l, 1.0 / vcm, 0.0, False)
            s[j] = _rc_interpolate(bm, blm, bcm, slm, scm, 1.0 / v_l, 1.0 / vcm, r_lm)
            s_left[j] = slm
            s_right[j] = scm

    high = ~low
    if high.any():
        i = np.flatnonzero(high)
        xi, bi, sc, bc, vc, bmax = x[i], beta[i], s_c[i], b_c[i], v_c[i], b_max[i]
        s_h, b_h = s_node[i], b_node[i]
        mid = bi <= b_h
        if mid.any():
            j = i[mid]
            xm, bm, shm, bhm, scm, bcm, vcm = xi[mid], bi[mid], s_h[mid], b_h[mid], sc[mid], bc[mid], vc[mid]
            v_h = normalised_vega(xm, shm)
            r_hm = _convex_rc_param_left(bcm, bhm, scm, shm, 1.0 / vcm, 1.0 / v_h, 0.0, False)
            s[j] = _rc_interpolate(bm, bcm, bhm, scm, shm, 1.0 / vcm, 1.0 / v_h, r_hm)
            s_left[j] = scm
            s_right[j] = shm
        top = ~mid
        if top.any():
            j = i[top]
            xt, bt, sht, bht, bmt = xi[top], bi[top], s_h[top], b_h[top], bmax[top]
            f_h, fp_h, fpp_h = _upper_map(xt, sht)
            finite_curvature = (fpp_h > -_SQRT_DBL_MAX) & (fpp_h < _SQRT_DBL_MAX)
            r_hh = _convex_rc_param_left(bht, bmt, f_h, 0.0, fp_h, -0.5, fpp_h, True)
            f = np.where(finite_curvature, _rc_interpolate(bt, bht, bmt, f_h, 0.0, fp_h, -0.5, r_hh), -_DBL_MAX)
            h = bmt - bht
            tt = (bt - bht) / h
            # Quadratic through f(b_h), f(b_max) = 0, f'(b_max) = -1/2 when the cubic misbehaves.
            f = np.where(f > 0, f, (f_h * (1.0 - tt) + 0.5 * h * tt) * (1.0 - tt))
            s[j] = -2.0 * ndtri(f)
            s_left[j] = sht
            objective[j] = np.where(bt > 0.5 * bmt, _UPPER_LOG, _PLAIN)
    return s, s_left, s_right, objective


def _householder_factor(newton, halley, hh3):
    return (1.0 + 0.5 * halley * newton) / (1.0 + newton * (halley + hh3 * newton / 6.0))


def _step(beta, x, s, b, bp, objective, b_max):
    """Householder-3 step ds on each row's objective (Jäckel's formulas), and where it is undefined."""
    h = x / s
    b_halley = h * h / s - s / 4.0
    b_hh3 = b_halley * b_halley - 3.0 * (h / s) ** 2 - 0.25
    # Plain objective g = b - beta.
    newton = (beta - b) / bp
    ds = newton * _householder_factor(newton, b_halley, b_hh3)
    degenerate = bp <= 0
    lower = np.flatnonzero(objective == _LOWER_LOG)
    if lower.size:
        # Lower wing: g = 1/ln(b) - 1/ln(beta), nearly linear in s there.
        bl, bpl, bh, bh3 = b[lower], bp[lower], b_halley[lower], b_hh3[lower]
        ln_b, ln_beta = np.log(bl), np.log(beta[lower])
        bpob = bpl / bl
        newton_l = (ln_beta - ln_b) * ln_b / ln_beta / bpob
        halley_l = bh - bpob * (1.0 + 2.0 / ln_b)
        hh3_l = (bh3 + 2.0 * bpob * bpob * (1.0 + 3.0 / ln_b * (1.0 + 1.0 / ln_b))
                 - 3.0 * bh * bpob * (1.0 + 2.0 / ln_b))
        ds[lower] = newton_l * _householder_factor(newton_l, halley_l, hh3_l)
        degenerate[lower] = (bl <= 0) | (bpl <= 0)
    upper = np.flatnonzero(objective == _UPPER_LOG)
    if upper.size:
        # Near the maximum: g = ln((b_max - beta) / (b_max - b)).
        bu, bpu, bh, bh3, bmu = b[upper], bp[upper], b_halley[upper], b_hh3[upper], b_max[upper]
        gap = bmu - bu
        g = np.log((bmu - beta[upper]) / gap)
        gp = bpu / gap
        newton_u = -g / gp
        halley_u = bh + gp
        hh3_u = bh3 + gp * (2.0 * gp + 3.0 * bh)
        ds[upper] = newton_u * _householder_factor(newton_u, halley_u, hh3_u)
        degenerate[upper] = (bu >= bmu) | (bpu <= _DBL_MIN)
    return ds, degenerate | ~np.isfinite(ds)


def _solve_normalised(beta, x, max_iterations=MAX_ITERATIONS):
    """s = sigma sqrt(t) with b(x, s) = beta, for 1-d x <= 0, 0 < beta < exp(x/2). Returns (s, ok)."""
    n = beta.shape[0]
    b_max = np.exp(0.5 * x)
    s, s_left, s_right, objective = _initial_guess(beta, x)
    ok = np.zeros(n, dtype=bool)
    active = np.arange(n)
    ds_prev = np.zeros(n)
    reversals = np.zeros(n, dtype=np.int8)
    for iteration in range(max_iterations):
        if active.size == 0:
            break
        a = active
        sa, sl, sr = s[a], s_left[a], s_right[a]
        if iteration > 0:
            # Safeguard: an iterate outside the bracket, or three direction reversals, bisects.
            bisect = (reversals[a] >= 3) | ~((sa > sl) & (sa < sr)) | ~np.isfinite(sa)
            sa = np.where(bisect, 0.5 * (sl + sr), sa)
            reversals[a] = np.where(bisect, 0, reversals[a])
        ba, xa, bm = beta[a], x[a], b_max[a]
        b = normalised_black_otm(xa, sa)
        bp = normalised_vega(xa, sa)
        sr = np.where((b > ba) & (sa < sr), sa, sr)
        sl = np.where((b < ba) & (sa > sl), sa, sl)
        ds, degenerate = _step(ba, xa, sa, b, bp, objective[a], bm)
        ds = np.where(degenerate, 0.5 * (sl + sr) - sa, ds)
        clipped = ds < -0.5 * sa
        ds = np.maximum(-0.5 * sa, ds)
        reversals[a] += (ds * ds_prev[a] < 0).astype(np.int8)
        ds_prev[a] = ds
        s_left[a], s_right[a] = sl, sr
        priced = np.abs(b - ba) <= PRICE_TOLERANCE * ba
        # Householder-3 converges quartically: a genuine step this small leaves an error of order
        # (1e-6)^4 relative, far below rounding, so the stepped point needs no re-evaluation.
        converged_step = ~priced & ~degenerate & ~clipped & (np.abs(ds) <= CONVERGED_STEP * sa)
        # A row that hit the price tolerance keeps the evaluated point (its price is known good).
        s[a] = np.where(priced, sa, sa + ds)
        done = priced | converged_step
        ok[a] = done
        active = a[~done]
    return s, ok & np.isfinite(s) & (s > 0)


# ----------------------------------------------------------------------------- public API


def _as_arrays(*args):
    arrays = np.broadcast_arrays(*[np.asarray(a) for a in args])
    return [np.array(a, dtype=float).ravel() if i < len(args) - 1 else np.array(a, dtype=bool).ravel()
            for i, a in enumerate(arrays)], arrays[0].shape


def implied_vol_black76(price, forward, strike, t, rate, is_call, *,
                        max_iterations: int = MAX_ITERATIONS) -> IVResult:
    """Black-76 implied vol of discounted option prices; all arguments broadcast.

    price: discounted premium per unit; forward F and strike K in the same units; t in years;
    rate: continuously compounded (discount D = exp(-rate t)); is_call: bool.
    max_iterations caps the Householder steps (two suffice from Jäckel's guess; rows still
    unconverged at the cap report NO_CONVERGENCE rather than an unconverged iterate).
    """
    (price, forward, strike, t, rate, is_call), shape = _as_arrays(price, forward, strike, t, rate, is_call)
    n = price.shape[0]
    vol = np.full(n, np.nan)
    reason = np.full(n, IVFailure.OK, dtype=np.int8)
    # Blocks small enough to stay in cache: the solver is dozens of elementwise passes, and
    # cache-resident passes are several times faster than streaming a million rows each time.
    with np.errstate(all="ignore"):
        for start in range(0, n, SOLVE_BLOCK):
            block = slice(start, start + SOLVE_BLOCK)
            vol[block], reason[block] = _implied_vol_block(
                price[block], forward[block], strike[block], t[block], rate[block], is_call[block], max_iterations)
    return IVResult(vol=vol.reshape(shape), reason=reason.reshape(shape))


def _implied_vol_block(price, forward, strike, t, rate, is_call, max_iterations):
    """Classify and solve one block of 1-d rows; returns (vol, reason)."""
    vol = np.full(price.shape, np.nan)
    reason = np.zeros(price.shape, dtype=np.int8)
    finite = (np.isfinite(price) & np.isfinite(forward) & np.isfinite(strike) & np.isfinite(t)
              & np.isfinite(rate))
    bad = ~finite | ~(forward > 0) | ~(strike > 0) | ~(t > 0) | ~(price >= 0)
    undiscounted = price / np.exp(-rate * t)
    intrinsic = np.maximum(np.where(is_call, forward - strike, strike - forward), 0.0)
    maximum = np.where(is_call, forward, strike)
    time_value = undiscounted - intrinsic
    # Rounding of the price itself (a few ulps) is not "below intrinsic"; it is zero time value.
    rounding = ZERO_TIME_VALUE_FRACTION * undiscounted
    x = -np.abs(np.log(forward / strike))
    beta = time_value / np.sqrt(forward * strike)
    above = ~bad & (undiscounted >= maximum)
    below = ~bad & ~above & (time_value < -rounding)
    zero_tv = ~bad & ~above & ~below & ((time_value <= rounding) | (beta < _DBL_MIN))
    # The OTM-equivalent price can still reach b_max through rounding; that is above maximum too.
    above |= ~bad & ~below & ~zero_tv & (beta >= np.exp(0.5 * x))
    reason[bad] = IVFailure.BAD_INPUT
    reason[above] = IVFailure.ABOVE_MAXIMUM
    reason[below] = IVFailure.BELOW_INTRINSIC
    reason[zero_tv] = IVFailure.ZERO_TIME_VALUE
    idx = np.flatnonzero(reason == IVFailure.OK)
    if idx.size:
        s, good = _solve_normalised(beta[idx], x[idx], max_iterations)
        vol[idx[good]] = s[good] / np.sqrt(t[idx[good]])
        reason[idx[~good]] = IVFailure.NO_CONVERGENCE
    return vol, reason


def implied_vol(price, spot, strike, t, rate, div_yield, is_call, *,
                max_iterations: int = MAX_ITERATIONS) -> IVResult:
    """BSM implied vol (continuous dividend yield) via Black-76 on F = S exp((r - q) t)."""
    spot, t, rate, div_yield = (np.asarray(a, dtype=float) for a in (spot, t, rate, div_yield))
    with np.errstate(all="ignore"):
        forward = spot * np.exp((rate - div_yield) * t)
    result = implied_vol_black76(price, forward, strike, t, rate, is_call, max_iterations=max_iterations)
    # A bad spot or dividend yield shows up as a NaN/zero forward and is already BAD_INPUT.
    return result


def _expiry_key(expiry) -> np.datetime64:
    return np.datetime64(expiry, "D")


def chain_implied_vol(chain: OptionChain, forwards: dict | None = None,
                      discounts: dict | None = None) -> ChainIV:
    """Implied vol of every row's mid price, Black-76 on each expiry's forward.

    forwards: {expiry (date / datetime64[D] / ISO string): forward price}; an expiry missing from
    it (or forwards=None) uses F = spot exp((rate - dividend_yield) t) from the chain.
    discounts: optional {expiry: discount factor D}; otherwise D = exp(-chain.rate t).
    Rows whose quote fails tools.quotes validation get reason REJECTED_QUOTE (detail in
    quote_problem) and vol NaN; every other row gets a vol or a specific IVFailure.
    """
    t = chain.time_to_expiry
    problems = quote_problems(chain.bid, chain.ask, chain.strike, t, spot=chain.spot, is_call=chain.is_call)
    valid = problems == QuoteProblem.OK
    price = np.where(valid, 0.5 * (chain.bid + chain.ask), np.nan)
    with np.errstate(all="ignore"):
        forward = chain.spot * np.exp((chain.rate - chain.dividend_yield) * t)
        discount = np.exp(-chain.rate * t)
    expiry_days = chain.expiry.astype("datetime64[D]")
    for table, target in ((forwards, forward), (discounts, discount)):
        for key, value in (table or {}).items():
            target[expiry_days == _expiry_key(key)] = float(value)
    # Black-76 with an explicit discount factor: fold D into an equivalent rate for the solver.
    with np.errstate(all="ignore"):
        rate = np.where(t > 0, -np.log(discount) / np.where(t > 0, t, 1.0), chain.rate)
    result = implied_vol_black76(price, forward, chain.strike, t, rate, chain.is_call)
    reason = np.where(valid, result.reason, np.int8(IVFailure.REJECTED_QUOTE)).astype(np.int8)
    used_otm_side = np.where(chain.is_call, chain.strike >= forward, chain.strike <= forward)
    return ChainIV(vol=np.where(valid, result.vol, np.nan), reason=reason, forward=forward,
                   used_otm_side=used_otm_side, price=price, quote_problem=problems, discount=discount)
