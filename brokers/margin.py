"""Buying-power requirement of an option holding in one underlying (what-if margin).

Rules (dollars, Decimal):
- Defined risk — one expiry and every short covered by a long of the same right: the exact max
  loss of the holding at expiry given what was paid for it (`tools.structures.max_profit_loss`),
  floored at 0. A credit spread requires width - credit, a debit spread or a long option its
  debit, an iron condor the worse of its two sides.
- Otherwise (several expiries, or more contracts sold than bought on one side) — Reg-T style:
  shorts are first paired with longs of the same right that expire no earlier (a calendar,
  diagonal or vertical: the pair requires the strike difference when the long strike is worse,
  else 0); every short left over is naked and requires
      call: max(20% S - OTM amount, 10% S) + option mark,
      put:  max(20% S - OTM amount, 10% K) + option mark,
  per share. The requirement is the pairs' + the naked shorts' + the net premium paid (a credit
  received reduces it), floored at 0. Pairing is greedy (shorts by expiry then strike, each
  taking the eligible long that leaves least at risk): every pairing is a valid cover, so the
  greedy figure can exceed the best pairing's, never fall below it.
Options' maintenance requirement equals their initial requirement under these rules.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from brokers.base import MarginUnavailable
from domain.orders import OptionContract, QuoteSource
from tools.structures import LegSpec, max_profit_loss

ZERO = Decimal(0)
NAKED_BASE = Decimal("0.20")
NAKED_MIN = Decimal("0.10")


@dataclass(frozen=True)
class MarginResult:
    requirement: Decimal  # dollars, >= 0
    method: Literal["none", "max_loss", "reg_t"]
    naked: tuple[str, ...] = ()  # contracts (labels) treated as naked shorts


def reg_t_naked_per_share(right: str, strike: Decimal, underlying: Decimal, mark: Decimal) -> Decimal:
    """Reg-T requirement of one naked short option, per share (see module doc)."""
    if right == "C":
        otm = max(strike - underlying, ZERO)
        floor = NAKED_MIN * underlying
    else:
        otm = max(underlying - strike, ZERO)
        floor = NAKED_MIN * strike
    return max(NAKED_BASE * underlying - otm, floor) + mark


def _pair_requirement(right: str, short_strike: Decimal, long_strike: Decimal) -> Decimal:
    # A long call with a higher strike (or a long put with a lower one) leaves the difference at risk.
    return max(long_strike - short_strike, ZERO) if right == "C" else max(short_strike - long_strike, ZERO)


def _pair(holdings: list[tuple[OptionContract, int]]):
    """Greedy pairing per right; returns (pair requirement per share, naked [(contract, count)])."""
    pairs_total = ZERO
    naked: list[tuple[OptionContract, int]] = []
    for right in ("C", "P"):
        longs = [[c, q] for c, q in holdings if c.right == right and q > 0]
        # Latest expiry first: a long covers a short expiring on or before it, so the longs a later
        # short may use are a subset of those an earlier one may. Taking the earliest first let it
        # use up the only cover of a later short (a covered book came out "naked").
        shorts = sorted(((c, -q) for c, q in holdings if c.right == right and q < 0),
                        key=lambda cq: (-cq[0].expiry.toordinal(), cq[0].strike))
        for contract, count in shorts:
            while count > 0:
                eligible = [lq for lq in longs if lq[1] > 0 and lq[0].expiry >= contract.expiry]
                if not eligible:
                    naked.append((contract, count))
                    break
                best = min(eligible, key=lambda lq: (_pair_requirement(right, contract.strike, lq[0].strike),
                                                      -lq[0].expiry.toordinal()))
                used = min(count, best[1])
                pairs_total += used * _pair_requirement(right, contract.strike, best[0].strike)
                best[1] -= used
                count -= used
    return pairs_total, naked


def margin_requirement(holdings: Sequence[tuple[OptionContract, int]], premium_paid: Decimal,
                       quotes: QuoteSource | None = None) -> MarginResult:
    """Requirement of one underlying's holding: [(contract, signed contracts)] and the net
    premium paid for it in dollars (+ paid / - received). Quotes are needed only for naked shorts
    (underlying price and option mark); without them `MarginUnavailable` is raised."""
    live = [(c, int(q)) for c, q in holdings if int(q) != 0]
    if not live:
        return MarginResult(ZERO, "none")
    tickers = {c.ticker for c, _ in live}
    multipliers = {c.multiplier for c, _ in live}
    if len(tickers) != 1 or len(multipliers) != 1:
        raise ValueError(f"one holding is one underlying with one multiplier, got {tickers} / {multipliers}")
    merged: dict[OptionContract, int] = {}
    for c, q in live:
        merged[c] = merged.get(c, 0) + q
    live = [(c, q) for c, q in merged.items() if q != 0]
    if not live:
        return MarginResult(ZERO, "none")
    multiplier = Decimal(multipliers.pop())
    pairs_total, naked = _pair(live)
    if not naked and len({c.expiry for c, _ in live}) == 1:
        legs = [LegSpec(strike=c.strike, right=c.right, side="buy" if q > 0 else "sell", ratio=abs(q), expiry=c.expiry)
                for c, q in live]
        loss = max_profit_loss(legs, premium_paid / multiplier).max_loss
        return MarginResult(max(loss * multiplier, ZERO), "max_loss")
    naked_total = ZERO
    for contract, count in naked:
        quote = quotes(contract) if quotes is not None else None
        if quote is None or quote.underlying_price is None:
            raise MarginUnavailable(
                f"naked short {contract.label()} needs a quote with the underlying price for its Reg-T requirement")
        naked_total += count * reg_t_naked_per_share(contract.right, contract.strike, quote.underlying_price, quote.mid)
    total = (pairs_total + naked_total) * multiplier + premium_paid
    return MarginResult(max(total, ZERO), "reg_t", tuple(c.label() for c, _ in naked))
