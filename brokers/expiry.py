"""Expiry rules shared by the broker's books and the strategy book.

- An option is expired from 16:00 New York on its expiry date (any later time too).
- Cash-settled index options (`CASH_SETTLED`) pay their intrinsic value in cash at the settlement
  price. Every other option (equities, ETFs) is physically settled: in the money by any amount
  (intrinsic > 0) a long one is exercised and a short one assigned, delivering
  quantity x multiplier shares at the strike (calls: + shares to the holder, puts: - shares);
  out of the money it expires worthless.
"""
from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal
from typing import Literal

from tools.chain import NEW_YORK

# Index options settled in cash (AM or PM settlement alike: the caller supplies the settlement price).
CASH_SETTLED = frozenset({"SPX", "SPXW", "NDX", "NDXP", "XSP", "RUT", "RUTW", "VIX", "VIXW"})
EXPIRY_CUTOFF = time(16, 0)

Outcome = Literal["cash_settled", "exercised", "assigned", "expired_worthless"]


def is_expired(expiry: date, now: datetime) -> bool:
    """True from 16:00 New York on `expiry` on."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    local = now.astimezone(NEW_YORK)
    return expiry < local.date() or (expiry == local.date() and local.time() >= EXPIRY_CUTOFF)


def latest_expired_date(now: datetime) -> date:
    """The latest expiry date that is expired at `now`."""
    local = now.astimezone(NEW_YORK)
    return local.date() if local.time() >= EXPIRY_CUTOFF else date.fromordinal(local.date().toordinal() - 1)


def intrinsic_value(right: str, strike: Decimal, underlying: Decimal) -> Decimal:
    """Per share, >= 0."""
    return max(underlying - strike, Decimal(0)) if right == "C" else max(strike - underlying, Decimal(0))


def settlement(ticker: str, right: str, strike: Decimal, quantity: int, multiplier: int,
               underlying: Decimal) -> tuple[Outcome, Decimal, int]:
    """(outcome, intrinsic per share, shares delivered to us, signed) for `quantity` (signed) contracts."""
    intrinsic = intrinsic_value(right, strike, underlying)
    if ticker.upper() in CASH_SETTLED:
        return "cash_settled", intrinsic, 0
    if intrinsic <= 0:
        return "expired_worthless", Decimal(0), 0
    shares = quantity * multiplier * (1 if right == "C" else -1)
    return ("exercised" if quantity > 0 else "assigned"), intrinsic, shares
