"""European option prices and Greeks: Black-Scholes-Merton and Black-76, vectorized.

Every argument broadcasts against every other (NumPy rules); results are float64 arrays of
the broadcast shape (0-d arrays for all-scalar input).

Models
------
* BSM: spot S, continuously compounded rate r and dividend yield q;
  forward F = S e^{(r-q)t}, discount D = e^{-rt}, price = D * Black(F, K, sigma, t).
* Black-76: forward F (held fixed when r or t move), discount D = e^{-rt}.

Units and sign conventions
--------------------------
* t: years (ACT/365 in this project). vol, rate, div_yield: decimals (0.2 = 20 %).
* Prices are per unit of underlying (per share), same currency as spot/strike.
* delta = dV/dS (BSM) or dV/dF (Black-76).
* gamma = d2V/dS2 (BSM) or d2V/dF2 (Black-76).
* vega  = dV/dsigma per 1.00 of vol (divide by 100 for "per vol point").
* theta = dV/dt per YEAR of calendar time passing, i.e. -dV/dT with T the time to expiry
  (usually negative for a long option; divide by 365 for per-day). Black-76 holds F fixed.
* rho   = dV/dr per 1.00 of rate. BSM: S fixed (F moves with r). Black-76: F fixed, so
  rho = -t V.
* vanna = d2V/dS dsigma (BSM) or d2V/dF dsigma (Black-76).
* charm = d(delta)/dt per year of time passing (= -d delta/dT).
* vomma = d2V/dsigma2.

Degenerate inputs (never an exception, never a silent wrong number)
--------------------------------------------------------------------
* Any NaN input, spot/forward <= 0, strike <= 0 or vol < 0  -> price and all Greeks NaN.
* Expired, t <= 0: price = intrinsic value max(+-(S-K), 0) (undiscounted).
  Greeks: delta is the step (call 1/0, put 0/-1); every other Greek is 0, because the payoff
  is already fixed. Exactly at the strike (S == K) the payoff has a kink, so ALL Greeks are NaN.
* vol == 0 with t > 0: price = discounted intrinsic of the forward, D max(+-(F-K), 0) (the
  deterministic limit). Greeks are NaN (the limits are not continuous at F == K and a
  zero-vol quote is not something to hedge off).

Accuracy: the out-of-the-money side is computed with Jäckel's normalised Black function
(`normalised_black_otm`, a few ulps relative even in the far wings) and the in-the-money side
adds the forward intrinsic value, so deep-ITM prices do not lose the time value to cancellation.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.special import erfcx, ndtr

_INV_SQRT_2PI = 0.3989422804014327


def _quiet(func):
    """Run `func` with floating-point warnings off: invalid rows are masked to NaN explicitly."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return func(*args, **kwargs)

    return wrapper


def _pdf(x: np.ndarray) -> np.ndarray:
    return _INV_SQRT_2PI * np.exp(-0.5 * x * x)


@dataclass(frozen=True)
class Greeks:
    """Sensitivities of one option per row; units as in the module docstring."""

    delta: np.ndarray
    gamma: np.ndarray
    vega: np.ndarray
    theta: np.ndarray
    rho: np.ndarray
    vanna: np.ndarray
    charm: np.ndarray
    vomma: np.ndarray


def _broadcast(*args):
    arrays = np.broadcast_arrays(*[np.asarray(a) for a in args])
    return [np.array(a, dtype=float) if i < len(args) - 1 else np.array(a, dtype=bool)
            for i, a in enumerate(arrays)]


# ----------------------------------------------------------------------------- normalised Black
# Jäckel ("Let's Be Rational", 2015) writes the Black price as sqrt(F K) * b(x, s) with
# x = ln(F/K) and s = sigma sqrt(t). For the out-of-the-money side (x <= 0 for a call) the naive
# difference Phi(x/s + s/2) e^{x/2} - Phi(x/s - s/2) e^{-x/2} cancels badly in the wings, so b is
# evaluated in four regions exactly as in his reference implementation: an asymptotic expansion
# for very negative h = x/s, a small-t expansion for tiny s, the plain formula where the first term
# dominates, and a scaled-erfc form everywhere else. This is what makes ~1e-13-relative prices of
# deep out-of-the-money options possible, which the implied-vol solver relies on. (One deviation
# for speed: the small-t series is used only where the erfcx form would lose > ~1e-13; measured
# against 40-digit mpmath both are then accurate to ~1e-13 relative.)

