"""The historical market: real values on real dates, no look-ahead, recorded vs modelled chains."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from datetime import date, datetime

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from service.chain_report import render_chain_report
from storage.snapshots import decode_snapshot, encode_snapshot
from tests.conftest import SHARED_DATA
from tools.chain import NEW_YORK
from tools.providers.base import Bars, LookAheadError, MarketSnapshot
from tools.providers.history import (NO_SOCIAL, HistoricalMarket, HistoryDataError, as_of_from_date,
                                     history_chain_analysis)

HISTORY = SHARED_DATA / "history"
CBOE = SHARED_DATA / "cboe"


def _raw_close(file: str, day: str, date_format: str) -> float:
    """The CLOSE of `day` read straight from a shared file, without our reader."""
    with (HISTORY / file).open() as handle:
        rows = list(csv.reader(handle))
    header = [c.strip().lower() for c in rows[0]]
    for row in rows[1:]:
        if datetime.strptime(row[0], date_format).date() == date.fromisoformat(day):
            return float(row[header.index("close")])
    raise AssertionError(f"{day} not in {file}")


@pytest.fixture(scope="module")
def market():
    return HistoricalMarket(HISTORY, CBOE)


# ----------------------------------------------------------------------------- real files


@pytest.mark.parametrize("day", ["2022-03-08", "2016-02-11", "2020-03-16"])
def test_snapshot_on_a_real_day_has_that_days_vix_and_spy_close(market, day):
    snapshot = market.snapshot(["SPY"], datetime.fromisoformat(day).replace(hour=17, tzinfo=NEW_YORK))
    assert str(snapshot.benchmark.dates[-1]) == day
    assert snapshot.vix.close[-1] == _raw_close("VIX_History_1990.csv", day, "%m/%d/%Y")
    assert snapshot.vix3m.close[-1] == _raw_close("VIX3M_History.csv", day, "%m/%d/%Y")
    assert snapshot.tickers["SPY"].spot == _raw_close("SPY_daily_ohlcv.csv", day, "%Y-%m-%d")
    assert snapshot.meta["vix_spot"] == snapshot.vix.close[-1]
    assert snapshot.meta["modelled_chains"] == ["SPY"]
    spy = snapshot.tickers["SPY"]
    assert spy.chain.source == "modelled" and spy.chain.spot == spy.spot
    assert f"chain modelled from VIX9D/VIX/VIX3M/SKEW on {day}" in spy.data_quality
    assert len(spy.bars) == 504 and len(spy.atm_iv_history) == 504
    assert np.isfinite(spy.atm_iv_history).all()
    # The 30-day ATM vol sits below VIX (a variance swap prices the skew) but near it.
    assert 0.7 < spy.atm_iv_history[-1] / (snapshot.vix.close[-1] / 100) < 1.0


def test_an_intraday_as_of_sees_only_the_previous_close(market):
    snapshot = market.snapshot(["SPY"], datetime(2022, 3, 8, 10, 0, tzinfo=NEW_YORK))
    assert str(snapshot.benchmark.dates[-1]) == "2022-03-07"
    assert snapshot.vix.close[-1] == _raw_close("VIX_History_1990.csv", "2022-03-07", "%m/%d/%Y")
    assert snapshot.tickers["SPY"].chain.as_of == datetime(2022, 3, 7, 16, 0, tzinfo=NEW_YORK)
    assert snapshot.tickers["SPY"].chain.meta["vix"] == pytest.approx(0.3645)


def test_the_social_feed_is_absent_and_says_so(market):
    snapshot = market.snapshot(["SPY", "VIX"], datetime(2022, 3, 8, 17, 0, tzinfo=NEW_YORK))
    for data in snapshot.tickers.values():
        assert data.social is None
        assert NO_SOCIAL in data.data_quality
    assert snapshot.meta["social"] == NO_SOCIAL


def test_unknown_tickers_and_dates_outside_the_data_say_why(market):
    snapshot = market.snapshot(["SPY", "ZZZZ"], datetime(2022, 3, 8, 17, 0, tzinfo=NEW_YORK))
    assert "ZZZZ" not in snapshot.tickers
    assert snapshot.meta["missing_tickers"] == [f"ZZZZ: no bar file in {HISTORY}"]
    with pytest.raises(HistoryDataError, match=r"no VIX3M data at 2005-03-08: the VIX3M series covers 2009-09-18\.\."):
        market.snapshot(["SPY"], datetime(2005, 3, 8, 17, 0, tzinfo=NEW_YORK))
    with pytest.raises(ValueError, match="timezone-aware"):
        market.snapshot(["SPY"], datetime(2022, 3, 8, 17, 0))


def test_dropped_rows_of_the_shared_files_are_reported(market):
    lines = market.data_report()
    vix = next(line for line in lines if line.startswith("VIX_History_1990.csv"))
    assert "dropped 47" in vix and "open outside [low, high]: 47 (first line 535: 02/11/1992" in vix
    assert any(line.startswith("skipped cboe_put_call_ratios.csv: not a daily bar file") for line in lines)
    # A snapshot is told only about drops dated up to its session.
    early = market.snapshot(["SPY"], datetime(2012, 3, 8, 17, 0, tzinfo=NEW_YORK))
    drops = early.meta["bar_drops"]["VIX"]
    assert drops["file"] == "VIX_History_1990.csv" and drops["dropped"] == {"open outside [low, high]": 47}
    assert drops["examples"]["open outside [low, high]"][0] == "line 535: 02/11/1992,19.240000,18.570000,17.610000,17.700000"


def test_a_recorded_chain_is_used_once_it_was_exported_and_not_before(market):
    after = market.snapshot(["SPY"], datetime(2023, 9, 14, 17, 0, tzinfo=NEW_YORK))
    spy = after.tickers["SPY"]
    assert spy.chain.source == "cboe" and spy.spot == 450.81
    assert after.meta["recorded_chains"] == {"SPY": "spy_quotedata_2023-09-14.csv"}
    assert after.meta["modelled_chains"] == []
    assert spy.bars.close[-1] == pytest.approx(450.81)  # history rescaled to the traded price
    assert any("bars rescaled" in q for q in spy.data_quality)
    # At 16:00 the 16:31 export did not exist yet: the day is modelled, and the refusal is stated.
    before = market.snapshot(["SPY"], datetime(2023, 9, 14, 16, 0, tzinfo=NEW_YORK))
    assert before.tickers["SPY"].chain.source == "modelled"
    assert any("spy_quotedata_2023-09-14.csv was exported 2023-09-14 16:31 EDT, after 2023-09-14 16:00 EDT: not used"
               in q for q in before.tickers["SPY"].data_quality)


def test_snapshots_record_and_decode(market):
    snapshot = market.snapshot(["SPY", "VIX"], datetime(2022, 3, 8, 17, 0, tzinfo=NEW_YORK))
    back = decode_snapshot(encode_snapshot(snapshot))
    assert np.array_equal(back.tickers["SPY"].chain.bid, snapshot.tickers["SPY"].chain.bid)
    assert back.meta["last_session"] == "2022-03-08"
    # One object is encoded once (a backtest encodes the next run's snapshot ahead of it); an
    # equal copy is encoded afresh, to the same bytes.
    assert encode_snapshot(snapshot) is encode_snapshot(snapshot)
    copy = replace(snapshot)
    assert encode_snapshot(copy) is not encode_snapshot(snapshot) and encode_snapshot(copy) == encode_snapshot(snapshot)


def test_the_chain_report_of_a_modelled_day(market):
    result = history_chain_analysis("SPY", date(2022, 3, 8), HISTORY, CBOE)
    assert result.modelled and result.note == "chain modelled from VIX9D/VIX/VIX3M/SKEW on 2022-03-08"
    assert result.analysis.as_of == as_of_from_date(date(2022, 3, 8))
    assert len(result.analysis.surface.fitted_slices) >= 10
    front = result.analysis.surface.term_structure
    assert 0.25 < front.atm_vol_30d < 0.40  # VIX closed at 35.13
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["chain_note"] == result.note and payload["source"] == "modelled"
    console = Console(record=True, width=200)
    render_chain_report(result.analysis, console)
    assert "SPY chain as of 2022-03-08 16:00" in console.export_text()


# ----------------------------------------------------------------------------- look-ahead

SESSIONS = pd.bdate_range("2019-01-01", periods=700)


def _write_series(directory, name, close, volume=True, dates=SESSIONS):
    frame = pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "open": close, "high": close * 1.01,
                          "low": close * 0.99, "close": close})
    if volume:
        frame["volume"] = 1e6
    frame.to_csv(directory / f"{name}.csv", index=False)


def _write_market(directory, acme_close=None):
    rng = np.random.default_rng(3)
    spy = 300 * np.exp(np.cumsum(rng.normal(0, 0.01, len(SESSIONS))))
    _write_series(directory, "SPY", spy)
    _write_series(directory, "ACME", 50 * np.exp(np.cumsum(rng.normal(0, 0.02, len(SESSIONS))))
                  if acme_close is None else acme_close)
    vix = 18 * np.exp(0.3 * np.sin(np.arange(len(SESSIONS)) / 30))
    _write_series(directory, "VIX", vix, volume=False)
    _write_series(directory, "VIX3M", vix * 1.08, volume=False)
    _write_series(directory, "VIX9D", vix * 0.95, volume=False)
    pd.DataFrame({"DATE": SESSIONS.strftime("%m/%d/%Y"), "SKEW": 130 + 5 * np.cos(np.arange(len(SESSIONS)) / 20)}
                 ).to_csv(directory / "SKEW_History.csv", index=False)


def _truncate(source, target, last: str):
    target.mkdir()
    for path in source.iterdir():
        frame = pd.read_csv(path, dtype=str)
        dates = pd.to_datetime(frame.iloc[:, 0], format="mixed")
        frame[dates <= pd.Timestamp(last)].to_csv(target / path.name, index=False)


def _comparable(snapshot: MarketSnapshot) -> bytes:
    return encode_snapshot(replace(snapshot, meta={k: v for k, v in snapshot.meta.items() if k != "data_dir"}))


def test_a_snapshot_is_the_same_whether_or_not_later_bars_exist(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    _write_market(full)
    as_of = datetime(2020, 6, 10, 16, 30, tzinfo=NEW_YORK)
    _truncate(full, tmp_path / "cut", "2020-06-10")
    with_future = HistoricalMarket(full).snapshot(["SPY", "ACME"], as_of)
    without = HistoricalMarket(tmp_path / "cut").snapshot(["SPY", "ACME"], as_of)
    # Bars, spot, chains, IV history, betas, data quality, regime inputs: byte for byte.
    assert _comparable(with_future) == _comparable(without)
    assert str(with_future.benchmark.dates[-1]) == "2020-06-10"


def test_a_planted_future_bar_never_shows_and_moved_into_the_past_it_does(tmp_path):
    as_of = datetime(2020, 6, 10, 16, 30, tzinfo=NEW_YORK)
    rng = np.random.default_rng(5)
    acme = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, len(SESSIONS))))
    future = int(np.searchsorted(SESSIONS, pd.Timestamp("2020-06-11")))
    acme[future] = 5000.0  # a price no past day has
    planted = tmp_path / "planted"
    planted.mkdir()
    _write_market(planted, acme)
    snapshot = HistoricalMarket(planted).snapshot(["ACME"], as_of)
    acme_data = snapshot.tickers["ACME"]
    assert acme_data.bars.dates.max() == np.datetime64("2020-06-10")
    assert acme_data.bars.high.max() < 5000.0 and acme_data.spot < 5000.0
    assert acme_data.chain.strike.max() < 1000.0  # the chain was not priced off the future price
    # The same bar moved into the past (re-dated to the Saturday before): now the snapshot must show it,
    # which proves the check above can see a leak.
    moved_dates = SESSIONS.copy().to_series()
    moved_dates.iloc[future] = pd.Timestamp("2020-06-06")
    moved = tmp_path / "moved"
    moved.mkdir()
    _write_market(moved, acme)
    _write_series(moved, "ACME", acme, dates=pd.DatetimeIndex(moved_dates))
    leaked = HistoricalMarket(moved).snapshot(["ACME"], as_of).tickers["ACME"]
    assert leaked.bars.high.max() > 5000.0


def test_the_snapshot_refuses_a_bar_or_chain_after_as_of(tmp_path):
    _write_market(tmp_path)
    as_of = datetime(2020, 6, 10, 16, 30, tzinfo=NEW_YORK)
    snapshot = HistoricalMarket(tmp_path).snapshot(["ACME"], as_of)
    acme = snapshot.tickers["ACME"]
    b = acme.bars
    one_more = Bars(np.append(b.dates, np.datetime64("2020-06-11")), *(np.append(getattr(b, f), getattr(b, f)[-1])
                    for f in ("open", "high", "low", "close", "volume")))
    with pytest.raises(LookAheadError, match="ACME has a bar dated 2020-06-11"):
        replace(snapshot, tickers={"ACME": replace(acme, bars=one_more)})
    late_chain = replace(acme.chain, as_of=datetime(2020, 6, 11, 16, 0, tzinfo=NEW_YORK))
    with pytest.raises(LookAheadError, match="ACME chain is as of 2020-06-11"):
        replace(snapshot, tickers={"ACME": replace(acme, chain=late_chain)})


def test_a_tickers_dropped_rows_show_up_to_its_session_only(tmp_path):
    _write_market(tmp_path)
    acme = tmp_path / "ACME.csv"
    lines = acme.read_text().splitlines()
    i_past = 1 + int(np.searchsorted(SESSIONS, pd.Timestamp("2020-03-02")))
    i_future = 1 + int(np.searchsorted(SESSIONS, pd.Timestamp("2020-07-01")))
    for i in (i_past, i_future):  # high below low
        d, o, h, lo, c, v = lines[i].split(",")
        lines[i] = ",".join([d, o, lo, h, c, v])
    bad_past = lines[i_past]
    acme.write_text("\n".join(lines) + "\n")
    snapshot = HistoricalMarket(tmp_path).snapshot(["ACME"], datetime(2020, 6, 10, 16, 30, tzinfo=NEW_YORK))
    expected = (f"bars: ACME.csv had 1 invalid rows up to 2020-06-10, dropped "
                f"(high below low: 1, first line {i_past + 1}: {bad_past})")
    assert expected in snapshot.tickers["ACME"].data_quality
    assert snapshot.meta["bar_drops"]["ACME"]["dropped"] == {"high below low": 1}


def test_other_tickers_scale_the_index_surface_and_say_so(tmp_path):
    _write_market(tmp_path)
    snapshot = HistoricalMarket(tmp_path).snapshot(["SPY", "ACME"], datetime(2020, 6, 10, 16, 30, tzinfo=NEW_YORK))
    spy, acme = snapshot.tickers["SPY"], snapshot.tickers["ACME"]
    ratio = acme.chain.meta["vol_ratio_to_spx"]
    assert 1.5 < ratio <= 4.0  # ACME's 2% daily moves against SPY's 1%
    assert any(q.startswith("chain modelled from VIX9D/VIX/VIX3M/SKEW on 2020-06-10 (ACME vol = S&P 500 model vol x")
               for q in acme.data_quality)
    atm_spy = spy.atm_iv_history[-1]
    assert acme.atm_iv_history[-1] == pytest.approx(atm_spy * ratio, rel=0.05)
    assert acme.chain.meta["smile_skew"] > spy.chain.meta["smile_skew"]  # single names: less skew
    assert acme.sector == "Unknown" and math.isfinite(acme.beta)


def test_the_fingerprint_changes_with_the_files(tmp_path):
    _write_market(tmp_path)
    first = HistoricalMarket(tmp_path).fingerprint()
    assert HistoricalMarket(tmp_path).fingerprint() == first and len(first) == 64
    acme = tmp_path / "ACME.csv"
    acme.write_text(acme.read_text().replace("1000000.0", "1000001.0", 1))
    assert HistoricalMarket(tmp_path).fingerprint() != first


def test_a_chain_before_vix9d_and_vix3m_and_before_spy_options_says_so(market):
    history = market.chain("SPY", as_of_from_date(date(2003, 3, 7)))
    assert history.modelled and history.chain.meta["priced_from"] == "VIX/SKEW"
    assert history.note.startswith("chain modelled from VIX/SKEW on 2003-03-07")
    assert "SPY options were first listed on 2005-01-10: this chain is hypothetical" in history.note


def test_a_users_directory_of_stocks_borrows_the_market_series(tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    _write_market(index)
    own = tmp_path / "mine"
    own.mkdir()
    (index / "ACME.csv").rename(own / "ACME.csv")
    market = HistoricalMarket(own, index_dir=index)
    snapshot = market.snapshot(["ACME"], datetime(2020, 6, 10, 16, 30, tzinfo=NEW_YORK))
    assert snapshot.meta["from_index_dir"] == ["VIX", "VIX3M", "VIX9D", "SKEW", "SPY"]
    assert snapshot.tickers["ACME"].chain.source == "modelled"
    assert snapshot.meta["index_dir"] == str(index)


def test_a_ticker_whose_chain_cannot_be_modelled_keeps_its_bars(tmp_path):
    _write_market(tmp_path)
    (tmp_path / "SKEW_History.csv").unlink()
    market = HistoricalMarket(tmp_path, index_dir=tmp_path)
    snapshot = market.snapshot(["ACME"], datetime(2020, 6, 10, 16, 30, tzinfo=NEW_YORK))
    acme = snapshot.tickers["ACME"]
    assert acme.chain is None and len(acme.bars) > 300
    assert "no option chain: ACME on 2020-06-10: no SKEW close on 2020-06-10: cannot model the smile" in acme.data_quality


def test_a_strike_once_listed_stays_listed_as_the_expiry_nears_and_spot_moves(market):
    """The 2020 backtest sold a 257 put for 2020-02-28 on 2020-01-28; as spot rose 2% and time
    passed, a range drawn from today's spot and time to expiry alone dropped it (the position
    could not be marked, no exit fired). Exchanges do not delist strikes: it is quoted every day."""
    from tools.market_hours import sessions_between

    expiry = np.datetime64("2020-02-28")
    for day, _, close in sessions_between(date(2020, 1, 28), date(2020, 2, 27)):
        chain = market.chain("SPY", close).chain
        listed = chain.strike[(chain.expiry == expiry) & ~chain.is_call]
        assert 257.0 in listed, day
