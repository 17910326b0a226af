"""A decision run's market from the broker: `market: ibkr` or `market: tastytrade`.

The graph reads its market through a synchronous `snapshot(tickers, as_of)`; ib_async and the
tastytrade SDK are asynchronous. So the whole snapshot is *prefetched* asynchronously, once, before
the analysts run — daily bars (the tickers, SPY, VIX and VIX3M), each ticker's listed expirations and
strikes, and quotes with Greeks and open interest for the contracts a decision can use — into the
same `MarketSnapshot` every other market gives, which the run then records (a resumed run or a
replay never asks the broker again). `snapshot` runs the prefetch on its own event loop (in a
worker thread when the caller is itself inside a running loop).

What is asked for: expirations between `MIN_DTE` and `MAX_DTE` days (at most `MAX_EXPIRIES`), and per
expiry the `MAX_STRIKES` listed strikes nearest the last close within ±`STRIKE_BAND`, calls and puts.

- IBKR (`brokers.ibkr_market`, on a read-only connection of its own, client id + 1):
  `reqSecDefOptParams`, qualified contracts, market-data snapshots with IB's model Greeks — live or
  delayed (`market_data: delayed` asks for delayed data where the account has no subscription;
  each ticker's data_quality and `meta["market_data"]` say which it was) — open interest from
  generic tick 101, and `reqHistoricalData` daily bars (VIX and VIX3M as CBOE indices).
- tastytrade (`brokers.tastytrade_market`): the nested option chain, `Quote`, `Greeks` and `Summary`
  (open interest) events from DXLink, and daily `Candle` events for the bars.

Broker data is today's: a snapshot more than `LIVE_TOLERANCE` away from the clock is refused (the
files market decides on the past). Today's bar is left out until the close (no look-ahead), and
option volume is not asked for (the flow analyst reads open interest, and says so).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Sequence

import numpy as np

from brokers.base import BrokerError
from config.connections import Connections
from domain.orders import LegQuote, OptionContract
from tools.chain import NEW_YORK, OptionChain
from tools.providers.base import Bars, MarketSnapshot, TickerData, last_complete_session

MIN_DTE, MAX_DTE, MAX_EXPIRIES = 5, 120, 8
MAX_STRIKES, STRIKE_BAND = 40, 0.20
HISTORY_SESSIONS = 300
LIVE_TOLERANCE = timedelta(minutes=5)
BENCHMARK = "SPY"
NO_SOCIAL = "the broker's market has no social data"


class BrokerMarketError(ValueError):
    """The broker could not give the market a run needs; one line saying what and why."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def choose_contracts(ticker: str, expirations: Sequence[date], strikes: Sequence[Decimal], spot: float, today: date,
                     multiplier: int = 100) -> list[OptionContract]:
    """The contracts a decision can use: see the module docstring."""
    chosen = sorted(e for e in expirations if MIN_DTE <= (e - today).days <= MAX_DTE)[:MAX_EXPIRIES]
    band = [k for k in strikes if abs(float(k) / spot - 1.0) <= STRIKE_BAND]
    near = sorted(sorted(band, key=lambda k: abs(float(k) - spot))[:MAX_STRIKES])
    return [OptionContract(ticker, e, k, right, multiplier) for e in chosen for k in near for right in ("C", "P")]


def chain_from_quotes(ticker: str, as_of: datetime, spot: float, quotes: dict[OptionContract, LegQuote],
                      open_interest: dict[OptionContract, float], *, source: str, meta: dict) -> OptionChain:
    contracts = sorted(quotes, key=lambda c: (c.expiry, c.strike, c.right))

    def column(values) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=float)

    rows = [quotes[c] for c in contracts]
    return OptionChain(
        underlying=ticker, as_of=as_of, spot=spot,
        expiry=np.array([np.datetime64(c.expiry, "D") for c in contracts], dtype="datetime64[D]"),
        strike=column(c.strike for c in contracts), is_call=np.array([c.right == "C" for c in contracts], dtype=bool),
        bid=column(q.bid for q in rows), ask=column(q.ask for q in rows), last=np.full(len(rows), np.nan),
        volume=np.full(len(rows), np.nan), open_interest=column(open_interest.get(c) for c in contracts),
        multiplier=float(contracts[0].multiplier) if contracts else 100.0,
        vendor_iv=column(q.iv for q in rows), vendor_delta=column(q.delta for q in rows),
        vendor_gamma=column(q.gamma for q in rows), source=source, meta=meta)