_ASYMPTOTIC_H_THRESHOLD = -10.0
_SMALL_T_THRESHOLD = 2.0 * np.finfo(float).eps ** (1.0 / 16.0)
_INV_SQRT_2 = 0.7071067811865476
# Cancellation in the erfcx form stays below ~1e-13 relative when t = s/2 > max(0.63, |h|/2) / 100.
_SMALL_T_ERFCX_S = 0.0126
_SMALL_T_ERFCX_RATIO = 100.0
_SQRT_2PI = 2.5066282746310002


def _asymptotic_expansion(h, t):
    e = (t / h) * (t / h)
    r = (h + t) * (h - t)
    q = (h / r) * (h / r)
    # Abramowitz & Stegun 26.2.12 applied to Y(h+t) - Y(h-t), Y = Phi/phi (coefficients from Jäckel).
    series = (2.0 + q * (-6.0 - 2.0 * e + 3.0 * q * (10.0 + e * (20.0 + 2.0 * e) + 5.0 * q * (
        -14.0 + e * (-70.0 + e * (-42.0 - 2.0 * e)) + 7.0 * q * (
            18.0 + e * (168.0 + e * (252.0 + e * (72.0 + 2.0 * e))) + 9.0 * q * (
                -22.0 + e * (-330.0 + e * (-924.0 + e * (-660.0 + e * (-110.0 - 2.0 * e)))) + 11.0 * q * (
                    26.0 + e * (572.0 + e * (2574.0 + e * (3432.0 + e * (1430.0 + e * (156.0 + 2.0 * e))))) + 13.0 * q * (
                        -30.0 + e * (-910.0 + e * (-6006.0 + e * (-12870.0 + e * (-10010.0 + e * (-2730.0 + e * (-210.0 - 2.0 * e)))))) + 15.0 * q * (
                            34.0 + e * (1360.0 + e * (12376.0 + e * (38896.0 + e * (48620.0 + e * (24752.0 + e * (4760.0 + e * (272.0 + 2.0 * e))))))) + 17.0 * q * (
                                -38.0 + e * (-1938.0 + e * (-23256.0 + e * (-100776.0 + e * (-184756.0 + e * (-151164.0 + e * (-54264.0 + e * (-7752.0 + e * (-342.0 - 2.0 * e)))))))) + 19.0 * q * (
                                    42.0 + e * (2660.0 + e * (40698.0 + e * (232560.0 + e * (587860.0 + e * (705432.0 + e * (406980.0 + e * (108528.0 + e * (11970.0 + e * (420.0 + 2.0 * e))))))))) + 21.0 * q * (
                                        -46.0 + e * (-3542.0 + e * (-67298.0 + e * (-490314.0 + e * (-1634380.0 + e * (-2704156.0 + e * (-2288132.0 + e * (-980628.0 + e * (-201894.0 + e * (-17710.0 + e * (-506.0 - 2.0 * e)))))))))) + 23.0 * q * (
                                            50.0 + e * (4600.0 + e * (106260.0 + e * (961400.0 + e * (4085950.0 + e * (8914800.0 + e * (10400600.0 + e * (6537520.0 + e * (2163150.0 + e * (354200.0 + e * (25300.0 + e * (600.0 + 2.0 * e))))))))))) + 25.0 * q * (
                                                -54.0 + e * (-5850.0 + e * (-161460.0 + e * (-1776060.0 + e * (-9373650.0 + e * (-26075790.0 + e * (-40116600.0 + e * (-34767720.0 + e * (-16872570.0 + e * (-4440150.0 + e * (-592020.0 + e * (-35100.0 + e * (-702.0 - 2.0 * e)))))))))))) + 27.0 * q * (
                                                    58.0 + e * (7308.0 + e * (237510.0 + e * (3121560.0 + e * (20030010.0 + e * (69194580.0 + e * (135727830.0 + e * (155117520.0 + e * (103791870.0 + e * (40060020.0 + e * (8584290.0 + e * (950040.0 + e * (47502.0 + e * (812.0 + 2.0 * e))))))))))))) + 29.0 * q * (
                                                        -62.0 + e * (-8990.0 + e * (-339822.0 + e * (-5259150.0 + e * (-40320150.0 + e * (-169344630.0 + e * (-412506150.0 + e * (-601080390.0 + e * (-530365050.0 + e * (-282241050.0 + e * (-88704330.0 + e * (-15777450.0 + e * (-1472562.0 + e * (-62930.0 + e * (-930.0 - 2.0 * e)))))))))))))) + 31.0 * q * (
                                                            66.0 + e * (10912.0 + e * (474672.0 + e * (8544096.0 + e * (77134200.0 + e * (387073440.0 + e * (1146332880.0 + e * (2074316640.0 + e * (2333606220.0 + e * (1637618400.0 + e * (709634640.0 + e * (185122080.0 + e * (27768312.0 + e * (2215136.0 + e * (81840.0 + e * (1056.0 + 2.0 * e))))))))))))))) + 33.0 * (
                                                                -70.0 + e * (-13090.0 + e * (-649264.0 + e * (-13449040.0 + e * (-141214920.0 + e * (-834451800.0 + e * (-2952675600.0 + e * (-6495886320.0 + e * (-9075135300.0 + e * (-8119857900.0 + e * (-4639918800.0 + e * (-1668903600.0 + e * (-367158792.0 + e * (-47071640.0 + e * (-3246320.0 + e * (-104720.0 + e * (-1190.0 - 2.0 * e))))))))))))))))) * q)))))))))))))))))
    return np.abs(np.maximum(_INV_SQRT_2PI * np.exp(-0.5 * (h * h + t * t)) * (t / r) * series, 0.0))


