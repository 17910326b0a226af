"""tools.implied_vol: round trips, Let's Be Rational (vollib) as the oracle, every failure reason."""
from __future__ import annotations

import math
from datetime import date, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vollib.black import black as vollib_black
from vollib.black.implied_volatility import implied_volatility as vollib_black_iv
from vollib.black_scholes_merton.implied_volatility import implied_volatility as vollib_bsm_iv

from tools.chain import NEW_YORK, OptionChain
from tools.implied_vol import (
    ChainIV, IVFailure, IVResult, ZERO_TIME_VALUE_FRACTION, chain_implied_vol, implied_vol,
    implied_vol_black76,
)
from tools.pricing import black76_price, bsm_price
from tools.quotes import QuoteProblem

SETTINGS = settings(max_examples=80, deadline=None)

maturities = st.floats(1.0 / 365.0, 3.0)
vols = st.floats(0.02, 3.0)
rates = st.floats(-0.01, 0.08)
calls = st.booleans()


def strike_for(forward, m, vol, t):
    return forward * math.exp(m * vol * math.sqrt(t))


# ----------------------------------------------------------------------------- round trips


@SETTINGS
@given(m=st.floats(-12.0, 12.0), t=maturities, vol=vols, r=rates, is_call=calls)
def test_black76_round_trip_reprices_to_1e10_with_vollib(m, t, vol, r, is_call):
    forward = 4500.0
    strike = strike_for(forward, m, vol, t)
    flag = "c" if is_call else "p"
    price = vollib_black(flag, forward, strike, t, r, vol)
    result = implied_vol_black76(price, forward, strike, t, r, is_call)
    reason = IVFailure(int(result.reason))
    if reason == IVFailure.OK:
        repriced = vollib_black(flag, forward, strike, t, r, float(result.vol))
        assert repriced == pytest.approx(price, rel=1e-10)
        if abs(m) <= 3.0:  # well conditioned: the vol itself comes back
            assert float(result.vol) == pytest.approx(vol, rel=1e-9)
    else:
        # The only acceptable failures for a genuine model price: a time value lost to rounding
        # (deep ITM) or underflowed to nothing (deep OTM), or a price that rounds to the upper
        # bound (huge sigma sqrt(t)) - and then vol must be NaN.
        assert np.isnan(result.vol)
        discount = math.exp(-r * t)
        if reason == IVFailure.ABOVE_MAXIMUM:
            assert price >= (1 - 1e-12) * discount * (forward if is_call else strike)
        else:
            assert reason == IVFailure.ZERO_TIME_VALUE
            intrinsic = max((forward - strike) if is_call else (strike - forward), 0.0) * discount
            assert price - intrinsic <= 1e-11 * price or price < 1e-290


@SETTINGS
@given(m=st.floats(-1.5, 1.5), t=maturities, vol=vols, r=rates, q=st.floats(0.0, 0.06), is_call=calls)
def test_bsm_round_trip_near_the_money(m, t, vol, r, q, is_call):
    spot = 450.0
    strike = strike_for(spot * math.exp((r - q) * t), m, vol, t)
    price = bsm_price(spot, strike, t, r, q, vol, is_call)
    result = implied_vol(price, spot, strike, t, r, q, is_call)
    assert result.reason == IVFailure.OK
    assert float(result.vol) == pytest.approx(vol, rel=1e-10)


@SETTINGS
@given(m=st.floats(-4.0, 4.0), t=maturities, vol=st.floats(0.05, 1.5), r=rates, is_call=calls)
def test_agrees_with_lets_be_rational(m, t, vol, r, is_call):
    forward = 100.0
    strike = strike_for(forward, m, vol, t)
    flag = "c" if is_call else "p"
    price = vollib_black(flag, forward, strike, t, r, vol)
    theirs = vollib_black_iv(price, forward, strike, r, t, flag)
    ours = implied_vol_black76(price, forward, strike, t, r, is_call)
    assert ours.reason == IVFailure.OK
    assert float(ours.vol) == pytest.approx(theirs, rel=1e-9)


def test_bsm_agrees_with_vollib_bsm_on_a_grid():
    spot, r, q = 450.81, 0.053, 0.015
    strikes = np.linspace(300.0, 600.0, 31)
    t = np.array([[2 / 365], [30 / 365], [1.0]])
    vol = 0.18 + 0.2 * ((strikes / spot) - 1.0) ** 2
    for is_call in (True, False):
        flag = "c" if is_call else "p"
        price = bsm_price(spot, strikes, t, r, q, vol, is_call)
        ours = implied_vol(price, spot, strikes, t, r, q, is_call)
        assert ours.vol.shape == (3, 31)
        for i in range(3):
            for j in range(31):
                if ours.reason[i, j] != IVFailure.OK:
                    assert ours.reason[i, j] == IVFailure.ZERO_TIME_VALUE
                    continue
                theirs = vollib_bsm_iv(price[i, j], spot, strikes[j], t[i, 0], r, q, flag)
                assert ours.vol[i, j] == pytest.approx(theirs, rel=1e-8)


