"""The modelled chain: sane prices, the right skew, listed expiries, and its error on real Cboe chains."""
from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pytest

from tests.conftest import SHARED_DATA
from tools.chain import NEW_YORK
from tools.chain_model import (ImpliedInputs, Liquidity, build_surface, listed_expiries, model_chain,
                               session_close, variance_swap_total_variance)
from tools.chain_model_calibration import calibrate

HISTORY = SHARED_DATA / "history"
CBOE = SHARED_DATA / "cboe"

# Stated bounds, vol points (figures at the time of writing: SPX 0.56 / 2.11 / 1.81,
# SPY 1.16 / 1.98 / 1.95, NDX 1.65 / 1.53 / 2.02; see the report printed by the test).
BOUNDS = {  # underlying: (mean |ATM error|, mean |25-delta RR error|, RMSE over liquid strikes)
    "SPX": (1.5, 3.0, 2.5),
    "SPY": (2.0, 3.0, 2.5),
    "NDX": (2.5, 3.0, 3.0),  # out of sample, level from a stated VXN/VIX-like ratio
}

MARCH_8_2022 = ImpliedInputs(session=date(2022, 3, 8), vix9d=0.3666, vix=0.3513, vix3m=0.35, skew_index=135.25)


@pytest.fixture(scope="module")
def spy_chain():
    surface = build_surface(MARCH_8_2022)
    return model_chain("SPY", surface, 390.69, session_close(date(2022, 3, 8)), rate=0.02, dividend_yield=0.015)


def test_the_model_chain_matches_the_real_cboe_chains_within_stated_bounds(capsys):
    results = calibrate(CBOE, HISTORY)
    assert {r.underlying for r in results} == set(BOUNDS)
    with capsys.disabled():
        print()
        for r in results:
            print("chain model calibration:", r.line())
    for r in results:
        atm, rr, rmse = BOUNDS[r.underlying]
        assert r.expiries_compared >= 15 and r.strikes_compared >= 500, r.line()
        assert r.priced_from == "VIX9D/VIX/VIX3M/SKEW"
        assert r.atm_error_mean_abs <= atm, r.line()
        assert r.rr25_error_mean_abs <= rr, r.line()
        assert r.rmse_vol_points <= rmse, r.line()


def test_prices_are_sane(spy_chain):
    c = spy_chain
    assert c.source == "modelled" and c.meta["priced_from"] == "VIX9D/VIX/VIX3M/SKEW"
    assert (c.bid >= 0).all() and (c.ask > c.bid).all()
    assert (c.open_interest >= 1).all() and (c.volume >= 0).all()
    assert np.isfinite(c.vendor_iv).all() and (c.vendor_iv > 0).all()
    # Cent ticks for SPY.
    assert np.allclose(np.round(c.ask * 100), c.ask * 100)


def test_put_call_parity_holds_near_the_money(spy_chain):
    c = spy_chain
    t = c.time_to_expiry
    near = np.abs(c.strike / c.spot - 1) < 0.05
    calls = near & c.is_call
    puts = near & ~c.is_call
    key = lambda mask: {(e, k): i for i, (e, k) in enumerate(zip(c.expiry[mask], c.strike[mask]))}
    call_idx, put_idx = np.flatnonzero(calls), np.flatnonzero(puts)
    ck, pk = key(calls), key(puts)
    pairs = [(call_idx[ck[x]], put_idx[pk[x]]) for x in ck if x in pk]
    assert len(pairs) > 200
    ci, pi = np.array(pairs).T
    parity = c.spot * np.exp(-c.dividend_yield * t[ci]) - c.strike[ci] * np.exp(-c.rate * t[ci])
    gap = (c.mid[ci] - c.mid[pi]) - parity
    tolerance = 0.5 * (c.ask[ci] - c.bid[ci] + c.ask[pi] - c.bid[pi]) + 0.02
    assert (np.abs(gap) <= tolerance).all()


def test_the_smile_is_skewed_the_right_way(spy_chain):
    c = spy_chain
    month = c.expiry == np.datetime64("2022-04-14")  # Good Friday 2022-04-15: the monthly moves to Thursday
    assert month.any()
    strikes = np.unique(c.strike[month])
    vol = {k: c.vendor_iv[month & (c.strike == k) & c.is_call][0] for k in strikes}
    put_wing, atm, call_wing = vol[350.0], vol[391.0], vol[430.0]
    assert put_wing > atm > call_wing  # index puts are rich
    surface = build_surface(MARCH_8_2022)
    assert surface.risk_reversal_25d(30 / 365) < -0.04


def test_the_term_structure_reprices_the_vix_indices():
    surface = build_surface(MARCH_8_2022)
    for index, (name, t, vol) in zip(range(3), MARCH_8_2022.pillars()):
        w0 = surface.atm_total_variance(t)
        assert variance_swap_total_variance(surface.shape, w0)[0] == pytest.approx(vol**2 * t, rel=1e-3), name
    # Between pillars total variance is linear in time.
    t9, t30 = 9 / 365, 30 / 365
    mid = 0.5 * (t9 + t30)
    expected = 0.5 * (surface.atm_total_variance(t9) + surface.atm_total_variance(t30))
    assert surface.atm_total_variance(mid) == pytest.approx(expected)


