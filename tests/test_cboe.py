"""tools.cboe: the quote-table reader on real files, malformed files, parity forwards, IV vs vendor."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from tools.cboe import (
    PLAUSIBLE_RATE, CboeFormatError, ForwardCurve, implied_forwards, read_cboe_quote_table,
)
from tools.chain import NEW_YORK, OptionChain, years_to_expiry
from tools.implied_vol import IVFailure, chain_implied_vol
from tools.pricing import bsm_price
from tools.quotes import QuoteProblem

SPX_FILE = "spx_quotedata_2022-02-04.csv"
SPY_FILE = "spy_quotedata_2023-09-14.csv"
NDX_FILE = "ndx_quotedata_2022-02-04.csv"


@pytest.fixture(scope="module")
def spx(shared_data) -> OptionChain:
    return read_cboe_quote_table(shared_data / "cboe" / SPX_FILE)


@pytest.fixture(scope="module")
def spy(shared_data) -> OptionChain:
    return read_cboe_quote_table(shared_data / "cboe" / SPY_FILE)


def _data_lines(path) -> int:
    return sum(1 for line in path.read_text().splitlines()[4:] if line.strip())


# ----------------------------------------------------------------------------- the reader


def test_spx_header_and_shape(spx, shared_data):
    assert spx.source == "cboe"
    assert spx.underlying == "SPX"
    assert spx.spot == pytest.approx(4500.5298)
    assert spx.as_of == datetime(2022, 2, 5, 20, 9, tzinfo=NEW_YORK)
    assert spx.as_of.utcoffset().total_seconds() == -5 * 3600
    assert len(spx) == 2 * _data_lines(shared_data / "cboe" / SPX_FILE) == 20514
    assert set(spx.root) == {"SPX", "SPXW"}
    assert spx.meta["roots"] == ["SPX", "SPXW"]
    # Calls and puts alternate, one pair per line.
    assert spx.is_call[::2].all() and not spx.is_call[1::2].any()
    # SPX and SPXW share some expiries and strikes: rows are unique only with the root.
    keys = set(zip(spx.expiry.tolist(), spx.root.tolist(), spx.strike.tolist(), spx.is_call.tolist()))
    assert len(keys) == len(spx)
    assert len(set(zip(spx.expiry.tolist(), spx.strike.tolist(), spx.is_call.tolist()))) < len(spx)


def test_spx_first_line_values(spx):
    # Mon Feb 07 2022,SPXW220207C02400000,0,0,2087.8,2102.6,0,4.285,0.9999,0,0,2400.00,
    # SPXW220207P02400000,0.07,0,0,0.05,0,1.9229,-0.0001,0,106
    call, put = 0, 1
    assert spx.expiry[call] == np.datetime64("2022-02-07")
    assert spx.strike[call] == 2400.0 and spx.root[call] == "SPXW"
    assert (spx.bid[call], spx.ask[call]) == (2087.8, 2102.6)
    assert np.isnan(spx.last[call])  # a last sale of 0 is "no trade"
    assert spx.vendor_iv[call] == 4.285 and spx.vendor_delta[call] == 0.9999
    assert np.isnan(spx.vendor_gamma[call])  # vendor 0 means "not given"
    assert spx.open_interest[call] == 0.0
    assert (spx.bid[put], spx.ask[put], spx.last[put]) == (0.0, 0.05, 0.07)
    assert spx.vendor_delta[put] == -0.0001 and spx.open_interest[put] == 106.0


def test_vendor_zeros_are_nan_never_zero(spx, spy):
    for chain in (spx, spy):
        for column in (chain.vendor_iv, chain.vendor_delta, chain.vendor_gamma, chain.last):
            assert not np.any(column == 0.0)
        assert np.isnan(chain.vendor_iv).any()  # deep strikes do have IV 0 in the files


def test_spy_header_same_day_expiry_and_shape(spy, shared_data):
    assert spy.underlying == "SPY" and spy.root is not None and set(spy.root) == {"SPY"}
    assert spy.as_of == datetime(2023, 9, 14, 16, 31, tzinfo=NEW_YORK)
    assert spy.as_of.utcoffset().total_seconds() == -4 * 3600  # EDT
    assert spy.spot == 450.81
    assert len(spy) == 2 * _data_lines(shared_data / "cboe" / SPY_FILE)
    # Options expiring at today's 16:00 close, read at 16:31, are expired.
    same_day = spy.expiry == np.datetime64("2023-09-14")
    assert same_day.sum() > 0
    assert np.all(spy.time_to_expiry[same_day] < 0)


def test_ndx_reads_both_roots(shared_data):
    ndx = read_cboe_quote_table(shared_data / "cboe" / NDX_FILE)
    assert ndx.underlying == "NDX" and set(ndx.root) == {"NDX", "NDXP"}
    assert ndx.spot == pytest.approx(14694.3506)


# ----------------------------------------------------------------------------- malformed files

GOOD_TOP = ("\nS&P,Last: 4500.5,Change: 1.0\n"
            "\"Date: February 5 2022, 8:09 PM EST\",Bid: 4420.5,Ask: 4615.4,Size: 1*1,Volume: 0\n"
            "Expiration Date,Calls,Last Sale,Net,Bid,Ask,Volume,IV,Delta,Gamma,Open Interest,Strike,"
            "Puts,Last Sale,Net,Bid,Ask,Volume,IV,Delta,Gamma,Open Interest\n")
GOOD_ROW = ("Fri Mar 18 2022,SPX220318C04500000,80,0,79.5,80.5,10,0.2,0.5,0.001,100,4500.00,"
            "SPX220318P04500000,90,0,89.5,90.5,10,0.21,-0.5,0.001,100\n")


def test_a_minimal_good_file_reads(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text(GOOD_TOP + GOOD_ROW)
    chain = read_cboe_quote_table(path)
    assert len(chain) == 2 and chain.strike.tolist() == [4500.0, 4500.0]
    assert chain.bid.tolist() == [79.5, 89.5]


@pytest.mark.parametrize(
    "text,line,fragment",
    [
        ("", 1, "file ends"),
        ("\nS&P,Price: 4500\n" + GOOD_TOP.split("\n", 2)[2] + GOOD_ROW, 2, "Last:"),
        (GOOD_TOP.replace("February 5 2022, 8:09 PM", "5/2/2022 20:09"), 3, "Date:"),
        (GOOD_TOP.replace("Open Interest\n", "OI\n") + GOOD_ROW, 4, "unexpected columns"),
        (GOOD_TOP + GOOD_ROW + GOOD_ROW.replace(",100\n", "\n"), 6, "expected 22 fields"),
        (GOOD_TOP + GOOD_ROW.replace("79.5", "7x9.5"), 5, "not a number"),
        (GOOD_TOP + GOOD_ROW.replace("Fri Mar 18 2022", "2022-03-18"), 5, "Expiration Date"),
        (GOOD_TOP + GOOD_ROW.replace("SPX220318P04500000", "SPX220318C04500000"), 5, "put symbol"),
        (GOOD_TOP, 5, "no option rows"),
    ],
)
def test_malformed_files_raise_with_file_and_line(tmp_path, text, line, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(CboeFormatError) as info:
        read_cboe_quote_table(path)
    assert isinstance(info.value, ValueError)
    assert f"bad.csv:{line}:" in str(info.value)
    assert fragment in str(info.value)
    assert info.value.line == line


# ----------------------------------------------------------------------------- forwards


def _synthetic_chain(spot=100.0, rate=0.03, q=0.01, vol=0.25, bad_strike=None):
    as_of = datetime(2024, 1, 2, 16, 0, tzinfo=NEW_YORK)
    strikes = np.arange(70.0, 131.0, 2.5)
    expiry = np.array(["2024-07-19"], dtype="datetime64[D]")
    exp = np.repeat(expiry, 2 * len(strikes))
    strike = np.repeat(strikes, 2)
    is_call = np.tile([True, False], len(strikes))
    t = years_to_expiry(exp, as_of)
    fair = bsm_price(spot, strike, t, rate, q, vol, is_call)
    bid, ask = fair - 0.02, fair + 0.02
    if bad_strike is not None:  # one stale call quote, far off its fair value
        i = np.flatnonzero((strike == bad_strike) & is_call)[0]
        bid[i], ask[i] = fair[i] + 1.5, fair[i] + 1.6
    nan = np.full(len(strike), np.nan)
    chain = OptionChain(underlying="SYN", as_of=as_of, spot=spot, expiry=exp, strike=strike, is_call=is_call,
                        bid=bid, ask=ask, last=nan, volume=nan, open_interest=nan)
    return chain, spot * np.exp((rate - q) * t[0]), np.exp(-rate * t[0])


@pytest.mark.parametrize("bad_strike", [None, 100.0, 105.0])
def test_forwards_recover_a_known_carry_even_with_a_bad_quote(bad_strike):
    chain, forward, discount = _synthetic_chain(bad_strike=bad_strike)
    curve = implied_forwards(chain)
    assert isinstance(curve, ForwardCurve)
    assert curve.discount_estimated.tolist() == [True]
    assert curve.forward[0] == pytest.approx(forward, rel=2e-5)
    assert curve.discount[0] == pytest.approx(discount, abs=2e-4)
    assert curve.rate[0] == pytest.approx(0.03, abs=5e-4)
    assert curve.n_pairs_used[0] == 8


def test_real_forwards_are_near_spot_and_rates_plausible(spx, spy):
    for chain in (spx, spy):
        curve = implied_forwards(chain)
        live = curve.t > 0
        assert np.all(np.isfinite(curve.forward[live]))
        assert np.all(np.isnan(curve.forward[~live]))  # SPY's same-day expiry
        # Carry is a few % a year at most: within 1 % + 5 %/year of spot.
        log_fs = np.abs(np.log(curve.forward[live] / chain.spot))
        assert np.all(log_fs <= 0.01 + 0.05 * curve.t[live])
        short = live & (curve.t < 0.25)
        assert np.all(np.abs(curve.forward[short] / chain.spot - 1) < 0.01)
        assert np.all((curve.rate[live] >= PLAUSIBLE_RATE[0]) & (curve.rate[live] <= PLAUSIBLE_RATE[1]))
    # Early 2022: SPX box rates of ~0-2 % on the expiries that estimate their own discount.
    spx_curve = implied_forwards(spx)
    year_ish = spx_curve.discount_estimated & (spx_curve.t > 0.4) & (spx_curve.t < 2.0)
    assert year_ish.sum() >= 8
    assert np.all((spx_curve.rate[year_ish] > -0.002) & (spx_curve.rate[year_ish] < 0.025))


# ----------------------------------------------------------------------------- IV on real chains


@pytest.mark.parametrize("name", [SPX_FILE, SPY_FILE])
def test_every_valid_quote_gets_a_vol_or_a_specific_reason(shared_data, name):
    chain = read_cboe_quote_table(shared_data / "cboe" / name)
    curve = implied_forwards(chain)
    iv = chain_implied_vol(chain, curve.forwards_by_expiry(), curve.discounts_by_expiry())
    valid = iv.quote_problem == QuoteProblem.OK
    assert np.all(iv.reason[~valid] == IVFailure.REJECTED_QUOTE)
    assert np.all(np.isnan(iv.vol[~valid]))
    allowed = {IVFailure.OK, IVFailure.BELOW_INTRINSIC, IVFailure.ABOVE_MAXIMUM, IVFailure.ZERO_TIME_VALUE}
    assert set(np.unique(iv.reason[valid]).tolist()) <= {int(r) for r in allowed}
    ok = iv.reason == IVFailure.OK
    assert np.all(np.isfinite(iv.vol[ok]) & (iv.vol[ok] > 0))
    assert ok.sum() / valid.sum() > 0.85
    # An OTM option cannot be below intrinsic (its intrinsic is 0): that reason is ITM-only.
    below = iv.reason == IVFailure.BELOW_INTRINSIC
    assert not np.any(below & iv.used_otm_side)


def _liquid_pairs(chain, iv, min_days):
    call = np.arange(0, len(chain), 2)
    put = call + 1
    t = chain.time_to_expiry[call]
    spread = np.maximum((chain.ask - chain.bid)[call] / iv.price[call], (chain.ask - chain.bid)[put] / iv.price[put])
    near = np.abs(np.log(chain.strike[call] / iv.forward[call])) < 0.05
    mask = (near & (t * 365 >= min_days) & (spread < 0.10) & (iv.reason[call] == IVFailure.OK)
            & (iv.reason[put] == IVFailure.OK) & np.isfinite(chain.vendor_iv[call]) & np.isfinite(chain.vendor_iv[put]))
    return call[mask], put[mask]


def test_call_and_put_vols_agree_at_each_strike(spx):
    # With parity forwards and discounts, a strike's call and put imply the same vol.
    curve = implied_forwards(spx)
    iv = chain_implied_vol(spx, curve.forwards_by_expiry(), curve.discounts_by_expiry())
    call, put = _liquid_pairs(spx, iv, min_days=7)
    assert len(call) > 1000
    assert np.median(np.abs(iv.vol[call] - iv.vol[put])) < 0.002


def test_spy_vols_match_the_vendor(spy):
    # Measured: median |ours - Cboe| on liquid near-the-money OTM quotes, 7+ days: ~0.1 vol point.
    curve = implied_forwards(spy)
    iv = chain_implied_vol(spy, curve.forwards_by_expiry(), curve.discounts_by_expiry())
    call, put = _liquid_pairs(spy, iv, min_days=7)
    otm = np.concatenate([call[iv.used_otm_side[call]], put[iv.used_otm_side[put]]])
    assert len(otm) > 300
    assert np.median(np.abs(iv.vol[otm] - spy.vendor_iv[otm])) < 0.003


def test_spx_vols_match_the_vendor_carry_neutral(spx):
    # Cboe's SPX IVs use a carry inconsistent with the quotes (its call and put IVs at the same
    # near-money strike differ by ~3 vol points), so compare the call/put average, which cancels
    # a forward error to first order. Measured: ~0.4 vol point (30-120 days), ~0.15 (longer).
    curve = implied_forwards(spx)
    iv = chain_implied_vol(spx, curve.forwards_by_expiry(), curve.discounts_by_expiry())
    call, put = _liquid_pairs(spx, iv, min_days=30)
    assert len(call) > 1000
    vendor_gap = np.median(np.abs(spx.vendor_iv[call] - spx.vendor_iv[put]))
    assert vendor_gap > 0.02  # the vendor inconsistency this comparison works around
    ours = 0.5 * (iv.vol[call] + iv.vol[put])
    theirs = 0.5 * (spx.vendor_iv[call] + spx.vendor_iv[put])
    assert np.median(np.abs(ours - theirs)) < 0.005
