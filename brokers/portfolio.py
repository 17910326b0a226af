"""Portfolio Greeks of option positions, SPX beta-weighted delta and |theta|/|vega|.

Units (whole-position totals, as `domain.decision.Position`):
- delta: shares of the underlying (summed across underlyings); gamma: shares per $1;
  vega: $ per vol point; theta: $ per calendar day. Each is sum(Q * M * leg Greek) with Q signed
  contracts, M the multiplier and the leg Greek per share for a long option (from the quote).
- SPX beta-weighted delta (SPX-equivalent units): sum(Delta * Q * M * beta * P_underlying) / P_SPX.
- theta_vega_ratio = |theta| / |vega| (None when vega is 0 or unknown).
Shares (from exercises and assignments, `OptionContract.shares`) count with delta 1 per share
and no other Greek, quote or not; only their dollar and beta-weighted delta need a price (the
shares quote's). A Greek that cannot be computed for some position (no quote, no Greek, no
underlying price) makes that total NaN — a partial sum would be a wrong number — and the reason is listed in `missing`.
An unknown beta uses 1.0 and says so in `missing`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from domain.orders import BrokerPosition, OptionContract, Order, PortfolioGreeks, QuoteSource

Holding = tuple[OptionContract, int]


def spx_beta_weighted_delta(delta: float, quantity: float, multiplier: float, beta: float,
                            underlying_price: float, spx_price: float) -> float:
    """Delta * Q * M * beta * P_underlying / P_SPX: the position's delta in SPX-equivalent units."""
    if not (math.isfinite(spx_price) and spx_price > 0):
        raise ValueError(f"SPX price must be a positive finite number, got {spx_price}")
    return delta * quantity * multiplier * beta * underlying_price / spx_price


def theta_vega_ratio(theta: float, vega: float) -> float | None:
    """|theta| / |vega| (both in dollars: per day, per vol point); None when vega is 0 or NaN."""
    if not (math.isfinite(theta) and math.isfinite(vega)) or vega == 0:
        return None
    return abs(theta) / abs(vega)


def holdings_of(positions: Sequence[BrokerPosition | Holding]) -> list[Holding]:
    return [(p.contract, p.quantity) if isinstance(p, BrokerPosition) else (p[0], int(p[1])) for p in positions]


def holdings_after(positions: Sequence[BrokerPosition | Holding], order: Order, quantity: int | None = None) -> list[Holding]:
    """The holdings once `quantity` units (default: all) of `order` have filled."""
    units = order.quantity if quantity is None else quantity
    return holdings_of(positions) + [(leg.contract(order.ticker, order.multiplier), leg.sign * leg.ratio * units)
                                     for leg in order.legs]


def portfolio_greeks(positions: Sequence[BrokerPosition | Holding], quotes: QuoteSource, *,
                     spx_price: float, betas: Mapping[str, float] | None = None) -> PortfolioGreeks:
    """Totals over the positions using each contract's quote (see the module doc for units)."""
    if not (math.isfinite(spx_price) and spx_price > 0):
        raise ValueError(f"SPX price must be a positive finite number, got {spx_price}")
    betas = {k.upper(): float(v) for k, v in (betas or {}).items()}
    totals = {"delta": 0.0, "gamma": 0.0, "vega": 0.0, "theta": 0.0, "dollar_delta": 0.0, "bwd": 0.0}
    missing: list[str] = []
    defaulted: set[str] = set()
    for contract, quantity in holdings_of(positions):
        if quantity == 0:
            continue
        quote = quotes(contract)
        scale = quantity * contract.multiplier
        if contract.is_shares:
            totals["delta"] += scale  # 1 share = delta 1, by definition
            if quote is None:
                missing.append(f"{contract.label()}: no price for the dollar delta")
                totals["dollar_delta"] = totals["bwd"] = math.nan
                continue
            _dollar_delta(totals, contract, quantity, 1.0, float(quote.mid), betas, defaulted, missing, spx_price)
            continue
        if quote is None:
            missing.append(f"{contract.label()}: no quote")
            for key in totals:
                totals[key] = math.nan
            continue
        for name in ("delta", "gamma", "vega", "theta"):
            value = getattr(quote, name)
            if value is None or not math.isfinite(value):
                missing.append(f"{contract.label()}: no {name}")
                totals[name] = math.nan
            else:
                totals[name] += scale * value
        if quote.delta is None or not math.isfinite(quote.delta) or quote.underlying_price is None:
            if quote.underlying_price is None:
                missing.append(f"{contract.label()}: no underlying price")
            totals["dollar_delta"] = totals["bwd"] = math.nan
            continue
        _dollar_delta(totals, contract, quantity, quote.delta, float(quote.underlying_price), betas, defaulted,
                      missing, spx_price)
    return PortfolioGreeks(
        delta=totals["delta"], gamma=totals["gamma"], vega=totals["vega"], theta=totals["theta"],
        dollar_delta=totals["dollar_delta"], spx_beta_weighted_delta=totals["bwd"],
        theta_vega_ratio=theta_vega_ratio(totals["theta"], totals["vega"]), missing=tuple(missing))


def _dollar_delta(totals: dict[str, float], contract: OptionContract, quantity: int, delta: float,
                  underlying: float, betas: Mapping[str, float], defaulted: set[str], missing: list[str],
                  spx_price: float) -> None:
    if contract.ticker not in betas and contract.ticker not in defaulted:
        defaulted.add(contract.ticker)
        missing.append(f"{contract.ticker}: beta unknown, 1.0 used")
    beta = betas.get(contract.ticker, 1.0)
    totals["dollar_delta"] += delta * quantity * contract.multiplier * underlying
    totals["bwd"] += spx_beta_weighted_delta(delta, quantity, contract.multiplier, beta, underlying, spx_price)