def test_days_without_vix9d_or_skew():
    old = ImpliedInputs(session=date(2010, 3, 8), vix9d=float("nan"), vix=0.18, vix3m=0.2, skew_index=120.0)
    assert build_surface(old).inputs.describe() == "VIX/VIX3M/SKEW"
    with pytest.raises(ValueError, match="no SKEW close on 2010-03-08"):
        build_surface(ImpliedInputs(date(2010, 3, 8), float("nan"), 0.18, 0.2, float("nan")))
    with pytest.raises(ValueError, match="no VIX close"):
        build_surface(ImpliedInputs(date(2010, 3, 8), float("nan"), float("nan"), 0.2, 120.0))


def test_listed_expiries_follow_the_stated_history():
    expiries, monthly = listed_expiries("SPY", date(2008, 3, 10))
    assert all(np.datetime64(d).astype(object).weekday() in (3, 4) for d in expiries)
    assert monthly.all()  # no weeklies before June 2010
    assert str(expiries[0]) == "2008-03-20"  # Good Friday 2008-03-21: the monthly moves to Thursday
    expiries, monthly = listed_expiries("SPY", date(2017, 3, 6))
    weekdays = {np.datetime64(d).astype(object).weekday() for d in expiries}
    assert 2 in weekdays and 0 not in weekdays and 1 not in weekdays  # Wednesday weeklies, no Mondays yet
    expiries, _ = listed_expiries("SPY", date(2023, 2, 6))
    assert {np.datetime64(d).astype(object).weekday() for d in expiries[:8]} == {0, 1, 2, 3, 4}  # dailies
    other, _ = listed_expiries("ACME", date(2023, 1, 9))
    assert {np.datetime64(d).astype(object).weekday() for d in other} <= {3, 4}


def test_liquidity_widens_spreads_and_thins_open_interest():
    surface = build_surface(MARCH_8_2022, vol_ratio=2.0, skew_factor=0.55)
    as_of = session_close(date(2022, 3, 8))
    thin = Liquidity.relative_to_spy(2e7, 2e10)
    acme = model_chain("ACME", surface, 42.0, as_of, rate=0.02, dividend_yield=0.0, liquidity=thin)
    spy = model_chain("SPY", build_surface(MARCH_8_2022), 390.69, as_of, rate=0.02, dividend_yield=0.015)
    assert thin.spread_factor > 1.0 and thin.oi_scale < 5000
    rel = lambda c: np.median(((c.ask - c.bid) / c.mid)[(np.abs(np.log(c.strike / c.spot)) < 0.05) & (c.bid > 0)])
    assert rel(acme) > rel(spy)
    assert acme.open_interest.max() < spy.open_interest.max()
    assert np.isin(np.unique(np.diff(np.unique(acme.strike))), [1.0]).all()  # $1 strikes for a $42 stock


def test_a_chain_needs_a_positive_spot():
    with pytest.raises(ValueError, match="spot must be positive"):
        model_chain("SPY", build_surface(MARCH_8_2022), 0.0, datetime(2022, 3, 8, 16, tzinfo=NEW_YORK),
                    rate=0.02, dividend_yield=0.0)


def test_the_modelled_surface_is_free_of_static_arbitrage_on_real_days():
    """Total variance never falls with maturity at any strike (calendar), and call prices are convex
    in strike (butterfly), on 40 days spread over the VIX3M era."""
    from tools.pricing import black76_price
    from tools.providers.history import HistoricalMarket, as_of_from_date

    market = HistoricalMarket(HISTORY)
    sessions = market.files.bars("SPY").dates
    sessions = sessions[(sessions >= np.datetime64("2009-10-01")) & (sessions <= np.datetime64("2026-07-01"))]
    strikes = np.linspace(0.45, 1.65, 601)  # evenly spaced, forward 1: second differences ~ density
    k = np.log(strikes)
    for day in sessions[np.linspace(0, len(sessions) - 1, 40).astype(int)]:
        history = market.chain("SPY", as_of_from_date(day.astype(object)))
        surface = history.surface
        t = np.unique(history.chain.time_to_expiry)
        w = np.array([surface.implied_vol(k, np.full_like(k, ti)) ** 2 * ti for ti in t])
        assert (np.diff(w, axis=0) >= -1e-12).all(), f"calendar arbitrage on {day}"
        for ti, wi in zip(t, w):
            calls = black76_price(1.0, strikes, ti, 0.0, np.sqrt(wi / ti), True)
            second = calls[:-2] - 2 * calls[1:-1] + calls[2:]
            assert (second >= -1e-12).all(), f"butterfly arbitrage on {day}, {ti * 365:.0f} days"
