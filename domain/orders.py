"""The value types of an order's life: the order itself (`Order`, the one type the graph, the
order book and the brokers share) and its legs, listed contracts, quotes, fills, what-if margin,
and a broker's view of orders, positions and accounts.

They import nothing of ours but the order state machine (`domain.order_state`) and the account
view (`domain.decision.AccountState`): the bottom floor every other floor speaks.

Sign and unit conventions (the same as `domain.decision`):
- An order always BUYS one unit of its leg list `quantity` times; each leg's `side` says
  whether that leg is bought or sold. `limit_price` and fill `price` are per share per unit,
  signed like `TradeProposal.net_debit`: positive = we pay (debit), negative = we receive
  (credit). A HIGHER signed price is always WORSE for us, so an order is marketable at a price p
  when p <= limit_price (a debit pays at most the limit; a credit receives at least |limit|).
- Money is `Decimal`; dollars = per-share price * multiplier * contracts.
- Position quantity is signed contracts (+ long, - short); `avg_price` is the per-share price
  the open contracts were opened at (always >= 0; its direction is the quantity's sign).
- Every timestamp is timezone-aware.

The underlying's shares. Options that are exercised or assigned deliver shares, and the book must
be able to trade them away; rather than a second order type, a leg (and the instrument it names,
`OptionContract`) may be the underlying itself: right `SHARES` ("S"), no expiry, no strike,
multiplier 1 (`ComboLeg.shares`, `OptionContract.shares`). An order holding such a leg holds only
that leg, so it is a plain order for `quantity` shares at `limit_price` per share, and it flows
through the same approval, order manager, limit walk and broker as any combo. A quote source may
quote the shares contract like any other (`brokers.quote_source.ProviderQuotes` does); its delta is
1 per share by definition.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from domain.order_state import OrderState

CENT = Decimal("0.01")
Right = Literal["C", "P", "S"]
SHARES = "S"  # the right of a leg or contract that is the underlying's shares, not an option
Side = Literal["buy", "sell"]
TimeInForce = Literal["DAY", "GTC"]


def _strike(value: Any) -> Decimal:
    """A positive strike, normalised so that 580 and 580.00 compare and hash equal."""
    strike = _decimal("strike", value)
    if strike <= 0:
        raise ValueError(f"strike must be positive, got {value}")
    return strike.quantize(Decimal(1)) if strike == strike.to_integral_value() else strike.normalize()


def _right(value: Any) -> None:
    if value not in ("C", "P", SHARES):
        raise ValueError(f"right must be 'C', 'P' or 'S' (shares), got {value!r}")


def _terms(right: str, expiry: Any, strike: Any) -> Decimal | None:
    """The normalised strike of an option (which needs an expiry and a strike) or None for shares
    (which have neither)."""
    _right(right)
    if right == SHARES:
        if expiry is not None or strike is not None:
            raise ValueError("a shares leg has no expiry and no strike")
        return None
    if expiry is None or strike is None:
        raise ValueError("an option needs an expiry and a strike")
    return _strike(strike)


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")


def _decimal(name: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        raise TypeError(f"{name} must be a Decimal (or int/str), got {type(value).__name__}")
    d = Decimal(value)
    if not d.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
    return d


@dataclass(frozen=True)
class OptionContract:
    """One listed option: what a position row and a quote are keyed by; or, with right `SHARES`
    (`OptionContract.shares`), the underlying's shares (no expiry, no strike, multiplier 1)."""

    ticker: str
    expiry: date | None
    strike: Decimal | None
    right: Right
    multiplier: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "strike", _terms(self.right, self.expiry, self.strike))
        if isinstance(self.multiplier, bool) or not isinstance(self.multiplier, int) or self.multiplier <= 0:
            raise ValueError(f"multiplier must be a positive whole number, got {self.multiplier!r}")
        if self.right == SHARES and self.multiplier != 1:
            raise ValueError("shares have multiplier 1")
        if not self.ticker:
            raise ValueError("ticker must not be empty")
        object.__setattr__(self, "ticker", self.ticker.upper())

    @classmethod
    def shares(cls, ticker: str) -> "OptionContract":
        return cls(ticker, None, None, SHARES, 1)

    @property
    def is_shares(self) -> bool:
        return self.right == SHARES

    def label(self) -> str:
        if self.is_shares:
            return f"{self.ticker} shares"
        return f"{self.ticker} {self.expiry.isoformat()} {self.strike}{self.right}"