# Jäckel's twelfth-order small-t expansion, b = exp(-(h^2+t^2)/2)/sqrt(2 pi) * 2t * (S_A + a S_B),
# regrouped as polynomials in w = t^2 and h^2 so it evaluates with a few dozen in-place
# multiply-adds (his nested form needs several hundred array temporaries).
# _SMALL_T_A[j][k] is the coefficient of h^(2j) w^k in S_A, likewise _SMALL_T_B.
_SMALL_T_A = (
    (0.0, -1 / 6, -7 / 120, -19 / 1680, -187 / 120960, -437 / 2661120, -1979 / 138378240),
    (0.0, 0.0, -1 / 120, -1 / 280, -19 / 24192, -13 / 110880, -263 / 19768320),
    (0.0, 0.0, 0.0, -1 / 5040, -11 / 120960, -1 / 47520, -97 / 29652480),
    (0.0, 0.0, 0.0, 0.0, -1 / 362880, -13 / 9979200, -107 / 345945600),
    (0.0, 0.0, 0.0, 0.0, 0.0, -1 / 39916800, -1 / 83026944),
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1 / 6227020800),
)
_SMALL_T_B = (
    (1.0, 1 / 2, 1 / 8, 1 / 48, 1 / 384, 1 / 3840, 1 / 46080),
    (0.0, 1 / 6, 1 / 12, 1 / 48, 1 / 288, 1 / 2304, 1 / 23040),
    (0.0, 0.0, 1 / 120, 1 / 240, 1 / 960, 1 / 5760, 1 / 46080),
    (0.0, 0.0, 0.0, 1 / 5040, 1 / 10080, 1 / 40320, 1 / 241920),
    (0.0, 0.0, 0.0, 0.0, 1 / 362880, 1 / 725760, 1 / 2903040),
    (0.0, 0.0, 0.0, 0.0, 0.0, 1 / 39916800, 1 / 79833600),
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1 / 6227020800),
)


def _horner_2d(table, w, h2):
    """sum_j h2^j sum_k table[j][k] w^k, in place (Horner in h2 outside, in w inside)."""
    total = np.zeros_like(w)
    inner = np.empty_like(w)
    for row in reversed(table):
        first = next(k for k, c in enumerate(row) if c != 0.0)
        inner.fill(row[-1])
        for c in reversed(row[first:-1]):
            inner *= w
            inner += c
        if first:
            inner *= w ** first
        total *= h2
        total += inner
    return total


