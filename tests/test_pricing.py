"""tools.pricing: parity, Greeks vs finite differences, textbook values, vollib as an oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vollib.black import black as vollib_black
from vollib.black_scholes_merton import black_scholes_merton as vollib_bsm

from tools.pricing import Greeks, black76_greeks, black76_price, bsm_greeks, bsm_price

SETTINGS = settings(max_examples=60, deadline=None)

vols = st.floats(0.05, 1.2)
maturities = st.floats(1.0 / 365.0, 3.0)
rates = st.floats(-0.01, 0.08)
div_yields = st.floats(0.0, 0.05)
# Moneyness in standard deviations: ln(K/F) = m * sigma * sqrt(t).
moneyness = st.floats(-3.0, 3.0)
calls = st.booleans()


def strike_for(forward: float, m: float, vol: float, t: float) -> float:
    return forward * math.exp(m * vol * math.sqrt(t))


# ----------------------------------------------------------------------------- parity


@SETTINGS
@given(m=st.floats(-6.0, 6.0), t=maturities, r=rates, q=div_yields, vol=vols)
def test_bsm_put_call_parity(m, t, r, q, vol):
    spot = 100.0
    forward = spot * math.exp((r - q) * t)
    strike = strike_for(forward, m, vol, t)
    call = bsm_price(spot, strike, t, r, q, vol, True)
    put = bsm_price(spot, strike, t, r, q, vol, False)
    parity = spot * math.exp(-q * t) - strike * math.exp(-r * t)
    assert call - put == pytest.approx(parity, abs=1e-10 * max(spot, strike))


@SETTINGS
@given(m=st.floats(-6.0, 6.0), t=maturities, r=rates, vol=vols)
def test_black76_put_call_parity(m, t, r, vol):
    forward = 4500.0
    strike = strike_for(forward, m, vol, t)
    call = black76_price(forward, strike, t, r, vol, True)
    put = black76_price(forward, strike, t, r, vol, False)
    assert call - put == pytest.approx(math.exp(-r * t) * (forward - strike), abs=1e-10 * max(forward, strike))


# ----------------------------------------------------------------------------- vollib oracle


@SETTINGS
@given(m=moneyness, t=maturities, r=rates, q=div_yields, vol=vols, is_call=calls)
def test_bsm_price_matches_vollib(m, t, r, q, vol, is_call):
    spot = 100.0
    strike = strike_for(spot * math.exp((r - q) * t), m, vol, t)
    ours = float(bsm_price(spot, strike, t, r, q, vol, is_call))
    theirs = vollib_bsm("c" if is_call else "p", spot, strike, t, r, vol, q)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12 * spot)


@SETTINGS
@given(m=moneyness, t=maturities, r=rates, vol=vols, is_call=calls)
def test_black76_price_matches_vollib(m, t, r, vol, is_call):
    forward = 450.0
    strike = strike_for(forward, m, vol, t)
    ours = float(black76_price(forward, strike, t, r, vol, is_call))
    theirs = vollib_black("c" if is_call else "p", forward, strike, t, r, vol)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12 * forward)


def test_prices_broadcast_over_a_chain():
    strikes = np.array([80.0, 100.0, 120.0])
    is_call = np.array([[True], [False]])
    prices = bsm_price(100.0, strikes, 0.5, 0.03, 0.01, 0.25, is_call)
    assert prices.shape == (2, 3)
    for i, flag in enumerate("cp"):
        for j, k in enumerate(strikes):
            assert prices[i, j] == pytest.approx(vollib_bsm(flag, 100.0, k, 0.5, 0.03, 0.25, 0.01), rel=1e-12)


# ----------------------------------------------------------------------------- textbook values


def test_hull_price_example():
    # Hull, Options Futures and Other Derivatives: S=42, K=40, r=10 %, sigma=20 %, T=0.5.
    call, put = bsm_price(42.0, 40.0, 0.5, 0.10, 0.0, 0.20, np.array([True, False]))
    assert call == pytest.approx(4.76, abs=0.005)
    assert put == pytest.approx(0.81, abs=0.005)


def test_haug_price_examples():
    # Haug, The Complete Guide to Option Pricing Formulas: BSM call 2.1334; Black-76 1.7011.
    assert bsm_price(60.0, 65.0, 0.25, 0.08, 0.0, 0.30, True) == pytest.approx(2.1334, abs=5e-5)
    assert black76_price(19.0, 19.0, 0.75, 0.10, 0.28, True) == pytest.approx(1.7011, abs=5e-5)
    assert black76_price(19.0, 19.0, 0.75, 0.10, 0.28, False) == pytest.approx(1.7011, abs=5e-5)


def test_hull_greeks_example():
    # Hull's running example: S=49, K=50, r=5 %, sigma=20 %, T=20 weeks (0.3846 years).
    g = bsm_greeks(49.0, 50.0, 0.3846, 0.05, 0.0, 0.20, True)
    assert g.delta == pytest.approx(0.522, abs=5e-4)
    assert g.gamma == pytest.approx(0.066, abs=5e-4)
    assert g.vega == pytest.approx(12.1, abs=0.05)  # per 1.00 of vol
    assert g.theta == pytest.approx(-4.31, abs=0.005)  # per year
    assert g.rho == pytest.approx(8.91, abs=0.005)


def test_haug_greek_examples():
    delta = black76_greeks(105.0, 100.0, 0.5, 0.10, 0.36, np.array([True, False])).delta
    assert delta == pytest.approx([0.5946, -0.3566], abs=5e-5)
    assert bsm_greeks(55.0, 60.0, 0.75, 0.10, 0.0, 0.30, True).gamma == pytest.approx(0.0278, abs=5e-5)
    assert bsm_greeks(430.0, 405.0, 1 / 12, 0.07, 0.05, 0.20, False).theta == pytest.approx(-31.1924, abs=5e-5)
    assert bsm_greeks(72.0, 75.0, 1.0, 0.09, 0.0, 0.19, True).rho == pytest.approx(38.7325, abs=5e-5)


# ----------------------------------------------------------------------------- Greeks vs finite differences


def _check(name, analytic, numeric, scale):
    assert float(analytic) == pytest.approx(float(numeric), rel=2e-4, abs=2e-6 * scale), name


@SETTINGS
@given(m=moneyness, t=st.floats(7.0 / 365.0, 3.0), r=rates, q=div_yields, vol=st.floats(0.08, 1.0), is_call=calls)
def test_bsm_greeks_match_finite_differences(m, t, r, q, vol, is_call):
    s = 100.0
    k = strike_for(s * math.exp((r - q) * t), m, vol, t)

    def v(s=s, t=t, r=r, vol=vol):
        return float(bsm_price(s, k, t, r, q, vol, is_call))

    g = bsm_greeks(s, k, t, r, q, vol, is_call)
    # Steps scaled to the distribution's width so truncation error stays ~1e-6 relative.
    hs, hv, hr, ht = 2e-3 * s * vol * math.sqrt(t), 2e-3 * vol, 1e-5, 1e-3 * t
    # Scales: a typical magnitude for each Greek, so the absolute tolerance is meaningful.
    _check("delta", g.delta, (v(s=s + hs) - v(s=s - hs)) / (2 * hs), 1.0)
    _check("gamma", g.gamma, (v(s=s + hs) - 2 * v() + v(s=s - hs)) / hs**2, 1.0 / s)
    _check("vega", g.vega, (v(vol=vol + hv) - v(vol=vol - hv)) / (2 * hv), s)
    _check("theta", g.theta, -(v(t=t + ht) - v(t=t - ht)) / (2 * ht), s / t)
    _check("rho", g.rho, (v(r=r + hr) - v(r=r - hr)) / (2 * hr), s)
    vanna = (v(s=s + hs, vol=vol + hv) - v(s=s + hs, vol=vol - hv)
             - v(s=s - hs, vol=vol + hv) + v(s=s - hs, vol=vol - hv)) / (4 * hs * hv)
    _check("vanna", g.vanna, vanna, 10.0)
    charm = -(v(s=s + hs, t=t + ht) - v(s=s + hs, t=t - ht)
              - v(s=s - hs, t=t + ht) + v(s=s - hs, t=t - ht)) / (4 * hs * ht)
    _check("charm", g.charm, charm, 1.0 / t)
    _check("vomma", g.vomma, (v(vol=vol + hv) - 2 * v() + v(vol=vol - hv)) / hv**2, s)


@SETTINGS
@given(m=moneyness, t=st.floats(7.0 / 365.0, 3.0), r=rates, vol=st.floats(0.08, 1.0), is_call=calls)
def test_black76_greeks_match_finite_differences(m, t, r, vol, is_call):
    f = 100.0
    k = strike_for(f, m, vol, t)

    def v(f=f, t=t, r=r, vol=vol):
        return float(black76_price(f, k, t, r, vol, is_call))

    g = black76_greeks(f, k, t, r, vol, is_call)
    hf, hv, hr, ht = 2e-3 * f * vol * math.sqrt(t), 2e-3 * vol, 1e-5, 1e-3 * t
    _check("delta", g.delta, (v(f=f + hf) - v(f=f - hf)) / (2 * hf), 1.0)
    _check("gamma", g.gamma, (v(f=f + hf) - 2 * v() + v(f=f - hf)) / hf**2, 1.0 / f)
    _check("vega", g.vega, (v(vol=vol + hv) - v(vol=vol - hv)) / (2 * hv), f)
    _check("theta", g.theta, -(v(t=t + ht) - v(t=t - ht)) / (2 * ht), f / t)
    _check("rho", g.rho, (v(r=r + hr) - v(r=r - hr)) / (2 * hr), f)
    vanna = (v(f=f + hf, vol=vol + hv) - v(f=f + hf, vol=vol - hv)
             - v(f=f - hf, vol=vol + hv) + v(f=f - hf, vol=vol - hv)) / (4 * hf * hv)
    _check("vanna", g.vanna, vanna, 10.0)
    charm = -(v(f=f + hf, t=t + ht) - v(f=f + hf, t=t - ht)
              - v(f=f - hf, t=t + ht) + v(f=f - hf, t=t - ht)) / (4 * hf * ht)
    _check("charm", g.charm, charm, 1.0 / t)
    _check("vomma", g.vomma, (v(vol=vol + hv) - 2 * v() + v(vol=vol - hv)) / hv**2, f)


def test_greeks_dataclass_is_frozen_and_broadcasts():
    g = bsm_greeks(np.array([90.0, 100.0, 110.0]), 100.0, 0.25, 0.02, 0.0, 0.2, True)
    assert isinstance(g, Greeks)
    assert g.delta.shape == (3,)
    assert np.all(np.diff(g.delta) > 0)  # call delta rises with spot
    with pytest.raises(AttributeError):
        g.delta = np.zeros(3)  # type: ignore[misc]


# ----------------------------------------------------------------------------- degenerate inputs


def test_expired_options_are_worth_intrinsic():
    strikes = np.array([90.0, 110.0])
    assert bsm_price(100.0, strikes, 0.0, 0.05, 0.0, 0.2, True) == pytest.approx([10.0, 0.0])
    assert bsm_price(100.0, strikes, -0.01, 0.05, 0.0, 0.2, False) == pytest.approx([0.0, 10.0])
    assert black76_price(100.0, strikes, 0.0, 0.05, 0.2, False) == pytest.approx([0.0, 10.0])


def test_expired_greeks_are_step_delta_and_zero_elsewhere():
    g = bsm_greeks(100.0, np.array([90.0, 110.0]), 0.0, 0.05, 0.0, 0.2, np.array([True, False]))
    assert g.delta == pytest.approx([1.0, -1.0])
    for name in ("gamma", "vega", "theta", "rho", "vanna", "charm", "vomma"):
        assert getattr(g, name) == pytest.approx([0.0, 0.0]), name
    otm = black76_greeks(100.0, np.array([110.0, 90.0]), 0.0, 0.05, 0.2, np.array([True, False]))
    assert otm.delta == pytest.approx([0.0, 0.0])


def test_expired_at_the_strike_greeks_are_nan():
    g = bsm_greeks(100.0, 100.0, 0.0, 0.05, 0.0, 0.2, True)
    assert all(np.isnan(getattr(g, name)) for name in Greeks.__dataclass_fields__)
    assert bsm_price(100.0, 100.0, 0.0, 0.05, 0.0, 0.2, True) == 0.0


def test_zero_vol_prices_the_discounted_forward_intrinsic_and_greeks_are_nan():
    r, q, t = 0.05, 0.01, 1.0
    forward = 100.0 * math.exp((r - q) * t)
    price = bsm_price(100.0, 95.0, t, r, q, 0.0, True)
    assert price == pytest.approx(math.exp(-r * t) * (forward - 95.0), rel=1e-14)
    assert bsm_price(100.0, 110.0, t, r, q, 0.0, True) == 0.0
    assert np.isnan(bsm_greeks(100.0, 95.0, t, r, q, 0.0, True).delta)


@pytest.mark.parametrize(
    "spot,strike,t,vol",
    [(np.nan, 100.0, 1.0, 0.2), (100.0, np.nan, 1.0, 0.2), (100.0, 100.0, np.nan, 0.2),
     (100.0, 100.0, 1.0, np.nan), (0.0, 100.0, 1.0, 0.2), (-5.0, 100.0, 1.0, 0.2),
     (100.0, 0.0, 1.0, 0.2), (100.0, -1.0, 1.0, 0.2), (100.0, 100.0, 1.0, -0.2)],
)
def test_bad_inputs_give_nan_not_an_exception(spot, strike, t, vol):
    assert np.isnan(bsm_price(spot, strike, t, 0.01, 0.0, vol, True))
    assert np.isnan(black76_price(spot, strike, t, 0.01, vol, False))
    g = bsm_greeks(spot, strike, t, 0.01, 0.0, vol, True)
    assert all(np.isnan(getattr(g, name)) for name in Greeks.__dataclass_fields__)


def test_deep_itm_keeps_its_time_value():
    # A deep ITM put's time value (= the OTM call's price by parity) must survive cancellation.
    forward, strike, t, vol = 100.0, 300.0, 0.5, 0.3
    put = float(black76_price(forward, strike, t, 0.0, vol, False))
    assert put - (strike - forward) > 0
    assert put - (strike - forward) == pytest.approx(
        vollib_black("c", forward, strike, t, 0.0, vol), rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    spot=st.floats(1.0, 5000.0), moneyness=st.floats(-1.0, 1.0),
    # live options from an hour to three years, and expired ones; vols from 1% and exactly zero
    t=st.one_of(st.floats(1 / 8760, 3.0), st.floats(-0.1, 0.0)),
    rate=st.floats(-0.01, 0.1), div_yield=st.floats(0.0, 0.08), vol=st.one_of(st.floats(0.01, 2.0), st.just(0.0)),
)
def test_gamma_alone_matches_the_full_greeks(spot, moneyness, t, rate, div_yield, vol):
    from tools.pricing import bsm_gamma

    strike = spot * math.exp(moneyness)
    full = bsm_greeks(spot, strike, t, rate, div_yield, vol, True).gamma
    alone = bsm_gamma(spot, strike, t, rate, div_yield, vol)
    np.testing.assert_allclose(alone, full, rtol=1e-9, atol=1e-300, equal_nan=True)