@dataclass(frozen=True)
class ComboLeg:
    """Contract terms of one leg of a combo order (no prices); a shares leg (`ComboLeg.shares`)
    has right `SHARES` and no expiry or strike."""

    expiry: date | None
    strike: Decimal | None
    right: Right
    side: Side
    ratio: int = 1

    def __post_init__(self) -> None:
        if self.side not in ("buy", "sell"):
            raise ValueError(f"side must be 'buy' or 'sell', got {self.side!r}")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int) or self.ratio < 1:
            raise ValueError(f"ratio must be a positive whole number, got {self.ratio!r}")
        object.__setattr__(self, "strike", _terms(self.right, self.expiry, self.strike))

    @classmethod
    def shares(cls, side: Side) -> "ComboLeg":
        return cls(None, None, SHARES, side)

    @property
    def is_shares(self) -> bool:
        return self.right == SHARES

    @property
    def sign(self) -> int:
        return 1 if self.side == "buy" else -1

    def contract(self, ticker: str, multiplier: int = 100) -> OptionContract:
        if self.is_shares:
            return OptionContract.shares(ticker)
        return OptionContract(ticker, self.expiry, self.strike, self.right, multiplier)

    @classmethod
    def from_any(cls, leg: Any) -> "ComboLeg":
        """From an `OptionLeg`, a `ComboLeg`, or a JSON dict as stored in `orders.legs`."""
        if isinstance(leg, ComboLeg):
            return leg
        if isinstance(leg, Mapping):
            expiry, strike = leg.get("expiry"), leg.get("strike")
            return cls(expiry=date.fromisoformat(expiry) if isinstance(expiry, str) else expiry,
                       strike=None if strike is None else Decimal(str(strike)), right=leg["right"], side=leg["side"],
                       ratio=int(leg.get("ratio", 1)))
        return cls(expiry=leg.expiry, strike=None if leg.strike is None else Decimal(str(leg.strike)), right=leg.right,
                   side=leg.side, ratio=int(leg.ratio))

    def to_json(self) -> dict[str, Any]:
        return {"expiry": None if self.expiry is None else self.expiry.isoformat(),
                "strike": None if self.strike is None else str(self.strike), "right": self.right,
                "side": self.side, "ratio": self.ratio}

    def key(self) -> tuple:
        return (self.expiry, self.strike, self.right, self.side, self.ratio)


@dataclass(frozen=True)
class Order:
    """One order, from the moment a run stages it to its terminal state: what the order book
    stores (`storage.orders`), what the graph state carries (`staged`), what a broker receives.

    A limit order for `quantity` units of a multi-leg structure; `limit_price` is per share per
    unit, signed (+ pay / - receive), on a cent tick. Sending it at another limit (the limit walk)
    or another time in force is a copy, `dataclasses.replace(order, limit_price=...)`.

    `legs` are the contract terms (`ComboLeg`: expiry, strike, right, side, ratio) — what a broker
    transmits (an order for the underlying's shares has one shares leg: see the module doc) and what the approval check compares. The priced legs the approver saw (bid, ask,
    mid, Greeks, fitted value) belong to the proposal the order was sized from and stay in
    `proposal["legs"]`, with the rest of that proposal: one place for the prices, and no consumer
    of contract terms ever has to strip quotes off a leg.

    The book's fields (run, idempotency key, structure, sector, state, proposal and sizing as
    JSON, times, exit) keep their defaults on an order that is not in the book (a draft).
    """

    order_id: str
    ticker: str
    legs: tuple[ComboLeg, ...]
    quantity: int
    limit_price: Decimal
    time_in_force: TimeInForce = "DAY"
    multiplier: int = 100
    run_id: str = ""
    idempotency_key: str = ""
    structure: str = ""
    sector: str = "unknown"
    state: str = OrderState.DRAFT.value
    requires_acknowledgement: bool = False
    proposal: dict[str, Any] = field(default_factory=dict, hash=False)  # TradeProposal as JSON
    sizing: dict[str, Any] = field(default_factory=dict, hash=False)  # SizedTrade as JSON, without the proposal
    created_at: datetime | None = None
    updated_at: datetime | None = None
    closes_position_id: str | None = None  # an exit: the strategy position this order closes
    exit_rule: str | None = None  # which exit rule staged it (take_profit, dte, credit_stop, ...)

    def __post_init__(self) -> None:
        object.__setattr__(self, "legs", tuple(ComboLeg.from_any(leg) for leg in self.legs))
        object.__setattr__(self, "ticker", self.ticker.upper())
        if not self.legs:
            raise ValueError("an order needs at least one leg")
        if len({(leg.expiry, leg.strike, leg.right) for leg in self.legs}) != len(self.legs):
            raise ValueError("an order may not list the same contract twice")
        if any(leg.is_shares for leg in self.legs) and (len(self.legs) != 1 or self.legs[0].ratio != 1
                                                         or self.multiplier != 1):
            raise ValueError("an order for shares has that one leg, ratio 1, multiplier 1")
        if isinstance(self.quantity, bool) or not isinstance(self.quantity, int) or self.quantity < 1:
            raise ValueError(f"quantity must be a positive whole number of units, got {self.quantity!r}")
        limit = _decimal("limit_price", self.limit_price)
        if limit != limit.quantize(CENT):
            raise ValueError(f"limit_price must be on a cent tick, got {limit}")
        object.__setattr__(self, "limit_price", limit.quantize(CENT))
        if self.time_in_force not in ("DAY", "GTC"):
            raise ValueError(f"time_in_force must be DAY or GTC, got {self.time_in_force!r}")
        _aware("created_at", self.created_at)
        _aware("updated_at", self.updated_at)

    @classmethod
    def staged(cls, *, order_id: str, idempotency_key: str, run_id: str, trade: Any, sector: str,
               limit_price: Decimal, requires_acknowledgement: bool, created_at: datetime) -> "Order":
        """The order a run stages for `trade` (a `domain.decision.SizedTrade`), before the book stores it."""
        proposal = trade.proposal
        return cls(order_id=order_id, ticker=proposal.ticker, legs=tuple(proposal.legs), quantity=trade.contracts,
                   limit_price=limit_price, multiplier=proposal.multiplier, run_id=run_id,
                   idempotency_key=idempotency_key, structure=proposal.structure, sector=sector,
                   state=OrderState.STAGED.value, requires_acknowledgement=requires_acknowledgement,
                   proposal=proposal.model_dump(mode="json"),
                   sizing=trade.model_dump(mode="json", exclude={"proposal"}),
                   created_at=created_at, updated_at=created_at)

    def contracts(self) -> list[OptionContract]:
        return [leg.contract(self.ticker, self.multiplier) for leg in self.legs]

    def legs_key(self) -> list[tuple]:
        return sorted(leg.key() for leg in self.legs)

    @property
    def is_shares(self) -> bool:
        """An order for the underlying's shares (its one leg is the shares)."""
        return self.legs[0].is_shares