def _small_t_expansion(h, t):
    a = 1.0 + h * (0.5 * _SQRT_2PI) * erfcx(-_INV_SQRT_2 * h)
    w = t * t
    h2 = h * h
    expansion = _horner_2d(_SMALL_T_A, w, h2)
    expansion += a * _horner_2d(_SMALL_T_B, w, h2)
    expansion *= 2.0 * t
    return np.abs(np.maximum(_INV_SQRT_2PI * np.exp(-0.5 * (h2 + w)) * expansion, 0.0))


def _plain_formula(x, s):
    h = x / s
    t = 0.5 * s
    b_max = np.exp(0.5 * x)
    return np.abs(np.maximum(ndtr(h + t) * b_max - ndtr(h - t) / b_max, 0.0))


def _erfcx_formula(h, t):
    return np.abs(np.maximum(
        0.5 * np.exp(-0.5 * (h * h + t * t)) * (erfcx(-_INV_SQRT_2 * (h + t)) - erfcx(-_INV_SQRT_2 * (h - t))), 0.0))


def normalised_black_otm(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Out-of-the-money normalised Black price b(x, s) = Black(F, K) / sqrt(F K), undiscounted.

    x = ln(F/K) <= 0 (an OTM call; an OTM put with log-moneyness x' is b(-|x'|, s)),
    s = sigma sqrt(t) >= 0. Returns 0 where s == 0; accurate to a few ulps relative everywhere.
    Arrays of equal shape (1-d or scalar); no broadcasting is done here.
    """
    x = np.asarray(x, dtype=float)
    s = np.asarray(s, dtype=float)
    scalar = x.ndim == 0
    x, s = np.atleast_1d(x), np.atleast_1d(s)
    out = np.zeros(x.shape)
    live = s > 0
    region1 = live & (x < s * _ASYMPTOTIC_H_THRESHOLD) & (
        0.5 * s * s + x < s * (_SMALL_T_THRESHOLD + _ASYMPTOTIC_H_THRESHOLD))
    rest = live & ~region1
    # The erfcx difference loses about eps * max(0.63, |h|/2) / t to cancellation; Jäckel's
    # small-t series (several times dearer) is used only where that would exceed ~1e-13.
    region2 = rest & (0.5 * s < _SMALL_T_THRESHOLD) & ((s < _SMALL_T_ERFCX_S) | (s * s * _SMALL_T_ERFCX_RATIO < -x))
    rest &= ~region2
    region3 = rest & (x + 0.5 * s * s > 0.85 * s)
    region4 = rest & ~region3
    with np.errstate(all="ignore"):
        for mask, fn, by_h in ((region1, _asymptotic_expansion, True), (region2, _small_t_expansion, True),
                               (region3, _plain_formula, False), (region4, _erfcx_formula, True)):
            if mask.any():
                xm, sm = x[mask], s[mask]
                out[mask] = fn(xm / sm, 0.5 * sm) if by_h else fn(xm, sm)
    out = np.where(np.isnan(x) | np.isnan(s), np.nan, out)
    return out[0] if scalar else out


def normalised_vega(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """db/ds of the normalised Black price: phi(x/s + s/2) e^{x/2} = exp(-(x^2/s^2 + s^2/4)/2)/sqrt(2 pi).

    Same for calls and puts; 0 where s == 0 and x != 0.
    """
    with np.errstate(all="ignore"):
        h = np.where(s > 0, x / np.where(s > 0, s, 1.0), np.where(x == 0, 0.0, np.inf))
        return _INV_SQRT_2PI * np.exp(-0.5 * (h * h + 0.25 * s * s))


def _undiscounted_black(forward, strike, t, vol, is_call):
    """E[(F_T - K)^+] or E[(K - F_T)^+]; valid only where t > 0 and vol > 0 (NaN elsewhere)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        sd = vol * np.sqrt(t)
        log_moneyness = np.log(forward / strike)
        d1 = log_moneyness / sd + 0.5 * sd
        d2 = d1 - sd
        # The OTM side via the accurate normalised Black; the ITM side adds the forward intrinsic.
        shape = log_moneyness.shape
        otm = np.sqrt(forward * strike) * normalised_black_otm(
            -np.abs(log_moneyness).ravel(), sd.ravel()).reshape(shape)
        intrinsic = np.where(is_call, np.maximum(forward - strike, 0.0), np.maximum(strike - forward, 0.0))
        value = otm + intrinsic
    return value, d1, d2, sd