def test_whole_chain_vectorized_against_vollib():
    rng = np.random.default_rng(7)
    n = 3000
    t = np.exp(rng.uniform(math.log(1 / 365), math.log(3.0), n))
    vol = np.exp(rng.uniform(math.log(0.05), math.log(2.0), n))
    strike = 100.0 * np.exp(rng.uniform(-3.0, 3.0, n) * vol * np.sqrt(t))
    is_call = rng.random(n) < 0.5
    price = black76_price(100.0, strike, t, 0.02, vol, is_call)
    result = implied_vol_black76(price, 100.0, strike, t, 0.02, is_call)
    assert np.all(result.reason == IVFailure.OK)
    repriced = np.array([vollib_black("c" if c else "p", 100.0, k, tt, 0.02, v)
                         for c, k, tt, v in zip(is_call, strike, t, result.vol)])
    assert np.max(np.abs(repriced / price - 1.0)) < 1e-10
    assert np.max(np.abs(result.vol / vol - 1.0)) < 1e-9


def test_deep_wings_give_an_accurate_vol_or_an_explicit_reason():
    forward, t, vol = 100.0, 0.05, 0.2
    m = np.array([-40.0, -25.0, -15.0, -8.0, 8.0, 15.0, 25.0, 40.0])
    strike = forward * np.exp(m * vol * math.sqrt(t))
    for is_call in (True, False):
        price = black76_price(forward, strike, t, 0.0, vol, is_call)
        result = implied_vol_black76(price, forward, strike, t, 0.0, is_call)
        ok = result.reason == IVFailure.OK
        assert np.all(ok | (result.reason == IVFailure.ZERO_TIME_VALUE))
        assert np.all(np.isnan(result.vol[~ok]))
        # OTM wing prices (tiny but representable) must be inverted exactly, not given up on.
        otm = (strike > forward) if is_call else (strike < forward)
        representable = otm & (price > 1e-280)
        assert np.all(ok[representable])
        assert result.vol[ok] == pytest.approx(np.full(ok.sum(), vol), rel=1e-8)


def test_scalar_input_gives_zero_d_arrays():
    result = implied_vol_black76(10.0, 100.0, 100.0, 1.0, 0.0, True)
    assert isinstance(result, IVResult)
    assert result.vol.shape == () and result.reason.shape == ()
    assert result.reason.dtype == np.int8
    assert float(result.vol) == pytest.approx(vollib_black_iv(10.0, 100.0, 100.0, 0.0, 1.0, "c"), rel=1e-12)


# ----------------------------------------------------------------------------- failure reasons


@pytest.mark.parametrize(
    "price,forward,strike,t,rate",
    [(np.nan, 100.0, 100.0, 1.0, 0.0), (5.0, np.nan, 100.0, 1.0, 0.0), (5.0, 100.0, np.nan, 1.0, 0.0),
     (5.0, 100.0, 100.0, np.nan, 0.0), (5.0, 100.0, 100.0, 1.0, np.nan), (5.0, 0.0, 100.0, 1.0, 0.0),
     (5.0, -100.0, 100.0, 1.0, 0.0), (5.0, 100.0, 0.0, 1.0, 0.0), (5.0, 100.0, 100.0, 0.0, 0.0),
     (5.0, 100.0, 100.0, -0.1, 0.0), (-0.01, 100.0, 100.0, 1.0, 0.0), (np.inf, 100.0, 100.0, 1.0, 0.0)],
)
def test_bad_input(price, forward, strike, t, rate):
    result = implied_vol_black76(price, forward, strike, t, rate, True)
    assert result.reason == IVFailure.BAD_INPUT
    assert np.isnan(result.vol)


def test_below_intrinsic():
    # Call intrinsic D (F - K) = 20 e^{-0.05}; 18 is below it.
    result = implied_vol_black76(np.array([18.0, 1.0]), 120.0, 100.0, 1.0, 0.05, np.array([True, False]))
    assert result.reason[0] == IVFailure.BELOW_INTRINSIC
    assert result.reason[1] == IVFailure.OK  # the OTM put at 1.0 is fine
    assert np.isnan(result.vol[0])


def test_above_maximum():
    # A call is worth at most D F, a put at most D K.
    d = math.exp(-0.03 * 0.5)
    result = implied_vol_black76(np.array([100.0 * d, 100.0, 80.0 * d + 1e-9]), 100.0, 80.0, 0.5, 0.03,
                                 np.array([True, True, False]))
    assert list(result.reason) == [IVFailure.ABOVE_MAXIMUM] * 3
    assert np.all(np.isnan(result.vol))


def test_zero_time_value():
    d = math.exp(-0.02)
    result = implied_vol_black76(
        np.array([0.0, 20.0 * d, 20.0 * d * (1 + ZERO_TIME_VALUE_FRACTION / 10)]),
        120.0, np.array([150.0, 100.0, 100.0]), 1.0, 0.02, np.array([True, True, True]))
    assert list(result.reason) == [IVFailure.ZERO_TIME_VALUE] * 3
    assert np.all(np.isnan(result.vol))


