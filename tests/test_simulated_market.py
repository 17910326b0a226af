"""The simulated market: determinism, no look-ahead, realistic bars, chains, regimes and social data."""
from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.chain import NEW_YORK
from tools.pricing import bsm_price
from tools.providers import simulated as sim
from tools.providers.base import LookAheadError, MarketDataProvider, MarketSnapshot
from tools.providers.simulated import (
    DEFAULT_WATCHLIST,
    SimulatedMarket,
    option_expiries,
    smile_total_variance,
    ticker_profile,
)

REPO = Path(__file__).resolve().parents[1]
AS_OF = datetime(2025, 3, 14, 9, 35, tzinfo=NEW_YORK)  # a Friday, intraday


def ny(y, m, d, hh=9, mm=35) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=NEW_YORK)


@pytest.fixture(scope="module")
def market() -> SimulatedMarket:
    return SimulatedMarket(seed=7)


@pytest.fixture(scope="module")
def snap(market) -> MarketSnapshot:
    return market.snapshot(DEFAULT_WATCHLIST, AS_OF)


def _bars_arrays(bars):
    return [bars.dates, bars.open, bars.high, bars.low, bars.close, bars.volume]


def _snapshot_digest(s: MarketSnapshot) -> str:
    """A hash over every number and text in a snapshot (bit-exact)."""
    h = hashlib.sha256()
    arrays = _bars_arrays(s.vix) + _bars_arrays(s.vix3m) + _bars_arrays(s.benchmark)
    for t in sorted(s.tickers):
        d = s.tickers[t]
        h.update(f"{t}{d.spot!r}{d.beta!r}{d.sector}".encode())
        arrays += _bars_arrays(d.bars) + [d.atm_iv_history, d.social.mentions, d.social.search_interest]
        c = d.chain
        arrays += [c.expiry, c.strike, c.is_call, c.bid, c.ask, c.last, c.volume, c.open_interest, c.vendor_iv]
        for p in d.social.posts:
            h.update(f"{p.created_at.isoformat()}|{p.source}|{p.text}|{p.story_id}".encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- protocol, determinism


def test_is_a_market_data_provider(market, snap):
    provider: MarketDataProvider = market  # structural: name + snapshot(tickers, as_of)
    assert callable(provider.snapshot)
    assert market.name == "simulated" and snap.provider == "simulated"
    assert set(snap.tickers) == set(DEFAULT_WATCHLIST)
    assert snap.rate == pytest.approx(0.04)
    assert snap.as_of == AS_OF


def test_same_inputs_give_bit_identical_snapshots(snap):
    again = SimulatedMarket(seed=7).snapshot(list(DEFAULT_WATCHLIST), AS_OF)
    assert _snapshot_digest(again) == _snapshot_digest(snap)
    for t in DEFAULT_WATCHLIST:
        a, b = snap.tickers[t].chain, again.tickers[t].chain
        assert np.array_equal(a.last, b.last, equal_nan=True)
        assert np.array_equal(a.bid, b.bid) and np.array_equal(a.open_interest, b.open_interest)


def test_identical_across_processes_and_hash_seeds(snap):
    """Python's hash() is salted per process; the generator must not depend on it."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from tests.test_simulated_market import _snapshot_digest, AS_OF\n"
        "from tools.providers.simulated import SimulatedMarket, DEFAULT_WATCHLIST\n"
        "print(_snapshot_digest(SimulatedMarket(7).snapshot(DEFAULT_WATCHLIST, AS_OF)))\n" % str(REPO)
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == _snapshot_digest(snap)


def test_different_seeds_differ(snap):
    other = SimulatedMarket(seed=8).snapshot(DEFAULT_WATCHLIST, AS_OF)
    assert not np.array_equal(other.vix.close, snap.vix.close)
    for t in DEFAULT_WATCHLIST:
        assert not np.array_equal(other.tickers[t].bars.close, snap.tickers[t].bars.close)


def test_a_ticker_does_not_depend_on_the_other_tickers_requested(market, snap):
    sim._ticker_path.cache_clear()
    alone = market.snapshot(["AAPL"], AS_OF).tickers["AAPL"]
    crowd = market.snapshot(["T001", "aapl", "TSLA", "XYZ"], AS_OF).tickers["AAPL"]
    for a, b in ((alone, crowd), (alone, snap.tickers["AAPL"])):
        assert a.spot == b.spot
        for x, y in zip(_bars_arrays(a.bars), _bars_arrays(b.bars)):
            assert np.array_equal(x, y)
        assert np.array_equal(a.chain.bid, b.chain.bid) and np.array_equal(a.chain.volume, b.chain.volume)
        assert a.social.posts == b.social.posts


def test_returned_arrays_are_read_only_so_the_cache_cannot_be_corrupted(market):
    """A (ticker, time) is generated once and shared (brokers, re-checks and marks ask for it many
    times a slot), so its arrays are read-only: writing into them fails instead of leaking."""
    first = market.snapshot(["MSFT"], AS_OF).tickers["MSFT"]
    expected = first.bars.close.copy()
    for array in (first.bars.close, first.atm_iv_history, first.chain.bid, first.chain.strike):
        with pytest.raises(ValueError, match="read-only"):
            array[:] = -1.0
    again = market.snapshot(["MSFT"], AS_OF).tickers["MSFT"]
    assert again is first and np.array_equal(again.bars.close, expected)
    assert np.all(again.atm_iv_history > 0)


def test_a_snapshot_is_assembled_once_per_tickers_and_time(monkeypatch):
    """Every quote source asks for its ticker's snapshot: the same (tickers, as_of) is one shared
    snapshot (read-only), the same instant in another zone is another snapshot carrying that
    zone, and the cache is bounded."""
    from datetime import timezone

    monkeypatch.setattr(sim, "SNAPSHOT_CACHE_SIZE", 2)
    market = SimulatedMarket(seed=7)
    first = market.snapshot(["MSFT"], AS_OF)
    assert market.snapshot(["msft", "MSFT"], AS_OF) is first
    with pytest.raises(ValueError, match="read-only"):
        first.vix.close[:] = -1.0
    in_utc = market.snapshot(["MSFT"], AS_OF.astimezone(timezone.utc))
    assert in_utc is not first and in_utc.as_of.tzinfo is timezone.utc and in_utc.as_of == AS_OF
    assert in_utc.tickers["MSFT"] is first.tickers["MSFT"] and np.array_equal(in_utc.vix.close, first.vix.close)
    assert market.snapshot(["MSFT", "SPY"], AS_OF) is not first  # a third entry: the first is evicted
    again = market.snapshot(["MSFT"], AS_OF)
    assert again is not first and _snapshot_digest(again) == _snapshot_digest(first) and again.meta == first.meta


# ----------------------------------------------------------------------------- no look-ahead


def test_history_before_a_date_does_not_change_when_asked_later(market):
    early, late = ny(2024, 5, 15, 12, 0), ny(2024, 6, 14, 12, 0)
    sim._ticker_path.cache_clear()
    sim._market_path.cache_clear()
    a = market.snapshot(["NVDA", "T017"], early)
    sim._ticker_path.cache_clear()
    sim._market_path.cache_clear()
    b = market.snapshot(["NVDA", "T017"], late)
    last = a.vix.dates[-1]
    assert b.vix.dates[-1] > last
    pairs = [(a.vix, b.vix), (a.vix3m, b.vix3m), (a.benchmark, b.benchmark)]
    pairs += [(a.tickers[t].bars, b.tickers[t].bars) for t in ("NVDA", "T017")]
    for x, y in pairs:
        y_prefix = y.until(last)
        overlap = np.isin(y_prefix.dates, x.dates)
        assert overlap.sum() > 400
        for fx, fy in zip(_bars_arrays(x), _bars_arrays(y_prefix)):
            assert np.array_equal(fx[np.isin(x.dates, y_prefix.dates)], fy[overlap])
    for t in ("NVDA", "T017"):
        ia = np.isin(a.tickers[t].bars.dates, b.tickers[t].bars.dates)
        ib = np.isin(b.tickers[t].bars.dates, a.tickers[t].bars.dates)
        assert np.array_equal(a.tickers[t].atm_iv_history[ia], b.tickers[t].atm_iv_history[ib])
        sa, sb = a.tickers[t].social, b.tickers[t].social
        complete = sa.dates < np.datetime64(early.date(), "D")  # the as-of day itself is partial
        keep = np.isin(sb.dates, sa.dates[complete])
        assert keep.sum() > 50
        assert np.array_equal(sa.mentions[complete][np.isin(sa.dates[complete], sb.dates)], sb.mentions[keep])


@pytest.mark.parametrize(
    "as_of, last_bar",
    [
        (ny(2025, 3, 14, 9, 35), "2025-03-13"),  # Friday morning: Thursday's bar is the last complete one
        (ny(2025, 3, 14, 16, 0), "2025-03-14"),  # at the close the day's bar is complete
        (ny(2025, 3, 15, 12, 0), "2025-03-14"),  # Saturday
        (ny(2025, 3, 17, 8, 0), "2025-03-14"),  # Monday pre-market
        (ny(2025, 4, 18, 12, 0), "2025-04-17"),  # Good Friday: no session
    ],
)
def test_bars_end_at_the_last_complete_session(market, as_of, last_bar):
    s = market.snapshot(["SPY", "JPM"], as_of)
    s.assert_no_look_ahead()
    for bars in (s.vix, s.vix3m, s.benchmark, s.tickers["JPM"].bars):
        assert str(bars.dates[-1]) == last_bar
        assert len(bars) == sim.HISTORY_SESSIONS
    chain = s.tickers["JPM"].chain
    assert chain.as_of == as_of and np.all(chain.time_to_expiry > 0)
    for t, d in s.tickers.items():
        assert all(p.created_at < as_of for p in d.social.posts)
        assert d.social.dates[-1] == np.datetime64(as_of.date(), "D")


def test_snapshot_check_would_catch_a_late_bar(market, snap):
    later = market.snapshot(["SPY"], ny(2025, 3, 17, 16, 30))
    with pytest.raises(LookAheadError):
        MarketSnapshot(as_of=AS_OF, provider="x", tickers={}, vix=later.vix, vix3m=snap.vix3m, benchmark=snap.benchmark)


def test_intraday_spot_moves_inside_the_days_bar(market):
    day_after = market.snapshot(["AMZN", "SPY"], ny(2025, 3, 14, 17, 0))
    bar = {t: (d.bars.open[-1], d.bars.high[-1], d.bars.low[-1], d.bars.close[-1], d.bars.close[-2])
           for t, d in day_after.tickers.items()}
    for hh, mm in ((9, 35), (11, 0), (13, 30), (15, 59)):
        s = market.snapshot(["AMZN", "SPY"], ny(2025, 3, 14, hh, mm))
        for t, d in s.tickers.items():
            o, h, lo, c, prev = bar[t]
            assert lo <= d.spot <= h
            assert d.chain.spot == d.spot
    pre = market.snapshot(["AMZN"], ny(2025, 3, 14, 9, 0)).tickers["AMZN"]
    assert pre.spot == bar["AMZN"][4]  # before the open: the previous close
    assert day_after.tickers["AMZN"].spot == bar["AMZN"][3]
    # a minute after the open the price is still close to the open
    o, h, lo = bar["AMZN"][:3]
    at_931 = market.snapshot(["AMZN"], ny(2025, 3, 14, 9, 31)).tickers["AMZN"]
    assert abs(math.log(at_931.spot / o)) < 0.2 * math.log(h / lo) + 0.01 / o


# ----------------------------------------------------------------------------- bars and history


def test_history_is_long_enough_and_on_nyse_sessions(snap):
    import exchange_calendars

    cal = exchange_calendars.get_calendar("XNYS", start="2021-01-04", end="2025-12-31")
    sessions = cal.sessions_in_range("2021-01-04", "2025-03-13").values.astype("datetime64[D]")
    for d in snap.tickers.values():
        assert len(d.bars) >= 400
        assert np.all(np.isin(d.bars.dates, sessions))
        assert np.array_equal(d.bars.dates, sessions[-len(d.bars):])  # no gaps
        assert d.atm_iv_history.shape == d.bars.close.shape
        assert np.all((d.atm_iv_history > 0.03) & (d.atm_iv_history < 3.0))


def test_ohlc_is_consistent_over_the_whole_span():
    cal = sim._calendar()
    for t in list(DEFAULT_WATCHLIST) + ["T001", "T050", "GOOGL"]:
        b = sim._ticker_path(7, t).bars
        assert len(b) == cal.n_path
        assert np.all(b.low > 0) and np.all(b.volume > 0)
        assert np.all(b.low <= np.minimum(b.open, b.close)) and np.all(b.high >= np.maximum(b.open, b.close))
    m = sim._market_path(7)
    for b in (m.vix, m.vix3m):
        assert np.all(b.low > 0) and np.all(b.low <= np.minimum(b.open, b.close))
        assert np.all(b.high >= np.maximum(b.open, b.close))


def test_realized_vol_and_beta_follow_the_profiles():
    spy = sim._ticker_path(7, "SPY").log_return[1:]
    for t in ("SPY", "TSLA", "JPM", "XLE"):
        p = ticker_profile(t)
        r = sim._ticker_path(7, t).log_return[1:]
        vol = r.std() * math.sqrt(252)
        assert 0.8 * p.vol < vol < 1.5 * p.vol, (t, vol)
        beta = np.cov(r, spy)[0, 1] / spy.var()
        assert abs(beta - p.beta) < 0.25, (t, beta)


def test_unknown_tickers_get_deterministic_synthetic_parameters(market):
    a, b = ticker_profile("T001"), ticker_profile("t001")
    assert a == b and a.synthetic and not ticker_profile("AAPL").synthetic
    assert ticker_profile("T002") != a
    assert 0.6 <= a.beta <= 1.8 and 10 <= a.reference_price <= 400 and 0.1 < a.vol < 1.0
    names = [f"T{i:03d}" for i in range(1, 51)]
    s = market.snapshot(names, AS_OF)
    assert list(s.tickers) == names and s.meta["synthetic_tickers"] == names
    assert len({d.sector for d in s.tickers.values()}) > 3


# ----------------------------------------------------------------------------- regimes


def test_regimes_give_up_down_and_flat_situations(market):
    """Across 60 sampled dates the watchlist shows strong up and down trends and flat ones, and the
    40-session trend statistic agrees with the generating regime (a random walk would not)."""
    cal = sim._calendar()
    rng = np.random.default_rng(0)
    picks = np.sort(rng.choice(np.arange(600, cal.n_path - 10), 60, replace=False))
    by_label = {"up": [], "down": [], "flat": []}
    stats = []
    for t in DEFAULT_WATCHLIST:
        close = sim._ticker_path(7, t).bars.close
        for i in picks:
            window = np.diff(np.log(close[i - 40:i + 1]))
            z = math.log(close[i] / close[i - 40]) / (window.std(ddof=1) * math.sqrt(40))
            stats.append(z)
            label = market.generating_regime(t, cal.sessions[i].astype(object)).trend
            by_label[label].append(z)
    stats = np.array(stats)
    assert (stats > 2).mean() > 0.08  # a driftless walk gives 2.3 %
    assert (stats < -2).mean() > 0.03
    assert (np.abs(stats) < 0.5).mean() > 0.15
    assert np.mean(by_label["up"]) > 1.0
    assert np.mean(by_label["down"]) < -0.3
    assert np.mean(by_label["up"]) - np.mean(by_label["flat"]) > 0.7
    assert np.mean(by_label["flat"]) - np.mean(by_label["down"]) > 0.5
    for label, zs in by_label.items():
        assert len(zs) > 60, label


def test_regimes_last_weeks_to_months():
    regime = sim._market_path(7).regime
    lengths = np.diff(np.flatnonzero(np.diff(regime) != 0))
    assert len(set(regime.tolist())) == 3
    assert lengths.min() >= 15 and 40 < np.median(lengths) < 120


def test_vix_term_structure_by_regime():
    m = sim._market_path(7)
    ratio = m.vix.close / m.vix3m.close  # VIX / VIX3M > 1 is backwardation
    stress, calm = m.regime == sim.STRESS, m.regime == sim.CALM
    assert np.all(m.vix.close > 0) and np.all(m.vix3m.close > 0)
    assert np.all(ratio[stress] > 1.0)
    assert np.median(ratio[calm]) < 0.95
    assert np.median(m.vix.close[stress]) > np.median(m.vix.close[calm]) + 8


def test_generating_regime_reports_the_stress_dates(market):
    cal = sim._calendar()
    m = sim._market_path(7)
    stress_days = cal.sessions[np.flatnonzero(m.regime == sim.STRESS)[::40]]
    assert len(stress_days) > 5
    for d in stress_days:
        g = market.generating_regime("SPY", d.astype(object))
        assert g.market == "stress" and g.vix > 0 and g.vix / g.vix3m > 1.0
        assert g.session == d.astype(object)
    weekend = market.generating_regime("SPY", date(2025, 3, 15))
    assert weekend.session == date(2025, 3, 14)


def test_implied_vol_is_sometimes_rich_sometimes_cheap():
    for t in ("SPY", "AAPL", "XLE"):
        path = sim._ticker_path(7, t)
        r = path.log_return
        realized_next = np.array([r[i + 1:i + 22].std() * math.sqrt(252) for i in range(30, len(r) - 22, 5)])
        implied = path.iv30_base[30:len(r) - 22:5]
        rich = implied > realized_next
        assert 0.5 < rich.mean() < 0.95, (t, rich.mean())


# ----------------------------------------------------------------------------- option chains


def test_chain_quotes_are_valid(snap):
    for t, d in snap.tickers.items():
        c = d.chain
        assert c.source == "simulated" and c.underlying == t and c.rate == pytest.approx(0.04)
        assert len(c) > 500
        assert np.all(c.bid >= 0) and np.all(c.ask > c.bid)
        assert np.all(np.isfinite(c.bid) & np.isfinite(c.ask))
        cents = np.round(np.concatenate((c.bid, c.ask)) * 100)
        assert np.allclose(cents, np.concatenate((c.bid, c.ask)) * 100, atol=1e-6)
        traded = c.volume > 0
        assert np.all(np.isnan(c.last[~traded]))
        assert np.all((c.last[traded] >= c.bid[traded] - 1e-9) & (c.last[traded] <= c.ask[traded] + 1e-9))
        assert np.all(c.open_interest >= 0) and np.all(c.volume >= 0)
        assert np.all(c.open_interest == np.floor(c.open_interest)) and np.all(c.volume == np.floor(c.volume))
        # both rights at every (expiry, strike)
        calls = set(zip(c.expiry[c.is_call].tolist(), c.strike[c.is_call].tolist()))
        puts = set(zip(c.expiry[~c.is_call].tolist(), c.strike[~c.is_call].tolist()))
        assert calls == puts
        # strikes reach at least 30 % either side of spot
        for e in c.expiries:
            k = c.strike[c.expiry == e]
            assert k.min() <= 0.71 * d.spot and k.max() >= 1.29 * d.spot
        # deep out-of-the-money options may have no bid; near the money they all do
        near = np.abs(c.strike / d.spot - 1) < 0.03
        assert np.all(c.bid[near & (c.time_to_expiry > 7 / 365)] > 0)


def test_chain_expiries_are_weeklies_and_monthlies_out_to_a_year(snap):
    c = snap.tickers["SPY"].chain
    days = (c.expiries - np.datetime64(AS_OF.date(), "D")).astype(int)
    weekdays = [e.astype(object).weekday() for e in c.expiries]
    assert np.sum(days <= 56) >= 8 and days.min() >= 0
    assert 330 <= days.max() <= 366
    for e, w in zip(c.expiries.astype(object), weekdays):  # Fridays, or Thursday before a holiday Friday
        assert w == 4 or (w == 3 and not sim._is_session(e + timedelta(days=1))), e
    monthly = [e for e in c.expiries if sim._is_monthly(e)]
    assert len(monthly) == 12  # Mar 2025 .. Feb 2026; April's is Thursday the 17th (Good Friday)
    assert np.datetime64("2025-04-17") in monthly


def test_holiday_friday_expiry_moves_to_thursday():
    exp = option_expiries(ny(2025, 4, 1, 12, 0)).astype(object)
    assert date(2025, 4, 17) in exp and date(2025, 4, 18) not in exp  # Good Friday 2025
    assert date(2025, 4, 11) in exp and date(2025, 4, 25) in exp


def test_zero_dte_expiry_is_kept_until_the_close():
    morning = option_expiries(ny(2025, 3, 14, 10, 0)).astype(object)
    evening = option_expiries(ny(2025, 3, 14, 16, 1)).astype(object)
    assert date(2025, 3, 14) in morning and date(2025, 3, 14) not in evening


def test_strike_increments_by_price_level():
    assert [sim._strike_step(p) for p in (8, 40, 120, 475, 900)] == [0.5, 1.0, 2.5, 5.0, 10.0]


def _thirty_day_expiry(chain):
    t = chain.time_to_expiry
    return chain.expiries[np.argmin(np.abs(np.unique(t) - 30 / 365))]


def test_otm_puts_are_richer_than_otm_calls_by_an_oracle_implied_vol(snap):
    """Invert mids with vollib (an independent BSM implementation): negative skew."""
    from vollib.black_scholes_merton.implied_volatility import implied_volatility

    for t in ("SPY", "QQQ", "AAPL", "TSLA", "XLE"):
        c = snap.tickers[t].chain
        e = _thirty_day_expiry(c)
        rows = c.expiry == e
        tt = float(c.time_to_expiry[rows][0])
        fwd = c.spot * math.exp((c.rate - c.dividend_yield) * tt)
        for dist in (0.04, 0.08):
            ivs = {}
            for is_call, target in ((False, fwd * (1 - dist)), (True, fwd * (1 + dist))):
                side = np.flatnonzero(rows & (c.is_call == is_call))
                j = side[np.argmin(np.abs(c.strike[side] - target))]
                ivs[is_call] = (implied_volatility(float(c.mid[j]), c.spot, float(c.strike[j]), tt, c.rate,
                                                   c.dividend_yield, "c" if is_call else "p"), j)
            (put_iv, pj), (call_iv, cj) = ivs[False], ivs[True]
            # strikes sit on a grid, so compare the equal-distance pair only when they are symmetric
            if abs(math.log(c.strike[pj] / fwd) + math.log(c.strike[cj] / fwd)) < 0.01:
                assert put_iv > call_iv, (t, dist, put_iv, call_iv)
            assert c.vendor_iv[pj] > c.vendor_iv[cj]


def test_chain_prices_are_the_bsm_prices_of_the_generating_surface(market, snap):
    for t in ("SPY", "NVDA"):
        c = snap.tickers[t].chain
        surf = market.generating_surface(t, AS_OF)
        assert np.array_equal(np.unique(c.expiry), surf.expiries)
        e_idx = np.searchsorted(surf.expiries, c.expiry)
        iv = surf.implied_vol(c.strike, e_idx)
        assert np.allclose(iv, c.vendor_iv)
        fair = bsm_price(c.spot, c.strike, c.time_to_expiry, c.rate, c.dividend_yield, iv, c.is_call)
        intrinsic = np.maximum(np.where(c.is_call, c.spot - c.strike, c.strike - c.spot), 0)
        fair = np.maximum(fair, intrinsic)
        assert np.all(c.bid <= fair + 1e-9) and np.all(c.ask >= fair - 1e-9)


@pytest.mark.parametrize(
    "ticker, as_of", [("SPY", AS_OF), ("TSLA", ny(2024, 7, 17, 12, 0)), ("T033", ny(2027, 1, 8, 15, 30))]
)
def test_generating_surface_has_no_static_arbitrage(market, ticker, as_of):
    """Undiscounted calls on an evenly spaced strike grid are decreasing and convex (no butterfly
    arbitrage), and total variance at fixed log-moneyness grows with expiry (no calendar arbitrage)."""
    surf = market.generating_surface(ticker, as_of)
    k = np.linspace(-0.6, 0.6, 241)
    w_prev = np.zeros_like(k)
    for e, (t, fwd) in enumerate(zip(surf.t, surf.forward)):
        w = surf.total_variance(fwd * np.exp(k), np.full(len(k), e))
        assert np.all(w > 0)
        assert np.all(w >= w_prev - 1e-12), f"calendar arbitrage at expiry {surf.expiries[e]}"
        w_prev = w
        strikes = fwd * np.linspace(0.45, 1.8, 541)
        vol = surf.implied_vol(strikes, np.full(len(strikes), e))
        calls = bsm_price(fwd, strikes, t, 0.0, 0.0, vol, True)
        assert np.all(np.diff(calls) <= 1e-12)
        assert np.all(np.diff(calls, 2) >= -1e-10 * fwd), f"butterfly arbitrage at expiry {surf.expiries[e]}"


@settings(max_examples=60, deadline=None)
@given(
    w0=st.floats(1e-5, 1.0), skew=st.floats(-0.3, -0.01), curvature=st.floats(0.02, 0.12),
    rho=st.floats(-0.9, -0.2),
)
def test_smile_matches_its_atm_level_and_skew_and_stays_positive(w0, skew, curvature, rho):
    k = np.linspace(-3, 3, 601) * math.sqrt(w0)
    w = smile_total_variance(k, w0, skew, curvature, rho)
    assert np.all(w > 0)
    assert smile_total_variance(0.0, w0, skew, curvature, rho) == pytest.approx(w0, rel=1e-12)
    h = 1e-4 * math.sqrt(w0)
    vol = lambda kk: math.sqrt(float(smile_total_variance(kk, w0, skew, curvature, rho)))  # noqa: E731
    # sqrt(w) = sqrt(w0) (1 + skew x + ...) with x = k / sqrt(w0), so d sqrt(w) / dk = skew at k = 0
    assert (vol(h) - vol(-h)) / (2 * h) == pytest.approx(skew, rel=1e-3)
    assert np.all(w[k < 0] > smile_total_variance(-k[k < 0], w0, skew, curvature, rho))


def test_smile_rejects_a_non_positive_atm_variance_or_curvature():
    with pytest.raises(ValueError):
        smile_total_variance(0.1, 0.0, -0.1, 0.05, -0.5)
    with pytest.raises(ValueError):
        smile_total_variance(0.1, 0.04, -0.1, 0.0, -0.5)


def test_term_structure_is_upward_in_calm_and_inverted_in_stress(market):
    cal = sim._calendar()
    m = sim._market_path(7)
    checked = {"calm": 0, "stress": 0}
    for i in range(700, cal.n_path - 300, 97):
        r = int(m.regime[i])
        if r == sim.CHOPPY or (r == sim.STRESS and m.regime[i - 5] != sim.STRESS):
            continue
        d = cal.sessions[i].astype(object)
        surf = market.generating_surface("SPY", ny(d.year, d.month, d.day, 12, 0))
        atm = np.sqrt(surf.atm_total_variance / surf.t)
        one_m = atm[np.argmin(np.abs(surf.t - 30 / 365))]
        six_m = atm[np.argmin(np.abs(surf.t - 182 / 365))]
        if r == sim.CALM and m.vix.close[i] < 16:
            assert six_m > one_m
            checked["calm"] += 1
        elif r == sim.STRESS:
            assert one_m > six_m
            checked["stress"] += 1
    assert checked["calm"] >= 5 and checked["stress"] >= 3


def test_spreads_widen_in_the_wings_and_for_short_dated_options(snap):
    c = snap.tickers["AAPL"].chain
    rel = (c.ask - c.bid) / np.maximum(c.mid, 1e-9)
    t = c.time_to_expiry
    m = np.log(c.strike / c.spot)
    month = np.abs(t - t[np.argmin(np.abs(t - 30 / 365))]) < 1e-9
    otm = np.where(c.is_call, c.strike > c.spot, c.strike < c.spot)
    atm = month & (np.abs(m) < 0.02) & (c.mid > 0)
    wing = month & otm & (np.abs(m) > 0.15) & (c.mid > 0)
    assert np.median(rel[wing]) > 2 * np.median(rel[atm])
    week = t == np.unique(t)[0]
    assert np.median(rel[week & (np.abs(m) < 0.02)]) > np.median(rel[atm])
    assert (snap.tickers["SPY"].chain.bid == 0).any()  # far wings are realistically no-bid


def test_open_interest_concentrates_near_the_money_and_on_round_strikes(snap):
    for t in ("SPY", "AMZN", "JPM"):
        c = snap.tickers[t].chain
        c = c.select(c.expiry == _thirty_day_expiry(c))
        m = np.abs(np.log(c.strike / c.spot))
        assert np.average(m, weights=c.open_interest) < 0.7 * m.mean()  # 1.0 for OI spread evenly
        step = sim._strike_step(c.spot)
        near = m < 0.1
        round_ = np.isclose(np.remainder(c.strike, 10 * step), 0)
        assert np.median(c.open_interest[near & round_]) > np.median(c.open_interest[near & ~round_])


def test_unusual_volume_strikes_appear_occasionally(market):
    flagged, rows = 0, 0
    for d in range(0, 140, 7):
        day = date(2025, 1, 6) + timedelta(days=d)
        s = market.snapshot(DEFAULT_WATCHLIST, ny(day.year, day.month, day.day, 16, 30))
        for td in s.tickers.values():
            c = td.chain
            longer = c.time_to_expiry > 3 / 365
            unusual = longer & (c.volume >= 500) & (c.volume > 1.5 * c.open_interest)
            flagged += int(unusual.sum())
            rows += int(longer.sum())
    assert 5 <= flagged < 0.005 * rows


def test_intraday_option_volume_accumulates_and_open_interest_holds(market):
    chains = [market.snapshot(["QQQ"], ny(2025, 3, 12, hh, mm)).tickers["QQQ"].chain
              for hh, mm in ((9, 0), (10, 0), (12, 0), (15, 30))]
    keys = [dict(zip(zip(c.expiry.tolist(), c.strike.tolist(), c.is_call.tolist()), zip(c.volume, c.open_interest)))
            for c in chains]
    common = set.intersection(*(set(k) for k in keys))
    assert len(common) > 500
    for key in common:
        vols = [k[key][0] for k in keys]
        assert vols[0] == 0 and vols == sorted(vols)
        assert len({k[key][1] for k in keys}) == 1  # open interest is yesterday's, fixed all day
    assert sum(k[key][0] for key in common for k in keys[1:2]) < sum(keys[3][key][0] for key in common)


def test_todays_mentions_only_grow_through_a_quiet_day(market):
    counts = [market.snapshot(["JPM"], ny(2025, 3, 15, hh, 0)).tickers["JPM"].social.mentions[-1]
              for hh in (1, 6, 12, 18, 23)]
    assert counts == sorted(counts) and counts[-1] > counts[0]


# ----------------------------------------------------------------------------- social


def test_social_feed_shape_and_timing(snap):
    for t, d in snap.tickers.items():
        f = d.social
        assert len(f.dates) == sim.SOCIAL_DAYS == len(f.mentions) == len(f.search_interest)
        assert np.all(np.diff(f.dates) == np.timedelta64(1, "D"))
        assert f.dates[-1] == np.datetime64(AS_OF.date(), "D")
        assert np.all(f.mentions >= 0) and np.all(f.mentions == np.floor(f.mentions))
        assert np.nanmax(f.search_interest) == 100 and np.all(f.search_interest >= 0)
        assert f.posts and all(p.created_at < AS_OF for p in f.posts)
        assert min(p.created_at for p in f.posts) >= datetime(2025, 3, 12, tzinfo=NEW_YORK)
        assert all(p.story_id and p.story_id.startswith(t) for p in f.posts)


def test_a_story_on_several_sources_shares_one_id(market):
    shared = 0
    for d in range(0, 60, 3):
        day = date(2025, 1, 6) + timedelta(days=d)
        s = market.snapshot(["TSLA", "NVDA"], ny(day.year, day.month, day.day, 20, 0))
        for td in s.tickers.values():
            by_story = {}
            for p in td.social.posts:
                by_story.setdefault(p.story_id, set()).add(p.source)
            shared += sum(len(v) > 1 for v in by_story.values())
    assert shared > 10


def test_mention_spikes_follow_big_moves_and_events():
    path = sim._ticker_path(7, "AAPL")
    cal = sim._calendar()
    day = (cal.sessions[: cal.n_path] - np.datetime64(sim.SPAN_START, "D")).astype(int)
    z = np.abs(path.log_return / path.daily_vol)
    mentions = path.mentions[day]
    big = z > 2.5
    assert big.sum() > 20
    assert np.median(mentions[big]) > 1.5 * np.median(mentions[z < 1])
    earnings = path.event_kind == 1
    assert np.median(mentions[earnings]) > 2 * np.median(mentions[~earnings])


_BULLISH = ("beat", "upgrade", "raised", "breaking out", "bought more", "uptrend", "outperforming",
            "buyback", "rallies", "reaffirms")
_BEARISH = ("miss", "downgrade", "cut", "litigation", "probe", "looks weak", "broke support", "downtrend",
            "heavy selling", "warns", "recall", "slides")


def test_post_sentiment_follows_the_situation(market):
    """After a strong 5-day rise the chatter leans bullish, after a fall bearish."""
    score_after_up, score_after_down = [], []
    for d in range(0, 700, 4):
        day = date(2023, 1, 3) + timedelta(days=d)
        td = market.snapshot(["NVDA"], ny(day.year, day.month, day.day, 23, 59)).tickers["NVDA"]
        c = td.bars.close
        todays = [p.text.lower() for p in td.social.posts if p.created_at.date() == day]
        if not todays or td.bars.dates[-1] != np.datetime64(day, "D"):
            continue
        # the day's chatter reacts to the five sessions up to the previous close
        move = math.log(c[-2] / c[-7])
        bull = sum(any(w in x for w in _BULLISH) for x in todays)
        bear = sum(any(w in x for w in _BEARISH) for x in todays)
        if move > 0.08:
            score_after_up.append(bull - bear)
        elif move < -0.08:
            score_after_down.append(bull - bear)
    assert len(score_after_up) > 5 and len(score_after_down) > 5
    assert np.mean(score_after_up) > 0 > np.mean(score_after_down)


def test_finance_words_appear_in_posts():
    texts = []
    for t in ("AAPL", "MSFT", "AMZN", "JPM"):
        path = sim._ticker_path(7, t)
        for d in range(0, 730, 2):
            texts += [p.text.lower() for p in sim._day_posts(7, path, date(2023, 1, 1) + timedelta(days=d))]
    for word in ("downgrade", "upgrade", "beat", "miss", "guidance", "litigation", "buyback"):
        assert sum(word in x for x in texts) >= 3, word
    event_posts = [x for x in texts if "earnings" in x]
    assert len(event_posts) > 20


# ----------------------------------------------------------------------------- inputs and errors


def test_bad_inputs_are_refused_clearly(market):
    with pytest.raises(ValueError, match="timezone-aware"):
        market.snapshot(["SPY"], datetime(2025, 3, 14, 10, 0))
    with pytest.raises(TypeError):
        market.snapshot(["SPY"], date(2025, 3, 14))
    with pytest.raises(ValueError, match="first valid date"):
        market.snapshot(["SPY"], ny(2012, 6, 1))
    with pytest.raises(ValueError, match="after the simulated span"):
        market.snapshot(["SPY"], ny(2031, 1, 2))
    with pytest.raises(TypeError):
        market.snapshot("SPY", AS_OF)
    for bad in ("", "  ", "SP Y", None):
        with pytest.raises(ValueError):
            market.snapshot([bad], AS_OF)
    with pytest.raises(TypeError):
        SimulatedMarket(seed="7")
    with pytest.raises(ValueError):
        market.generating_regime("SPY", date(2031, 6, 1))
    with pytest.raises(ValueError):
        market.generating_regime("VIX", date(2025, 6, 2))


def test_earliest_and_latest_valid_dates_work(market):
    first = sim._calendar().sessions[sim.HISTORY_SESSIONS - 1].astype(object) + timedelta(days=1)
    s = market.snapshot(["SPY"], ny(first.year, first.month, first.day, 0, 1))
    assert len(s.benchmark) == sim.HISTORY_SESSIONS
    last = market.snapshot(["SPY"], ny(2030, 12, 31, 17, 0))
    assert str(last.benchmark.dates[-1]) == "2030-12-31"
    assert last.tickers["SPY"].chain.expiries.max() > np.datetime64("2031-11-01")


def test_duplicate_and_lower_case_tickers_are_normalized(market):
    s = market.snapshot(["spy", "SPY", " aapl "], AS_OF)
    assert list(s.tickers) == ["SPY", "AAPL"]


def test_volatility_index_requested_as_a_ticker(market, snap):
    s = market.snapshot(["VIX", "SPY"], AS_OF)
    v = s.tickers["VIX"]
    assert v.chain is None and v.data_quality and np.array_equal(v.bars.close, snap.vix.close)
    assert v.spot == s.meta["vix_spot"] > 0


def test_ar1_filter_matches_scipy_lfilter():
    from scipy.signal import lfilter

    rng = np.random.default_rng(3)
    for a in (0.5, 0.7, 0.95, 0.998):
        for n in (1, 31, 32, 33, 4000):
            u = rng.standard_normal(n)
            assert np.allclose(sim._ar1(u, a, 0.3), lfilter([0.3], [1.0, -a], u), atol=1e-12)
