"""Market data from tastytrade through its SDK: the nested option chain (REST) and quotes with
Greeks from the DXLink streamer (WebSocket), on a `TastytradeBroker`'s (or a market-data
`TastytradeSession`'s) session.

- `chain(ticker)`: every listed contract of the ticker's standard chain with its OCC and DXLink
  streamer symbols (`/option-chains/{symbol}/nested`).
- `quotes(contracts)`: subscribes `Quote` and `Greeks` for those contracts on one DXLink connection
  and waits (up to `timeout` seconds) until each has both; a contract still without a two-sided
  quote is named in `missing` rather than priced from nothing. Greeks are dxFeed's (delta, gamma;
  vega per vol point and theta per day, as dxFeed quotes them; `volatility` is the option's IV). The
  underlying's own `Quote` gives each quote's underlying price (its mid) when it arrives in time;
  with `open_interest=True`, `Summary` events give each contract's open interest.
- `daily_bars(symbols, sessions, as_of)`: daily `Candle` events (regular hours) from DXLink, read
  until each symbol's snapshot ends (dxFeed's SNAPSHOT_END / SNAPSHOT_SNIP flag) or `timeout`.
  Symbols are asked for as given (VIX and VIX3M too): not checked against a live dxFeed here.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
from tastytrade import DXLinkStreamer
from tastytrade.dxfeed import Candle, Greeks, Quote, Summary
from tastytrade.dxfeed.event import SNAPSHOT_END, SNAPSHOT_SNIP
from tastytrade.instruments import NestedOptionChain

from brokers.base import BrokerError
from domain.orders import LegQuote, OptionContract
from brokers.tastytrade import TastytradeBroker, parse_occ
from tools.chain import NEW_YORK
from tools.providers.base import Bars


@dataclass(frozen=True)
class ListedOption:
    contract: OptionContract
    symbol: str           # OCC
    streamer_symbol: str  # DXLink


@dataclass
class StreamedQuotes:
    quotes: dict[OptionContract, LegQuote] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    open_interest: dict[OptionContract, float] = field(default_factory=dict)


def _float(value) -> float | None:
    return None if value is None else float(value)


class TastytradeMarketData:
    def __init__(self, broker: TastytradeBroker):
        self.broker = broker
        self._listed: dict[OptionContract, ListedOption] = {}

    async def chain(self, ticker: str) -> list[ListedOption]:
        await self.broker.ensure_connected()
        chains = await self.broker._call(lambda: NestedOptionChain.get(self.broker.session, ticker))
        standard = [c for c in chains if c.root_symbol == ticker.upper()] or chains
        if not standard:
            raise BrokerError(f"tastytrade lists no option chain for {ticker}")
        chain = standard[0]
        listed = []
        for expiration in chain.expirations:
            for strike in expiration.strikes:
                for symbol, streamer in ((strike.call, strike.call_streamer_symbol),
                                         (strike.put, strike.put_streamer_symbol)):
                    option = ListedOption(parse_occ(symbol, chain.shares_per_contract), symbol, streamer)
                    listed.append(option)
                    self._listed[option.contract] = option
        return listed

    async def quotes(self, contracts: list[OptionContract], timeout: float = 5.0, *,
                     open_interest: bool = False) -> StreamedQuotes:
        out = StreamedQuotes()
        for ticker in {c.ticker for c in contracts if c not in self._listed}:
            await self.chain(ticker)
        wanted = {self._listed[c].streamer_symbol: c for c in contracts if c in self._listed}
        out.missing += [f"{c.label()}: not listed at tastytrade" for c in contracts if c not in self._listed]
        if not wanted:
            return out
        underlyings = sorted({c.ticker for c in wanted.values()})
        quotes: dict[str, Quote] = {}
        greeks: dict[str, Greeks] = {}
        summaries: dict[str, Summary] = {}
        async with DXLinkStreamer(self.broker.session) as streamer:
            await streamer.subscribe(Quote, list(wanted) + underlyings)
            await streamer.subscribe(Greeks, list(wanted))
            if open_interest:
                await streamer.subscribe(Summary, list(wanted))

            async def collect(kind, into, symbols):
                while not set(symbols) <= set(into):
                    event = await streamer.get_event(kind)
                    if event.event_symbol in symbols:
                        into[event.event_symbol] = event

            waits = [collect(Quote, quotes, set(wanted) | set(underlyings)), collect(Greeks, greeks, set(wanted))]
            if open_interest:
                waits.append(collect(Summary, summaries, set(wanted)))
            try:
                await asyncio.wait_for(asyncio.gather(*waits), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                pass  # whatever has not arrived is named below
        now = datetime.now(timezone.utc)
        spots = {}
        for ticker in underlyings:
            quote = quotes.get(ticker)
            if quote is not None and quote.bid_price and quote.ask_price:
                spots[ticker] = ((Decimal(quote.bid_price) + Decimal(quote.ask_price)) / 2).quantize(Decimal("0.0001"))
        for symbol, contract in wanted.items():
            quote, greek = quotes.get(symbol), greeks.get(symbol)
            if quote is None or quote.bid_price is None or quote.ask_price is None or quote.ask_price <= 0 \
                    or quote.bid_price > quote.ask_price:
                out.missing.append(f"{contract.label()}: no two-sided quote from DXLink within {timeout:g}s")
                continue
            out.quotes[contract] = LegQuote(
                bid=Decimal(quote.bid_price), ask=Decimal(quote.ask_price), underlying_price=spots.get(contract.ticker),
                delta=_float(greek.delta) if greek else None, gamma=_float(greek.gamma) if greek else None,
                vega=_float(greek.vega) if greek else None, theta=_float(greek.theta) if greek else None,
                iv=_float(greek.volatility) if greek else None, as_of=now)
            summary = summaries.get(symbol)
            if summary is not None and summary.open_interest is not None and summary.open_interest >= 0:
                out.open_interest[contract] = float(summary.open_interest)
        return out

    async def daily_bars(self, symbols: list[str], sessions: int, as_of: datetime,
                         timeout: float = 5.0) -> dict[str, Bars]:
        """The last `sessions` daily bars of each symbol up to `as_of`, oldest first."""
        await self.broker.ensure_connected()
        start = as_of - timedelta(days=sessions * 7 // 5 + 10)
        candles: dict[str, dict[int, Candle]] = {s: {} for s in symbols}
        ended: set[str] = set()
        async with DXLinkStreamer(self.broker.session) as streamer:
            await streamer.subscribe_candle(symbols, "1d", start_time=start)

            async def collect():
                while len(ended) < len(symbols):
                    event = await streamer.get_event(Candle)
                    symbol = event.event_symbol.split("{")[0]
                    if symbol not in candles:
                        continue
                    if event.remove:
                        candles[symbol].pop(event.time, None)
                    elif event.close:
                        candles[symbol][event.time] = event
                    if event.event_flags & (SNAPSHOT_END | SNAPSHOT_SNIP):
                        ended.add(symbol)

            try:
                await asyncio.wait_for(collect(), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                pass  # a symbol with no candle at all is refused below
        out = {}
        for symbol in symbols:
            rows = [candles[symbol][t] for t in sorted(candles[symbol])][-sessions:]
            if not rows:
                raise BrokerError(f"tastytrade sent no daily candles for {symbol} within {timeout:g}s")
            out[symbol] = Bars(
                dates=np.array([np.datetime64(datetime.fromtimestamp(r.time / 1000, NEW_YORK).date(), "D")
                                for r in rows]),
                open=np.array([float(r.open) for r in rows]), high=np.array([float(r.high) for r in rows]),
                low=np.array([float(r.low) for r in rows]), close=np.array([float(r.close) for r in rows]),
                volume=np.array([float(r.volume) if r.volume is not None else np.nan for r in rows]))
        return out