@dataclass(frozen=True)
class LegQuote:
    """A two-sided quote for one option, per share; optional Greeks are for a LONG option in
    trader units (delta per $1, gamma per $1^2, vega per vol point, theta per calendar day)."""

    bid: Decimal
    ask: Decimal
    underlying_price: Decimal | None = None
    delta: float | None = None
    gamma: float | None = None
    vega: float | None = None
    theta: float | None = None
    iv: float | None = None
    as_of: datetime | None = None

    def __post_init__(self) -> None:
        bid, ask = _decimal("bid", self.bid), _decimal("ask", self.ask)
        if bid < 0 or ask <= 0:
            raise ValueError(f"a quote needs bid >= 0 and ask > 0, got {bid}/{ask}")
        if bid > ask:
            raise ValueError(f"crossed quote: bid {bid} > ask {ask}")
        object.__setattr__(self, "bid", bid)
        object.__setattr__(self, "ask", ask)
        if self.underlying_price is not None:
            object.__setattr__(self, "underlying_price", _decimal("underlying_price", self.underlying_price))
        _aware("as_of", self.as_of)

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2

    @property
    def half_spread(self) -> Decimal:
        return (self.ask - self.bid) / 2


# Where a broker or a calculation gets the current quote of a contract; None = no usable quote.
QuoteSource = Callable[[OptionContract], LegQuote | None]


@dataclass(frozen=True)
class WhatIfMargin:
    """What an order would do to the account, in dollars (Decimal), before it is placed.

    Margin is the buying-power requirement of the ticker's whole holding, before and after the
    order (`brokers.margin`): a defined-risk structure requires its max loss, a naked short a
    Reg-T style amount. `*_change` = after - before (negative when the order releases margin).
    `cash_change` = -(limit * quantity * multiplier) - commission (credits add cash).
    Options' maintenance requirement equals the initial one under these rules.
    """

    initial_margin_change: Decimal
    maintenance_margin_change: Decimal
    commission: Decimal
    cash_change: Decimal
    margin_before: Decimal
    margin_after: Decimal
    method: str  # "max_loss" or "reg_t" (which rule produced margin_after), or the broker's own preview
    # A real broker's preview may also say what the order does to buying power (negative = uses it)
    # and warn (e.g. IBKR's warningText, tastytrade's dry-run warnings).
    buying_power_change: Decimal | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fill:
    """One execution of (part of) a combo order.

    `quantity` units at `price` per share per unit (signed like the limit). `leg_prices` are the
    per-share prices of each leg, in the order's leg order, unsigned, with
    sum(sign * ratio * leg_price) == price. `commission` is dollars (positive = paid).
    `fill_id` is unique per execution: reporting the same fill twice changes nothing.
    """

    order_id: str
    broker_order_id: str
    fill_id: str
    quantity: int
    price: Decimal
    leg_prices: tuple[Decimal, ...]
    at: datetime
    commission: Decimal = Decimal("0")

    def __post_init__(self) -> None:
        if isinstance(self.quantity, bool) or not isinstance(self.quantity, int) or self.quantity < 1:
            raise ValueError(f"fill quantity must be a positive whole number, got {self.quantity!r}")
        object.__setattr__(self, "price", _decimal("price", self.price))
        object.__setattr__(self, "commission", _decimal("commission", self.commission))
        object.__setattr__(self, "leg_prices", tuple(_decimal("leg price", p) for p in self.leg_prices))
        if any(p < 0 for p in self.leg_prices):
            raise ValueError("leg prices are unsigned per-share prices and may not be negative")
        if self.commission < 0:
            raise ValueError("commission is what we pay and may not be negative")
        if self.at.tzinfo is None:
            raise ValueError("fill time must be timezone-aware")


