"""Options-flow instruments on hand-made chains (known answers) and on the real SPX chain."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.flow import (
    analyze_chain_flow,
    charm_exposure,
    gamma_exposure_by_strike,
    gamma_exposure_profile,
    is_monthly_opex,
    max_pain,
    otm_side_iv,
    pinning_strikes,
    put_call_ratios,
    total_gamma_exposure,
    unusual_activity,
    vanna_exposure,
    zero_gamma_level,
)
from tools.pricing import bsm_greeks


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _hand_gamma(s, k, sigma, t):
    """Black-Scholes gamma with r = q = 0, written out by hand as the oracle."""
    d1 = (math.log(s / k) + 0.5 * sigma * sigma * t) / (sigma * math.sqrt(t))
    return _phi(d1) / (s * sigma * math.sqrt(t))


# ----------------------------------------------------------------------------- GEX


def test_gex_of_one_call_matches_hand_formula():
    # S = K = 100, sigma 20 %, t = 1: d1 = 0.1, Gamma = phi(0.1) / 20 = 0.019847627...
    gamma = _phi(0.1) / (100 * 0.2)
    expected = gamma * 1000 * 100 * 100.0**2 * 0.01  # 198,476.27 USD per 1 % move
    res = gamma_exposure_by_strike([100.0], [True], [1000.0], [0.2], [1.0], 100.0)
    assert res.total == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(198476.2737, rel=1e-9)
    assert res.strikes.tolist() == [100.0]
    assert res.exposure[0] == pytest.approx(expected, rel=1e-12)
    assert res.unit == "USD per 1% move"


def test_gex_sign_convention_calls_positive_puts_negative():
    k = np.array([95.0, 100.0, 105.0])
    oi = np.array([500.0, 800.0, 300.0])
    iv = np.full(3, 0.25)
    t = np.full(3, 0.1)
    calls = gamma_exposure_by_strike(k, np.ones(3, bool), oi, iv, t, 100.0)
    puts = gamma_exposure_by_strike(k, np.zeros(3, bool), oi, iv, t, 100.0)
    assert calls.total > 0 and np.all(calls.exposure > 0)
    assert puts.total < 0 and np.all(puts.exposure < 0)
    # Same strike, vol and expiry: a put's gamma equals the call's, so the two mirror exactly.
    np.testing.assert_allclose(calls.exposure, -puts.exposure, rtol=1e-12)
    both = gamma_exposure_by_strike(np.r_[k, k], np.r_[np.ones(3, bool), np.zeros(3, bool)],
                                    np.r_[oi, oi], np.r_[iv, iv], np.r_[t, t], 100.0)
    assert abs(both.total) < 1e-9 * calls.total
    np.testing.assert_allclose(both.exposure, 0.0, atol=1e-9 * calls.total)


def test_gex_sums_rows_by_strike_across_expiries():
    s = 100.0
    res = gamma_exposure_by_strike([100.0, 100.0, 110.0], [True, False, True], [10.0, 4.0, 7.0],
                                   [0.2, 0.3, 0.25], [0.5, 0.25, 0.75], s)
    per = [
        _hand_gamma(s, 100, 0.2, 0.5) * 10,
        -_hand_gamma(s, 100, 0.3, 0.25) * 4,
        _hand_gamma(s, 110, 0.25, 0.75) * 7,
    ]
    scale = 100 * s * s * 0.01
    np.testing.assert_allclose(res.exposure, [(per[0] + per[1]) * scale, per[2] * scale], rtol=1e-12)
    assert total_gamma_exposure([100.0, 100.0, 110.0], [True, False, True], [10.0, 4.0, 7.0],
                                [0.2, 0.3, 0.25], [0.5, 0.25, 0.75], s) == pytest.approx(sum(per) * scale)


def test_unusable_rows_are_excluded_and_explained():
    res = gamma_exposure_by_strike(
        [100.0, 100.0, 100.0, 100.0, 105.0],
        [True, True, True, True, True],
        [10.0, 10.0, np.nan, 10.0, 0.0],
        [0.2, np.nan, 0.2, 0.0, 0.2],
        [0.5, 0.5, 0.5, 0.5, 0.5],
        100.0,
    )
    assert res.rows_used == 1  # the zero-OI row is dropped silently: it carries no exposure
    assert res.rows_excluded == 3
    assert any("implied vol" in n for n in res.notes)
    assert any("open interest missing" in n for n in res.notes)
    expired = gamma_exposure_by_strike([100.0, 100.0], [True, False], [5.0, 5.0], [0.2, 0.2], [0.0, -0.01], 100.0)
    assert expired.rows_used == 0 and expired.total == 0.0
    assert any("expired" in n for n in expired.notes)


@pytest.mark.parametrize("kwargs, match", [
    (dict(spot=0.0), "spot"),
    (dict(spot=float("nan")), "spot"),
    (dict(open_interest=[-1.0]), "negative"),
    (dict(iv=[0.2, 0.3]), "rows"),
])
def test_gex_bad_input_raises_clearly(kwargs, match):
    args = dict(strike=[100.0], is_call=[True], open_interest=[1.0], iv=[0.2], t=[0.5], spot=100.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        gamma_exposure_by_strike(**args)


# ----------------------------------------------------------------------------- vanna, charm


def test_vanna_and_charm_follow_dealer_sign_and_units():
    # OTM call (K > S): vanna = -phi(d1) d2 / sigma > 0 because d2 < 0.
    s, k, sig, t = 100.0, 110.0, 0.2, 0.5
    d1 = (math.log(s / k) + 0.5 * sig * sig * t) / (sig * math.sqrt(t))
    d2 = d1 - sig * math.sqrt(t)
    vanna = -_phi(d1) * d2 / sig
    # charm (per year of time passing) with r = q = 0: phi(d1) d2 / (2 t)
    charm = _phi(d1) * d2 / (2 * t)
    va = vanna_exposure([k], [True], [100.0], [sig], [t], s)
    ch = charm_exposure([k], [True], [100.0], [sig], [t], s)
    assert va.total == pytest.approx(vanna * 100 * 100 * s * 0.01, rel=1e-10)
    assert va.total > 0
    assert ch.total == pytest.approx(charm / 365 * 100 * 100 * s, rel=1e-10)
    assert ch.total < 0  # an OTM call's delta decays as time passes
    put_va = vanna_exposure([k], [False], [100.0], [sig], [t], s)
    assert put_va.total == pytest.approx(-va.total, rel=1e-10)  # puts carry the opposite sign


# ----------------------------------------------------------------------------- zero gamma


def test_zero_gamma_on_chain_with_known_crossing():
    # Dealer long a 110 call, short a 90 put, same OI/vol/expiry, r = q = 0. The gammas are
    # equal where d1(110) = -d1(90): S* = sqrt(110 * 90) * exp(-sigma^2 t / 2).
    sig, t = 0.2, 0.25
    expected = math.sqrt(110 * 90) * math.exp(-sig * sig * t / 2)
    z = zero_gamma_level([110.0, 90.0], [True, False], [1000.0, 1000.0], [sig, sig], [t, t], 100.0)
    assert z.reason is None
    assert z.level == pytest.approx(expected, rel=1e-9)
    # below the flip the put dominates (dealers short gamma), above it the call
    profile = gamma_exposure_profile([110.0, 90.0], [True, False], [1000.0, 1000.0], [sig, sig],
                                     [t, t], [expected * 0.97, expected * 1.03])
    assert profile[0] < 0 < profile[1]


def test_zero_gamma_profile_matches_per_spot_gex():
    k = np.array([90.0, 100.0, 110.0, 95.0, 105.0])
    c = np.array([True, True, True, False, False])
    oi = np.array([100.0, 300.0, 200.0, 400.0, 150.0])
    iv = np.array([0.3, 0.2, 0.18, 0.25, 0.22])
    t = np.array([0.1, 0.1, 0.3, 0.2, 0.05])
    spots = np.array([85.0, 100.0, 117.0])
    profile = gamma_exposure_profile(k, c, oi, iv, t, spots)
    one_at_a_time = [total_gamma_exposure(k, c, oi, iv, t, s) for s in spots]
    np.testing.assert_allclose(profile, one_at_a_time, rtol=1e-12)


def test_zero_gamma_none_when_no_crossing():
    z = zero_gamma_level([100.0, 110.0], [True, True], [10.0, 20.0], [0.2, 0.2], [0.5, 0.5], 100.0)
    assert math.isnan(z.level)
    assert "positive" in z.reason
    assert np.all(z.gex_profile > 0)
    z = zero_gamma_level([100.0], [False], [10.0], [0.2], [0.5], 100.0)
    assert math.isnan(z.level) and "negative" in z.reason
    empty = zero_gamma_level([100.0], [True], [10.0], [np.nan], [0.5], 100.0)
    assert math.isnan(empty.level) and "no option rows" in empty.reason


def test_zero_gamma_picks_the_crossing_nearest_spot():
    # calls at 80 and 120 (dealers long gamma far out), short puts near 100: two crossings
    k = [80.0, 100.0, 120.0]
    z = zero_gamma_level(k, [True, False, True], [1000.0, 1500.0, 1000.0], [0.1, 0.1, 0.1],
                         [0.05, 0.05, 0.05], 103.0)
    assert len(z.crossings) == 2
    assert z.crossings[0] < 100 < z.crossings[1]
    assert z.level == z.crossings[np.argmin(np.abs(z.crossings - 103.0))]


# ----------------------------------------------------------------------------- ratios, max pain, pins


def test_put_call_ratios_by_hand():
    r = put_call_ratios([True, False, True, False], [100.0, 250.0, 100.0, np.nan], [1000.0, 500.0, 0.0, 700.0])
    assert r.volume_ratio == pytest.approx(250 / 200)
    assert r.open_interest_ratio == pytest.approx(1200 / 1000)
    assert any("missing volume" in n for n in r.notes)
    no_calls = put_call_ratios([False], [5.0], [5.0])
    assert math.isnan(no_calls.volume_ratio) and any("undefined" in n for n in no_calls.notes)


def test_max_pain_by_hand():
    e1, e2 = np.datetime64("2022-02-18"), np.datetime64("2022-03-18")
    strike = [90, 100, 110, 90, 100, 110, 100, 100]
    is_call = [True, True, True, False, False, False, True, False]
    oi = [10, 50, 500, 500, 50, 10, 0, 0]
    expiry = np.array([e1] * 6 + [e2] * 2)
    res = max_pain(strike, is_call, oi, expiry)
    assert [r.expiry for r in res] == [e1, e2]
    # settle at 90: calls pay 0, puts pay 50*10 + 10*20 = 700 -> 70,000
    # settle at 100: calls pay 0, puts pay 10*10 = 100; calls 10*10 = 100 -> 20,000
    # settle at 110: calls 10*20 + 50*10 = 700 -> 70,000
    assert res[0].strike == 100.0 and res[0].holder_payout == pytest.approx(20000.0)
    assert math.isnan(res[1].strike) and "no open interest" in res[1].reason


def test_max_pain_moves_toward_heavy_call_side():
    # heavy call OI at low strikes: settling low costs holders the least there
    res = max_pain([90, 100, 110], [True, True, True], [1000, 10, 10], np.array(["2022-02-18"] * 3))
    assert res[0].strike == 90.0 and res[0].holder_payout == 0.0


def test_pinning_strikes_on_nearest_live_expiry():
    near, far, gone = np.datetime64("2022-02-11"), np.datetime64("2022-02-18"), np.datetime64("2022-02-04")
    strike = np.array([100, 102, 95, 120, 100, 100])
    is_call = np.array([True, False, True, True, True, True])
    oi = np.array([500.0, 300.0, 200.0, 5000.0, 9000.0, 9000.0])
    expiry = np.array([near, near, near, near, far, gone])
    t = np.array([0.02, 0.02, 0.02, 0.02, 0.04, 0.0])
    p = pinning_strikes(strike, is_call, oi, expiry, t, 101.0, max_distance=0.06)
    assert p.expiry == near
    assert [s.strike for s in p.strikes] == [100.0, 102.0, 95.0]  # 120 is too far from spot
    assert p.strikes[0].share_of_expiry_oi == pytest.approx(500 / 6000)
    assert p.strikes[0].distance == pytest.approx(-1 / 101)
    monthly = pinning_strikes(strike, is_call, oi, expiry, t, 101.0, monthly_only=True)
    assert monthly.expiry == far  # 2022-02-18 is the third Friday
    none = pinning_strikes(strike, is_call, oi, expiry, np.zeros(6), 101.0)
    assert none.expiry is None and "no unexpired" in none.reason


def test_monthly_opex_is_third_friday():
    assert is_monthly_opex(np.datetime64("2022-02-18"))
    assert not is_monthly_opex(np.datetime64("2022-02-11"))
    assert not is_monthly_opex(np.datetime64("2022-02-25"))
    assert is_monthly_opex(np.datetime64("2023-09-15"))


def test_unusual_activity_volume_over_open_interest_and_over_average():
    volume = np.array([5000.0, 600.0, 100.0, 2000.0, 800.0])
    oi = np.array([1000.0, 10000.0, 0.0, 20000.0, 0.0])
    u = unusual_activity(volume, oi, oi_multiple=1.5, min_volume=500)
    assert u.rows.tolist() == [0, 4]  # row 2 is below min_volume despite OI = 0
    assert u.volume_to_open_interest[0] == pytest.approx(5.0)
    assert math.isinf(u.volume_to_open_interest[4])
    history = np.array([[100.0, 50.0, 10.0, 500.0, np.nan], [300.0, 150.0, 10.0, 700.0, np.nan]])
    u = unusual_activity(volume, oi, volume_history=history, average_multiple=3.0, min_volume=500)
    assert u.by_average.tolist() == [True, True, False, True, False]
    assert u.rows.tolist() == [0, 3, 4, 1]  # largest volume first
    assert u.volume_to_average[3] == pytest.approx(2000 / 600)
    assert math.isnan(u.volume_to_average[4])
    with pytest.raises(ValueError, match="volume_history"):
        unusual_activity(volume, oi, volume_history=np.ones((2, 3)))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(50, 150), st.booleans(), st.floats(0, 1e4), st.floats(0.05, 1.0),
                       st.floats(0.01, 2.0)), min_size=1, max_size=20),
    st.floats(60, 140),
)
def test_gex_by_strike_sums_to_total_and_sign_follows_right(rows, spot):
    k, c, oi, iv, t = (np.array(x) for x in zip(*rows))
    res = gamma_exposure_by_strike(k, c, oi, iv, t, spot)
    assert np.isfinite(res.total)
    assert res.total == pytest.approx(res.exposure.sum(), rel=1e-9, abs=1e-6)
    calls_only = gamma_exposure_by_strike(k[c], c[c], oi[c], iv[c], t[c], spot)
    puts_only = gamma_exposure_by_strike(k[~c], c[~c], oi[~c], iv[~c], t[~c], spot)
    assert calls_only.total >= 0 >= puts_only.total
    assert res.total == pytest.approx(calls_only.total + puts_only.total, rel=1e-9, abs=1e-6)


# ----------------------------------------------------------------------------- inputs


def test_otm_side_iv_replaces_in_the_money_rows():
    expiry = np.array(["2022-02-18"] * 5 + ["2022-03-18"], dtype="datetime64[D]")
    iv = otm_side_iv(
        [90, 90, 110, 110, 105, 90],
        [True, False, True, False, True, True],
        expiry,
        [0.02, 0.30, 0.25, np.nan, 0.22, 0.40],
        100.0,
    )
    # 90 call is ITM: takes the 90 put's 0.30; the 110 put takes the 110 call's; the 105 call
    # has no partner and the March 90 call has no OTM partner: both keep their own.
    np.testing.assert_array_equal(iv, [0.30, 0.30, 0.25, 0.25, 0.22, 0.40])
    roots = otm_side_iv([90, 90], [True, False], expiry[:2], [0.02, 0.30], 100.0, root=np.array(["SPX", "SPXW"]))
    np.testing.assert_array_equal(roots, [0.02, 0.30])  # different roots are different options


def test_per_row_carry_matches_row_by_row_scalar_carry():
    k = np.array([95.0, 105.0, 100.0])
    c = np.array([True, False, True])
    oi = np.array([10.0, 20.0, 30.0])
    iv = np.array([0.2, 0.25, 0.3])
    t = np.array([0.1, 0.5, 1.0])
    rate = np.array([0.01, 0.02, 0.03])
    q = np.array([0.0, 0.01, np.nan])
    res = gamma_exposure_by_strike(k, c, oi, iv, t, 100.0, rate=rate, div_yield=q)
    assert res.rows_used == 2 and any("dividend" in n for n in res.notes)
    one_by_one = [total_gamma_exposure(k[i:i + 1], c[i:i + 1], oi[i:i + 1], iv[i:i + 1], t[i:i + 1], 100.0,
                                       rate=rate[i], div_yield=q[i]) for i in range(2)]
    assert res.total == pytest.approx(sum(one_by_one), rel=1e-12)


# ----------------------------------------------------------------------------- real SPX chain


@pytest.fixture(scope="module")
def spx_chain(shared_data):
    from tools.cboe import read_cboe_quote_table

    return read_cboe_quote_table(shared_data / "cboe" / "spx_quotedata_2022-02-04.csv")


def test_spx_zero_gamma_near_spot_with_vendor_iv(spx_chain):
    chain = spx_chain
    assert chain.spot == pytest.approx(4500.53, abs=0.01)
    assert np.all(chain.vendor_iv[np.isfinite(chain.vendor_iv)] > 0)  # vendor zeros came in as NaN
    z = zero_gamma_level(chain.strike, chain.is_call, chain.open_interest, chain.vendor_iv,
                         chain.time_to_expiry, chain.spot)
    assert z.reason is None, z.reason
    assert abs(z.level / chain.spot - 1) < 0.10
    assert z.rows_used > 10_000
    # Below the flip dealers are short gamma, above it long: the profile changes sign there.
    below = z.gex_profile[z.spot_grid < z.level - 1]
    above = z.gex_profile[z.spot_grid > z.level + 1]
    assert below[-1] < 0 < above[0]


def test_spx_gamma_agrees_with_vendor_gamma_near_the_money(spx_chain):
    chain = spx_chain
    t = chain.time_to_expiry
    iv = otm_side_iv(chain.strike, chain.is_call, chain.expiry, chain.vendor_iv, chain.spot, chain.root)
    near = (np.abs(chain.strike / chain.spot - 1) < 0.03) & (t > 10 / 365) & (t < 0.25)
    ours = bsm_greeks(chain.spot, chain.strike[near], t[near], 0.0, 0.0, iv[near], chain.is_call[near]).gamma
    vendor = chain.vendor_gamma[near]
    ok = np.isfinite(vendor) & np.isfinite(ours)
    assert ok.sum() > 1000
    # the vendor rounds gamma to 4 decimals and computes it at its own time stamp and carry
    rel = np.abs(ours[ok] - vendor[ok]) / vendor[ok]
    assert np.median(rel) < 0.10
    assert np.percentile(rel, 90) < 0.25


@pytest.fixture(scope="module")
def spx_summary(spx_chain):
    return analyze_chain_flow(spx_chain)


def test_spx_zero_gamma_from_own_implied_vols_matches_vendor_route(spx_chain, spx_summary):
    from tools.cboe import implied_forwards
    from tools.implied_vol import chain_implied_vol

    chain = spx_chain
    t = chain.time_to_expiry
    curve = implied_forwards(chain)
    civ = chain_implied_vol(chain, curve.forwards_by_expiry(), curve.discounts_by_expiry())
    with np.errstate(all="ignore"):
        rate = -np.log(civ.discount) / t
        div_yield = rate - np.log(civ.forward / chain.spot) / t
    ours = zero_gamma_level(chain.strike, chain.is_call, chain.open_interest, civ.vol, t, chain.spot,
                            rate=rate, div_yield=div_yield)
    vendor = spx_summary.zero_gamma  # vendor IVs, OTM side per strike
    assert ours.reason is None and vendor.reason is None
    assert abs(ours.level / chain.spot - 1) < 0.10
    # two independent vol sources put the flip within 1 % of spot of each other
    assert abs(ours.level - vendor.level) < 0.01 * chain.spot


def test_spx_full_flow_summary(spx_chain, spx_summary):
    s = spx_summary
    assert 0.5 < s.put_call.open_interest_ratio < 5  # index chains carry more puts than calls
    assert s.put_call.put_open_interest == pytest.approx(np.nansum(spx_chain.open_interest[~spx_chain.is_call]))
    assert s.pinning.expiry == np.datetime64("2022-02-07")
    assert len(s.pinning.strikes) >= 1 and all(abs(p.distance) <= 0.05 for p in s.pinning.strikes)
    assert all(np.isfinite(m.strike) for m in s.max_pain[:5])
    assert all(abs(m.strike / spx_chain.spot - 1) < 0.05 for m in s.max_pain[:3])
    assert abs(s.zero_gamma.level / spx_chain.spot - 1) < 0.10
    assert s.gamma.total == pytest.approx(s.gamma.exposure.sum())
    assert np.isfinite(s.vanna.total) and np.isfinite(s.charm.total)
    assert len(s.unusual.rows) > 0