def _bad_input(underlying, strike, t, vol, *rest):
    bad = ~(np.isfinite(underlying) & np.isfinite(strike) & np.isfinite(t) & np.isfinite(vol))
    for r in rest:
        bad |= ~np.isfinite(r)
    return bad | (underlying <= 0) | (strike <= 0) | (vol < 0)


@_quiet
def black76_price(forward, strike, t, rate, vol, is_call) -> np.ndarray:
    """Black-76 price D * E[payoff] with D = exp(-rate t); see module docstring for edge cases."""
    forward, strike, t, rate, vol, is_call = _broadcast(forward, strike, t, rate, vol, is_call)
    live = t > 0
    t_live = np.where(live, t, 1.0)
    discount = np.exp(-rate * t_live)
    undisc, *_ = _undiscounted_black(forward, strike, t_live, np.where(vol > 0, vol, 1.0), is_call)
    fwd_intrinsic = np.where(is_call, np.maximum(forward - strike, 0.0), np.maximum(strike - forward, 0.0))
    live_value = discount * np.where(vol > 0, undisc, fwd_intrinsic)
    value = np.where(live, live_value, fwd_intrinsic)
    return np.where(_bad_input(forward, strike, t, vol, rate), np.nan, value)


@_quiet
def bsm_price(spot, strike, t, rate, div_yield, vol, is_call) -> np.ndarray:
    """Black-Scholes-Merton price with continuous dividend yield; see module docstring."""
    spot, strike, t, rate, div_yield, vol, is_call = _broadcast(spot, strike, t, rate, div_yield, vol, is_call)
    live = t > 0
    forward = np.where(live, spot * np.exp((rate - div_yield) * np.where(live, t, 0.0)), spot)
    value = black76_price(forward, strike, t, rate, vol, is_call)
    return np.where(_bad_input(spot, strike, t, vol, rate, div_yield), np.nan, value)


def _expired_greeks(underlying, strike, is_call, shape) -> dict:
    in_money = np.where(is_call, underlying > strike, underlying < strike)
    delta = np.where(in_money, np.where(is_call, 1.0, -1.0), 0.0)
    zero = np.zeros(shape)
    return dict(delta=delta, gamma=zero, vega=zero, theta=zero, rho=zero, vanna=zero, charm=zero, vomma=zero)


def _finish(live_greeks: dict, expired: dict, live, bad, at_strike_expired) -> Greeks:
    out = {}
    for name, live_value in live_greeks.items():
        v = np.where(live, live_value, expired[name])
        out[name] = np.where(bad | at_strike_expired, np.nan, v)
    return Greeks(**out)


@_quiet
def black76_greeks(forward, strike, t, rate, vol, is_call) -> Greeks:
    """Black-76 Greeks; delta/gamma/vanna w.r.t. the forward, F held fixed for theta/rho/charm."""
    forward, strike, t, rate, vol, is_call = _broadcast(forward, strike, t, rate, vol, is_call)
    live = t > 0
    t_l = np.where(live, t, 1.0)
    vol_ok = vol > 0
    v_l = np.where(vol_ok, vol, 1.0)
    discount = np.exp(-rate * t_l)
    undisc, d1, d2, sd = _undiscounted_black(forward, strike, t_l, v_l, is_call)
    value = discount * undisc
    pdf1 = _pdf(d1)
    sqrt_t = np.sqrt(t_l)
    # N(d1) for a call, N(d1) - 1 = -N(-d1) for a put (computed as -N(-d1) to keep put tails exact).
    n_d1 = np.where(is_call, ndtr(d1), -ndtr(-d1))
    delta = discount * n_d1
    gamma = discount * pdf1 / (forward * sd)
    vega = discount * forward * pdf1 * sqrt_t
    theta = rate * value - discount * forward * pdf1 * v_l / (2.0 * sqrt_t)
    rho = -t_l * value
    vanna = -discount * pdf1 * d2 / v_l
    charm = rate * delta + discount * pdf1 * d2 / (2.0 * t_l)
    vomma = vega * d1 * d2 / v_l
    live_greeks = dict(delta=delta, gamma=gamma, vega=vega, theta=theta, rho=rho, vanna=vanna,
                       charm=charm, vomma=vomma)
    expired = _expired_greeks(forward, strike, is_call, forward.shape)
    bad = _bad_input(forward, strike, t, vol, rate) | (live & ~vol_ok)
    return _finish(live_greeks, expired, live, bad, ~live & (forward == strike))