def _spot(quotes: dict[OptionContract, LegQuote], bars: Bars) -> tuple[float, str | None]:
    prices = [float(q.underlying_price) for q in quotes.values() if q.underlying_price]
    if prices:
        return float(np.median(prices)), None
    return float(bars.close[-1]), "no underlying price came with the option quotes: spot is the last daily close"


def _beta(bars: Bars, benchmark: Bars) -> float:
    from tools.providers.history import _beta as beta

    return beta(bars, benchmark)


def _run_sync(make_coroutine):
    """Run a coroutine to completion from synchronous code, inside a running loop or not."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coroutine())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make_coroutine())).result()


class BrokerMarket:
    """See the module docstring. `kind`: "ibkr" or "tastytrade"."""

    def __init__(self, kind: str, connections: Connections, *, clock: Callable[[], datetime] = utc_now,
                 history_sessions: int = HISTORY_SESSIONS, quote_timeout: float = 5.0):
        if kind not in ("ibkr", "tastytrade"):
            raise ValueError(f"no broker market {kind!r}")
        self.kind = self.name = kind
        self.connections = connections
        self.clock = clock
        self.history_sessions = history_sessions
        self.quote_timeout = quote_timeout

    def source(self) -> dict:
        return {"market": self.kind}

    def snapshot(self, tickers: Sequence[str], as_of: datetime) -> MarketSnapshot:
        now = self.clock()
        if abs(now - as_of) > LIVE_TOLERANCE:
            raise BrokerMarketError(
                f"market {self.kind} is read live: a run as of {as_of.astimezone(NEW_YORK):%Y-%m-%d %H:%M %Z} "
                f"(now {now.astimezone(NEW_YORK):%Y-%m-%d %H:%M %Z}) cannot be made on it; decide on the past "
                "with --market files")
        fetch = self._ibkr if self.kind == "ibkr" else self._tastytrade
        try:
            return _run_sync(lambda: fetch(list(tickers), as_of))
        except (BrokerError, OSError, asyncio.TimeoutError, TimeoutError) as exc:
            problem = f"market {self.kind}: {type(exc).__name__}: {exc or 'no answer in time'}"
        # Raised outside the handler: a timeout (an OSError) in the chain would read as a lost database.
        raise BrokerMarketError(problem)

    # ---------------------------------------------------------------- assembly
    def _assemble(self, as_of: datetime, series: dict[str, Bars], chains: dict[str, tuple],
                  meta: dict) -> MarketSnapshot:
        last = last_complete_session(as_of)
        bars = {symbol: b.until(last) for symbol, b in series.items()}  # today's bar is not complete
        benchmark = bars[BENCHMARK]
        data = {}
        for ticker, (chain, quality) in chains.items():
            own = bars[ticker]
            data[ticker] = TickerData(
                ticker=ticker, sector="Index" if ticker == BENCHMARK else "Unknown",
                beta=1.0 if ticker == BENCHMARK else _beta(own, benchmark), spot=chain.spot, bars=own, chain=chain,
                atm_iv_history=None, social=None, data_quality=tuple(quality) + (NO_SOCIAL,))
        return MarketSnapshot(as_of=as_of, provider=self.name, tickers=data, vix=bars["VIX"], vix3m=bars["VIX3M"],
                              benchmark=benchmark, meta=meta)

    # ---------------------------------------------------------------- IBKR
    async def _ibkr(self, tickers: list[str], as_of: datetime) -> MarketSnapshot:
        from brokers.ibkr_market import IbkrDataConnection, IbkrMarketData

        connection = IbkrDataConnection(self.connections.ibkr)
        market = IbkrMarketData(connection)
        today = as_of.astimezone(NEW_YORK).date()
        series, chains, kinds = {}, {}, {}
        try:
            for symbol in dict.fromkeys(["VIX", "VIX3M", BENCHMARK, *tickers]):
                series[symbol] = await market.daily_bars(symbol, self.history_sessions)
            for ticker in tickers:
                params = await market.chain_parameters(ticker)
                contracts = choose_contracts(ticker, params.expirations, params.strikes,
                                             float(series[ticker].close[-1]), today, params.multiplier)
                got = await market.quotes(contracts)
                interest = await market.open_interest(list(got.quotes)) if got.quotes else {}
                spot, spot_note = _spot(got.quotes, series[ticker])
                kinds[ticker] = got.data_type
                chain = chain_from_quotes(ticker, as_of, spot, got.quotes, interest, source="ibkr",
                                          meta={"market_data": got.data_type, "missing": got.missing[:20]})
                chains[ticker] = (chain, _quality(
                    f"chain from IBKR: {len(got.quotes)} of {len(contracts)} contracts quoted, {got.data_type} "
                    f"market data; open interest for {len(interest)}; no option volume asked for",
                    "daily bars from IBKR reqHistoricalData (TRADES, regular hours)", got.missing, spot_note))
        finally:
            await connection.close()
        return self._assemble(as_of, series, chains, {"market": "ibkr", "market_data": kinds})

    # ---------------------------------------------------------------- tastytrade
    async def _tastytrade(self, tickers: list[str], as_of: datetime) -> MarketSnapshot:
        from brokers.tastytrade import TastytradeSession
        from brokers.tastytrade_market import TastytradeMarketData

        session = TastytradeSession(self.connections.tastytrade)
        market = TastytradeMarketData(session)
        today = as_of.astimezone(NEW_YORK).date()
        series, chains = {}, {}
        try:
            await session.ensure_connected()
            series = await market.daily_bars(list(dict.fromkeys(["VIX", "VIX3M", BENCHMARK, *tickers])),
                                             self.history_sessions, as_of, timeout=self.quote_timeout)
            for ticker in tickers:
                listed = await market.chain(ticker)
                contracts = choose_contracts(ticker, sorted({o.contract.expiry for o in listed}),
                                             sorted({o.contract.strike for o in listed}),
                                             float(series[ticker].close[-1]), today,
                                             listed[0].contract.multiplier if listed else 100)
                listed_set = {o.contract for o in listed}
                contracts = [c for c in contracts if c in listed_set]
                got = await market.quotes(contracts, timeout=self.quote_timeout, open_interest=True)
                spot, spot_note = _spot(got.quotes, series[ticker])
                chain = chain_from_quotes(ticker, as_of, spot, got.quotes, got.open_interest, source="tastytrade",
                                          meta={"market_data": "live", "missing": got.missing[:20]})
                chains[ticker] = (chain, _quality(
                    f"chain from tastytrade: {len(got.quotes)} of {len(contracts)} contracts quoted by DXLink "
                    f"(Quote, Greeks); open interest for {len(got.open_interest)} (Summary); no option volume asked for",
                    "daily bars from DXLink daily candles", got.missing, spot_note))
        finally:
            await session.close()
        return self._assemble(as_of, series, chains, {"market": "tastytrade", "market_data": "live"})


def _quality(chain_note: str, bars_note: str, missing: list, spot_note: str | None) -> list[str]:
    """A broker-fed ticker's data_quality: where its chain and bars came from, what was not quoted."""
    quality = [chain_note, bars_note]
    if missing:
        quality.append(f"{len(missing)} contracts without a quote, first: {missing[0]}")
    if spot_note:
        quality.append(spot_note)
    return quality
