"""Market data from tastytrade through its SDK: the nested option chain (REST) and quotes with
Greeks from the DXLink streamer (WebSocket), on a `TastytradeBroker`'s session.

- `chain(ticker)`: every listed contract of the ticker's standard chain with its OCC and DXLink
  streamer symbols (`/option-chains/{symbol}/nested`).
- `quotes(contracts)`: subscribes `Quote` and `Greeks` for those contracts on one DXLink connection
  and waits (up to `timeout` seconds) until each has both; a contract still without a two-sided
  quote is named in `missing` rather than priced from nothing. Greeks are dxFeed's (delta, gamma;
  vega per vol point and theta per day, as dxFeed quotes them; `volatility` is the option's IV).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

from tastytrade import DXLinkStreamer
from tastytrade.dxfeed import Greeks, Quote
from tastytrade.instruments import NestedOptionChain

from brokers.base import BrokerError
from domain.orders import LegQuote, OptionContract
from brokers.tastytrade import TastytradeBroker, parse_occ


@dataclass(frozen=True)
class ListedOption:
    contract: OptionContract
    symbol: str           # OCC
    streamer_symbol: str  # DXLink


@dataclass
class StreamedQuotes:
    quotes: dict[OptionContract, LegQuote] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


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

    async def quotes(self, contracts: list[OptionContract], timeout: float = 5.0) -> StreamedQuotes:
        out = StreamedQuotes()
        for ticker in {c.ticker for c in contracts if c not in self._listed}:
            await self.chain(ticker)
        wanted = {self._listed[c].streamer_symbol: c for c in contracts if c in self._listed}
        out.missing += [f"{c.label()}: not listed at tastytrade" for c in contracts if c not in self._listed]
        if not wanted:
            return out
        quotes: dict[str, Quote] = {}
        greeks: dict[str, Greeks] = {}
        async with DXLinkStreamer(self.broker.session) as streamer:
            await streamer.subscribe(Quote, list(wanted))
            await streamer.subscribe(Greeks, list(wanted))

            async def collect(kind, into):
                while not set(wanted) <= set(into):
                    event = await streamer.get_event(kind)
                    if event.event_symbol in wanted:
                        into[event.event_symbol] = event

            try:
                await asyncio.wait_for(asyncio.gather(collect(Quote, quotes), collect(Greeks, greeks)), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                pass  # whatever has not arrived is named below
        now = datetime.now(timezone.utc)
        for symbol, contract in wanted.items():
            quote, greek = quotes.get(symbol), greeks.get(symbol)
            if quote is None or quote.bid_price is None or quote.ask_price is None or quote.ask_price <= 0 \
                    or quote.bid_price > quote.ask_price:
                out.missing.append(f"{contract.label()}: no two-sided quote from DXLink within {timeout:g}s")
                continue
            out.quotes[contract] = LegQuote(
                bid=Decimal(quote.bid_price), ask=Decimal(quote.ask_price),
                delta=_float(greek.delta) if greek else None, gamma=_float(greek.gamma) if greek else None,
                vega=_float(greek.vega) if greek else None, theta=_float(greek.theta) if greek else None,
                iv=_float(greek.volatility) if greek else None, as_of=now)
        return out