def test_no_convergence_is_reported_not_a_half_converged_vol():
    # A far-wing price needs two Householder steps from the initial guess; allowed none, or one,
    # the row must say so rather than return the guess.
    strike = 100.0 * math.exp(6 * 0.2 * math.sqrt(0.25))
    price = black76_price(100.0, strike, 0.25, 0.0, 0.2, True)
    stopped = implied_vol_black76(price, 100.0, strike, 0.25, 0.0, True, max_iterations=0)
    assert stopped.reason == IVFailure.NO_CONVERGENCE and np.isnan(stopped.vol)
    full = implied_vol_black76(price, 100.0, strike, 0.25, 0.0, True)
    assert full.reason == IVFailure.OK and float(full.vol) == pytest.approx(0.2, rel=1e-10)


def test_mixed_array_never_raises_and_each_row_has_its_reason():
    price = np.array([5.0, np.nan, 30.0, 200.0, 0.0, 5.0])
    strike = np.array([100.0, 100.0, 50.0, 100.0, 150.0, -5.0])
    result = implied_vol_black76(price, 100.0, strike, 1.0, 0.0, True)
    assert list(result.reason) == [IVFailure.OK, IVFailure.BAD_INPUT, IVFailure.BELOW_INTRINSIC,
                                   IVFailure.ABOVE_MAXIMUM, IVFailure.ZERO_TIME_VALUE, IVFailure.BAD_INPUT]
    assert np.isfinite(result.vol[0]) and np.all(np.isnan(result.vol[1:]))


# ----------------------------------------------------------------------------- chains


def _chain(bid, ask, strike, is_call, expiry, rate=0.04, q=0.01, spot=100.0):
    n = len(strike)
    nan = np.full(n, np.nan)
    return OptionChain(
        underlying="TEST", as_of=datetime(2024, 1, 2, 16, 0, tzinfo=NEW_YORK), spot=spot,
        expiry=np.array(expiry, dtype="datetime64[D]"), strike=np.asarray(strike, float),
        is_call=np.asarray(is_call, bool), bid=np.asarray(bid, float), ask=np.asarray(ask, float),
        last=nan, volume=nan, open_interest=nan, rate=rate, dividend_yield=q,
    )


def test_chain_implied_vol_recovers_model_vols_and_rejects_bad_quotes():
    expiry = ["2024-02-16"] * 6 + ["2024-06-21"] * 2
    strike = np.array([90.0, 100.0, 110.0, 90.0, 100.0, 110.0, 95.0, 105.0])
    is_call = np.array([True, True, True, False, False, False, True, False])
    proto = _chain(np.zeros(8), np.ones(8), strike, is_call, expiry)
    t = proto.time_to_expiry
    vol = 0.2 + 0.1 * np.log(strike / 100.0) ** 2
    fair = bsm_price(100.0, strike, t, 0.04, 0.01, vol, is_call)
    bid, ask = fair - 0.05, fair + 0.05
    bid[2], ask[2] = 0.0, 0.10  # no bid
    bid[5], ask[5] = ask[5] + 0.1, ask[5]  # crossed
    result = chain_implied_vol(_chain(bid, ask, strike, is_call, expiry))
    assert isinstance(result, ChainIV)
    assert result.reason[2] == IVFailure.REJECTED_QUOTE and result.quote_problem[2] == QuoteProblem.NO_BID
    assert result.reason[5] == IVFailure.REJECTED_QUOTE and result.quote_problem[5] == QuoteProblem.CROSSED
    good = np.array([0, 1, 3, 4, 6, 7])
    assert np.all(result.reason[good] == IVFailure.OK)
    assert result.vol[good] == pytest.approx(vol[good], rel=1e-9)
    assert np.all(np.isnan(result.vol[[2, 5]]))
    assert result.forward == pytest.approx(100.0 * np.exp(0.03 * t))
    # F > 100 here (3 % carry): calls struck below F and puts above it are in the money and
    # are solved through parity.
    assert list(result.used_otm_side) == [False, False, True, True, True, False, False, False]


def test_chain_implied_vol_uses_given_forwards_and_discounts():
    expiry = ["2024-03-15"] * 2
    strike = np.array([100.0, 100.0])
    is_call = np.array([True, False])
    proto = _chain(np.zeros(2), np.ones(2), strike, is_call, expiry, rate=0.0, q=0.0)
    t = proto.time_to_expiry
    forward, discount = 101.5, 0.99
    fair = discount * black76_price(forward, strike, t, 0.0, 0.25, is_call)
    chain = _chain(fair - 0.01, fair + 0.01, strike, is_call, expiry, rate=0.0, q=0.0)
    result = chain_implied_vol(chain, forwards={date(2024, 3, 15): forward},
                               discounts={"2024-03-15": discount})
    assert result.forward == pytest.approx([forward, forward])
    assert result.discount == pytest.approx([discount, discount])
    assert result.vol == pytest.approx([0.25, 0.25], rel=1e-9)
    # Without them, the chain's own (zero) carry gives different vols for the call and the put.
    naive = chain_implied_vol(chain)
    assert abs(naive.vol[0] - naive.vol[1]) > 0.01