@_quiet
def bsm_greeks(spot, strike, t, rate, div_yield, vol, is_call) -> Greeks:
    """BSM Greeks w.r.t. spot (S fixed when r, q or t move); units in the module docstring."""
    spot, strike, t, rate, div_yield, vol, is_call = _broadcast(spot, strike, t, rate, div_yield, vol, is_call)
    live = t > 0
    t_l = np.where(live, t, 1.0)
    vol_ok = vol > 0
    v_l = np.where(vol_ok, vol, 1.0)
    df_r = np.exp(-rate * t_l)
    df_q = np.exp(-div_yield * t_l)
    forward = spot * df_q / df_r
    _, d1, d2, sd = _undiscounted_black(forward, strike, t_l, v_l, is_call)
    pdf1 = _pdf(d1)
    sqrt_t = np.sqrt(t_l)
    n_d1 = np.where(is_call, ndtr(d1), -ndtr(-d1))
    n_d2 = np.where(is_call, ndtr(d2), -ndtr(-d2))
    delta = df_q * n_d1
    gamma = df_q * pdf1 / (spot * sd)
    vega = spot * df_q * pdf1 * sqrt_t
    theta = (-spot * df_q * pdf1 * v_l / (2.0 * sqrt_t)
             - rate * strike * df_r * n_d2 + div_yield * spot * df_q * n_d1)
    rho = strike * t_l * df_r * n_d2
    vanna = -df_q * pdf1 * d2 / v_l
    charm = (div_yield * df_q * n_d1
             - df_q * pdf1 * (2.0 * (rate - div_yield) * t_l - d2 * sd) / (2.0 * t_l * sd))
    vomma = vega * d1 * d2 / v_l
    live_greeks = dict(delta=delta, gamma=gamma, vega=vega, theta=theta, rho=rho, vanna=vanna,
                       charm=charm, vomma=vomma)
    expired = _expired_greeks(spot, strike, is_call, spot.shape)
    bad = _bad_input(spot, strike, t, vol, rate, div_yield) | (live & ~vol_ok)
    return _finish(live_greeks, expired, live, bad, ~live & (spot == strike))


@_quiet
def bsm_gamma(spot, strike, t, rate, div_yield, vol) -> np.ndarray:
    """BSM gamma alone, with the same edge cases as `bsm_greeks(...).gamma`.

    Gamma needs only d1, not the accurate normalised price, so sweeping a whole chain over a grid
    of hypothetical spots (the zero-gamma search) costs a fraction of the full Greeks.
    """
    spot, strike, t, rate, div_yield, vol = (
        np.array(a, dtype=float) for a in np.broadcast_arrays(spot, strike, t, rate, div_yield, vol))
    live = t > 0
    t_l = np.where(live, t, 1.0)
    vol_ok = vol > 0
    sd = np.where(vol_ok, vol, 1.0) * np.sqrt(t_l)
    log_moneyness = np.log(spot / strike) + (rate - div_yield) * t_l
    d1 = log_moneyness / sd + 0.5 * sd
    gamma = np.exp(-div_yield * t_l) * _pdf(d1) / (spot * sd)
    gamma = np.where(live, gamma, 0.0)
    bad = _bad_input(spot, strike, t, vol, rate, div_yield) | (live & ~vol_ok) | (~live & (spot == strike))
    return np.where(bad, np.nan, gamma)
