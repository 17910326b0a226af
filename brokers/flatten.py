"""Flatten risk: buy-to-close orders for every short option position, staged for approval like
any other order (nothing here transmits anything).

What is closed:
- Default (`with_protection=False`): one single-leg buy-to-close order per short option position,
  its whole quantity. Long options are left alone: their risk is the premium already paid, and
  the short legs are where the undefined or assignment risk lives.
- `with_protection=True`: shorts and the long options protecting them are closed together, one
  combo per (underlying, expiry): for each right, long contracts of the same expiry are added as
  sell-to-close legs, nearest strike first, up to the number of short contracts of that right
  (a vertical, an iron condor or a butterfly closes as the structure it was). Longs of other
  expiries (calendar backs) are not paired. Closing the wings with the shorts avoids leaving
  orphan long options behind, at the cost of crossing their spreads too.

Prices per share per unit, signed (+ pay / - receive): `mid_price` and `natural_price` from the
quotes; `limit_price` is the mid rounded to the cent in our favour, like a staged opening limit —
execute it with the limit walker and a short deadline to move toward the natural price.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from functools import reduce

from brokers.base import QuoteUnavailable
from domain.orders import CENT, SHARES, BrokerPosition, ComboLeg, LegQuote, Order, QuoteSource
from domain.decision import OptionLeg, SizedTrade, TradeProposal
from tools.chain import NEW_YORK
from tools.structures import breakevens, max_profit_loss, net_greeks, pnl_at_expiry

FLATTEN_STRUCTURE = "flatten_close"
FLATTEN_RATIONALE = "Flatten risk: buy to close short options"


@dataclass(frozen=True)
class FlattenOrder:
    ticker: str
    legs: tuple[OptionLeg, ...]  # side "buy" closes a short, "sell" closes a protecting long
    quantity: int
    mid_price: Decimal
    natural_price: Decimal
    limit_price: Decimal
    underlying_price: Decimal | None
    multiplier: int
    closes: tuple[str, ...]  # the positions this order closes, e.g. "SPY 2026-12-18 580P x -3"
    rationale: str = FLATTEN_RATIONALE
    structure: str = FLATTEN_STRUCTURE  # the book stages exits as "close_<structure>"

    @property
    def is_shares(self) -> bool:
        """Flattens delivered shares (the book's `delivered_shares` exit), not options."""
        return self.legs[0].right == SHARES

    def combo_legs(self) -> tuple[ComboLeg, ...]:
        return tuple(ComboLeg.from_any(leg) for leg in self.legs)

    def combo_order(self, order_id: str, *, limit_price: Decimal | None = None, time_in_force="DAY") -> Order:
        return Order(order_id=order_id, ticker=self.ticker, legs=self.combo_legs(), quantity=self.quantity,
                     limit_price=self.limit_price if limit_price is None else limit_price,
                     time_in_force=time_in_force, multiplier=self.multiplier)

    def _far_price(self, dte: int) -> Decimal:
        ivs = [leg.iv for leg in self.legs if leg.iv is not None and math.isfinite(leg.iv) and leg.iv > 0]
        vol = max(ivs) if ivs else 1.0  # no IV at all: a 100% vol stands in, and says so via the price
        return (self.underlying_price * Decimal(str(math.exp(3 * vol * math.sqrt(dte / 365.0))))).quantize(Decimal("0.01"))

    def to_sized_trade(self, as_of: datetime) -> SizedTrade:
        """A `SizedTrade` to stage through `OrderRepository.stage` (structure "flatten_close").

        The closing trade is not Kelly-sized: kelly/applied fractions, win rate and payoff ratio
        are 0 and `caps_applied` says why; probability of profit is not estimated (0.0) because
        a close is judged by the risk it removes, not as a standalone bet. max profit/loss and
        breakevens are those of the closing legs on their own at the mid. A leg without a Greek
        makes that net Greek 0.0 and the rationale names it.
        """
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        if self.underlying_price is None:
            raise QuoteUnavailable(f"{self.ticker}: an underlying price is needed to stage a flatten order")
        if self.is_shares:
            return self._shares_trade()
        greeks = net_greeks(self.legs)
        notes = [self.rationale, "closes " + ", ".join(self.closes)]
        dte = (min(leg.expiry for leg in self.legs) - as_of.astimezone(NEW_YORK).date()).days
        two_expiries = len({leg.expiry for leg in self.legs}) > 1
        if two_expiries:
            # Closing a calendar or diagonal: legs in two expiries have no expiry payoff, and the
            # surface that values the far legs (tools/two_expiry.py) is not part of a close. The
            # closing premium stands for both extremes, and the note says so.
            premium = (abs(self.mid_price) * self.multiplier).quantize(Decimal("0.01"))
            max_profit = max_loss = premium
            notes.append("two expiries: no expiry payoff; max profit and loss shown as the closing premium")
            bes: list[float] = []
        else:
            extremes = max_profit_loss(self.legs, self.mid_price).dollars(self.multiplier)
            max_profit, max_loss = extremes.max_profit, extremes.max_loss
            bes = breakevens(self.legs, self.mid_price)
        if not two_expiries and (extremes.profit_unbounded or extremes.loss_unbounded):
            # Buying back a short call alone has no upper bound: shown at the +3 SD price on the
            # legs' own implied vol (a finite figure an order can carry; the note says so).
            far = self._far_price(max(dte, 1))
            pnl = Decimal(str(pnl_at_expiry(self.legs, [float(far)], self.mid_price)[0])) * self.multiplier
            pnl = pnl.quantize(Decimal("0.01"))
            if extremes.profit_unbounded:
                max_profit = pnl
            if extremes.loss_unbounded:
                max_loss = -pnl
            notes.append(f"unbounded {'profit' if extremes.profit_unbounded else 'loss'} shown at the +3 SD price {far}")
        values = {}
        for name in ("delta", "gamma", "vega", "theta"):
            value = getattr(greeks, name)
            if not math.isfinite(value):
                notes.append(f"net {name} unavailable (a leg has no {name}); shown as 0")
                value = 0.0
            values[name] = value
        proposal = TradeProposal(
            ticker=self.ticker, structure=self.structure, legs=list(self.legs),
            underlying_price=float(self.underlying_price), net_debit=self.mid_price, natural_debit=self.natural_price,
            max_profit=max_profit, max_loss=max_loss,
            breakevens=bes, probability_of_profit=0.0, dte=max(dte, 0),
            multiplier=self.multiplier, rationale="; ".join(notes), **values)
        return SizedTrade(proposal=proposal, contracts=self.quantity, kelly_fraction=0.0, applied_fraction=0.0,
                          win_rate=0.0, payoff_ratio=0.0,
                          capital_at_risk=max(self.limit_price, Decimal(0)) * self.quantity * self.multiplier,
                          caps_applied=[f"{self.structure}: closes existing risk, not Kelly-sized"])


    def _shares_trade(self) -> SizedTrade:
        # Shares have no expiry payoff and no Greek but delta 1: like a calendar's close, their
        # closing value per share stands for both extremes, and the rationale says so.
        [leg] = self.legs
        value = abs(self.mid_price).quantize(Decimal("0.01"))
        proposal = TradeProposal(
            ticker=self.ticker, structure=self.structure, legs=[leg], underlying_price=float(self.underlying_price),
            net_debit=self.mid_price, natural_debit=self.natural_price, max_profit=value, max_loss=value,
            breakevens=[], probability_of_profit=0.0, delta=float(leg.sign), gamma=0.0, vega=0.0, theta=0.0, dte=0,
            multiplier=1, rationale="; ".join([self.rationale, "closes " + ", ".join(self.closes),
                                                "shares: max profit and loss shown as the value per share"]))
        return SizedTrade(proposal=proposal, contracts=self.quantity, kelly_fraction=0.0, applied_fraction=0.0,
                          win_rate=0.0, payoff_ratio=0.0,
                          capital_at_risk=max(self.limit_price, Decimal(0)) * self.quantity,
                          caps_applied=[f"{self.structure}: closes existing risk, not Kelly-sized"])


def _option_leg(position: BrokerPosition, quote: LegQuote, side: str, ratio: int) -> OptionLeg:
    c = position.contract
    return OptionLeg(expiry=c.expiry, strike=c.strike, right=c.right, side=side, ratio=ratio, bid=quote.bid,
                     ask=quote.ask, mid=quote.mid, iv=quote.iv, delta=quote.delta, gamma=quote.gamma,
                     vega=quote.vega, theta=quote.theta)


def _build(ticker: str, parts: list[tuple[BrokerPosition, LegQuote, str, int]], multiplier: int) -> FlattenOrder:
    quantity = reduce(math.gcd, (contracts for *_, contracts in parts))
    legs = tuple(_option_leg(p, q, side, contracts // quantity) for p, q, side, contracts in parts)
    mid = sum((leg.sign * leg.ratio * leg.mid for leg in legs), Decimal(0))
    natural = sum((leg.ratio * (leg.ask if leg.sign > 0 else -leg.bid) for leg in legs), Decimal(0))
    underlying = next((q.underlying_price for _, q, _, _ in parts if q.underlying_price is not None), None)
    closes = tuple(f"{p.contract.label()} x {'-' if side == 'buy' else '+'}{contracts}" for p, _, side, contracts in parts)
    return FlattenOrder(ticker=ticker, legs=legs, quantity=quantity, mid_price=mid, natural_price=natural,
                        limit_price=mid.quantize(CENT, rounding=ROUND_FLOOR), underlying_price=underlying,
                        multiplier=multiplier, closes=closes)


def flatten_orders(positions: Sequence[BrokerPosition], quotes: QuoteSource, *,
                   with_protection: bool = False) -> list[FlattenOrder]:
    """Closing orders for every short option position (see the module doc); [] when none is short.

    Raises `QuoteUnavailable` naming every contract to be closed that has no quote: a closing
    order without a price cannot be reviewed.
    """
    shorts = [p for p in positions if p.quantity < 0]
    if not shorts:
        return []
    plan: list[tuple[str, int, list[tuple[BrokerPosition, str, int]]]] = []
    if not with_protection:
        for p in sorted(shorts, key=lambda p: (p.contract.ticker, p.contract.expiry, p.contract.right, p.contract.strike)):
            plan.append((p.contract.ticker, p.contract.multiplier, [(p, "buy", -p.quantity)]))
    else:
        groups: dict[tuple, list[BrokerPosition]] = {}
        for p in positions:
            if p.quantity != 0:
                groups.setdefault((p.contract.ticker, p.contract.expiry, p.contract.multiplier), []).append(p)
        for (ticker, _expiry, multiplier), group in sorted(groups.items()):
            parts: list[tuple[BrokerPosition, str, int]] = []
            for right in ("C", "P"):
                short_legs = sorted((p for p in group if p.quantity < 0 and p.contract.right == right),
                                    key=lambda p: p.contract.strike)
                if not short_legs:
                    continue
                parts.extend((p, "buy", -p.quantity) for p in short_legs)
                to_cover = sum(-p.quantity for p in short_legs)
                longs = sorted((p for p in group if p.quantity > 0 and p.contract.right == right),
                               key=lambda p: (min(abs(p.contract.strike - s.contract.strike) for s in short_legs),
                                              p.contract.strike))
                for p in longs:
                    if to_cover == 0:
                        break
                    take = min(p.quantity, to_cover)
                    parts.append((p, "sell", take))
                    to_cover -= take
            if parts:
                plan.append((ticker, multiplier, parts))
    needed = {p.contract for _, _, parts in plan for p, _, _ in parts}
    quoted = {c: quotes(c) for c in needed}
    missing = sorted(c.label() for c, q in quoted.items() if q is None)
    if missing:
        raise QuoteUnavailable("no quote to close " + ", ".join(missing))
    return [_build(ticker, [(p, quoted[p.contract], side, n) for p, side, n in parts], multiplier)
            for ticker, multiplier, parts in plan]