@dataclass(frozen=True)
class BrokerOrderStatus:
    """Where a placed order stands. `state` is the `orders` row's state machine state."""

    order_id: str
    broker_order_id: str
    state: OrderState
    quantity: int
    filled_quantity: int
    limit_price: Decimal
    avg_fill_price: Decimal | None  # quantity-weighted per-share price of the fills so far
    placed_at: datetime
    updated_at: datetime

    @property
    def remaining(self) -> int:
        return self.quantity - self.filled_quantity


@dataclass(frozen=True)
class BrokerPosition:
    """An open option position (one contract), signed quantity, average open price per share.
    (A broker's shares are its share holdings, `storage.broker_ledger.ShareHolding`.)"""

    contract: OptionContract
    quantity: int
    avg_price: Decimal
    realized_pnl: Decimal = Decimal("0")  # dollars realized on this contract since it was opened


@dataclass(frozen=True)
class BrokerAccount:
    """Account values in dollars.

    net_liquidation = cash + sum(quantity * multiplier * mark), mark = the quote mid (a position
    without a quote is carried at its average price and named in `unmarked`). margin_used is the
    buying-power requirement of the open positions (`brokers.margin`); free_margin =
    net_liquidation - margin_used.
    """

    account_id: str
    cash: Decimal
    net_liquidation: Decimal
    positions_value: Decimal
    margin_used: Decimal
    free_margin: Decimal
    realized_pnl: Decimal
    realized_pnl_today: Decimal
    as_of: datetime
    unmarked: tuple[str, ...] = field(default_factory=tuple)

    def to_account_state(self, **extra: Any):
        """The risk gate's `domain.decision.AccountState` view of this account."""
        from domain.decision import AccountState  # noqa: PLC0415  (same floor; kept lazy for import order)

        return AccountState(net_liquidation=self.net_liquidation, cash=self.cash, margin_used=self.margin_used,
                            daily_realized_pnl=self.realized_pnl_today, **extra)


@dataclass(frozen=True)
class PortfolioGreeks:
    """The book's Greeks in whole-position dollars (`brokers.portfolio.portfolio_greeks` computes
    them; its module doc gives the units). A total that could not be computed is NaN, and why is
    listed in `missing`."""

    delta: float
    gamma: float
    vega: float
    theta: float
    dollar_delta: float  # sum(Delta * Q * M * P_underlying): $ value of the equivalent stock position
    spx_beta_weighted_delta: float
    theta_vega_ratio: float | None
    missing: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        """JSON-safe dict: NaN becomes None (JSON has no NaN)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        out["missing"] = list(self.missing)
        return out


def combo_prices(legs: Sequence[ComboLeg], quotes: Sequence[LegQuote]) -> tuple[Decimal, Decimal, Decimal]:
    """(mid, natural, far-touch-for-seller) of one unit of a combo, per share, signed.

    mid = sum(sign * ratio * leg mid); natural = the price to BUY the combo at every leg's far
    side (asks of bought legs, bids of sold legs) = the worst price for us; the third value is the
    near side (what the combo would fetch at every leg's near side), the best conceivable price.
    """
    if len(legs) != len(quotes):
        raise ValueError("one quote per leg")
    mid = sum((leg.sign * leg.ratio * q.mid for leg, q in zip(legs, quotes)), Decimal(0))
    natural = sum((leg.ratio * (q.ask if leg.sign > 0 else -q.bid) for leg, q in zip(legs, quotes)), Decimal(0))
    near = sum((leg.ratio * (q.bid if leg.sign > 0 else -q.ask) for leg, q in zip(legs, quotes)), Decimal(0))
    return mid, natural, near
