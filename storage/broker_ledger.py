"""A broker's books in Postgres: its orders, fills, positions and cash (migration 0004).

The paper broker keeps its whole account here; an adapter for a real broker can record the fills
it receives the same way. A fill of an order for shares (`domain.orders` SHARES leg) trades the
share holding (`broker_share_positions`) instead of an option row. Applying a fill is one transaction of the caller's (fill row, position
rows, cash rows, filled quantity), and the fill id is the primary key, so a repeated fill report
changes nothing.

Conventions are `brokers.base`'s: prices per share, signed combo prices (+ pay / - receive),
unsigned leg prices, signed position quantities, cash ledger amounts + in / - out.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import asyncpg

from domain.order_state import OrderState
from domain.orders import BrokerOrderStatus, BrokerPosition, ComboLeg, Fill, OptionContract, Order

AVG_PLACES = Decimal("0.000001")
MONEY_PLACES = Decimal("0.0001")
# Leg prices may carry 6 decimals; their signed sum must reproduce the combo price this closely.
LEG_SUM_TOLERANCE = Decimal("0.00001")


class FillRejected(ValueError):
    """A fill report that cannot be applied (over-fill, leg prices that do not add up, ...)."""


def fill_from_row(row: asyncpg.Record) -> Fill:
    return Fill(order_id=row["order_id"], broker_order_id=row["broker_order_id"], fill_id=row["fill_id"],
                quantity=row["quantity"], price=row["price"],
                leg_prices=tuple(Decimal(p) for p in row["leg_prices"]), at=row["filled_at"],
                commission=row["commission"])


def status_from_row(order_id: str, row: asyncpg.Record) -> BrokerOrderStatus:
    """The status of a broker order row carrying its `orders` state (`state`) and the average
    price of its fills (`avg_fill_price`, None before the first)."""
    avg = row["avg_fill_price"]
    return BrokerOrderStatus(
        order_id=order_id, broker_order_id=row["broker_order_id"], state=OrderState(row["state"]),
        quantity=row["quantity"], filled_quantity=row["filled_quantity"], limit_price=row["limit_price"],
        avg_fill_price=None if avg is None else avg.quantize(AVG_PLACES, rounding=ROUND_HALF_EVEN),
        placed_at=row["placed_at"], updated_at=row["updated_at"])


def position_from_row(row: asyncpg.Record) -> BrokerPosition:
    contract = OptionContract(row["ticker"], row["expiry"], row["strike"], row["option_right"], row["multiplier"])
    return BrokerPosition(contract=contract, quantity=row["quantity"], avg_price=row["avg_price"],
                          realized_pnl=row["realized_pnl"])


def apply_to_position(quantity: int, avg_price: Decimal, change: int, price: Decimal) -> tuple[int, Decimal, Decimal]:
    """(new quantity, new average price, realized dollars per unit multiplier) after trading
    `change` contracts (signed) at `price` per share.

    Adding to a position averages the price; reducing realizes (price - avg) per long contract
    closed, (avg - price) per short one; crossing through zero opens the rest at `price`.
    Realized is per share-contract: multiply by the multiplier for dollars.
    """
    if quantity == 0 or (quantity > 0) == (change > 0):
        new_qty = quantity + change
        new_avg = (abs(quantity) * avg_price + abs(change) * price) / abs(new_qty)
        return new_qty, new_avg.quantize(AVG_PLACES, rounding=ROUND_HALF_EVEN), Decimal(0)
    closed = min(abs(quantity), abs(change))
    direction = 1 if quantity > 0 else -1
    realized = closed * (price - avg_price) * direction
    new_qty = quantity + change
    if new_qty == 0:
        return 0, Decimal(0), realized
    if (new_qty > 0) == (quantity > 0):
        return new_qty, avg_price, realized
    return new_qty, price.quantize(AVG_PLACES, rounding=ROUND_HALF_EVEN), realized


def _realized_since(since: str) -> str:
    """SQL: dollars account $1 realized by closing fills and expiries since `since` (a placeholder
    such as "$2", or "NULL": since the account opened)."""
    return f"""COALESCE((SELECT sum(realized_pnl) FROM broker_fills
                          WHERE account_id = $1 AND ({since}::timestamptz IS NULL OR filled_at >= {since})), 0)
             + COALESCE((SELECT sum(realized_pnl) FROM broker_expiries
                          WHERE account_id = $1 AND ({since}::timestamptz IS NULL OR at >= {since})), 0)"""


# A broker order's average fill price over its fills `f` (None before the first): the one
# definition `order_status` and `replace_limit` both report.
_AVG_FILL_PRICE = "sum(f.price * f.quantity) / sum(f.quantity)"


# The statement head that locks an order's `orders` row, then its broker order row ($1: order id):
# the lateral subquery runs only once the `orders` row is locked, the lock order of every writer.
_LOCKED_ORDER = """WITH locked AS (
        SELECT o.state, bo.*
        FROM (SELECT order_id, state FROM orders WHERE order_id = $1 FOR UPDATE) o
             LEFT JOIN LATERAL (SELECT * FROM broker_orders b WHERE b.order_id = o.order_id FOR UPDATE) bo ON true)"""


class BrokerLedger:
    def __init__(self, pool: asyncpg.Pool, account_id: str, broker: str):
        self.pool = pool
        self.account_id = account_id
        self.broker = broker

    async def ensure_account(self, opening_cash: Decimal, at: datetime) -> bool:
        """Create the account with its opening deposit once; True if this call created it.

        One statement (one round trip, atomic): the deposit is inserted only from the account row
        this statement created, so the account and its deposit are written together or not at all."""
        created = await self.pool.fetchval(
            """WITH created AS (
                   INSERT INTO broker_accounts (account_id, broker, opening_cash) VALUES ($1, $2, $3)
                   ON CONFLICT (account_id) DO NOTHING RETURNING account_id),
               deposit AS (
                   INSERT INTO broker_cash_ledger (account_id, at, amount, kind, note)
                   SELECT account_id, $4, $3, 'deposit', $5 FROM created RETURNING account_id)
               SELECT count(*) FROM deposit""",
            self.account_id, self.broker, opening_cash, at, "opening balance")
        return bool(created)

    # ---------------------------------------------------------------- orders
    async def broker_order_id(self, order_id: str, *, conn: asyncpg.Connection | None = None,
                              any_account: bool = False) -> str | None:
        """The broker order id our order was placed as, in this account (or in any: an order is
        placed once, whichever account); None: it was not placed."""
        return await (conn or self.pool).fetchval(
            "SELECT broker_order_id FROM broker_orders WHERE order_id = $1 AND ($2 OR account_id = $3)",
            order_id, any_account, self.account_id)

    async def own_order_row(self, order_id: str) -> asyncpg.Record | None:
        """The broker order row of our order in this account."""
        return await self.pool.fetchrow("SELECT * FROM broker_orders WHERE order_id = $1 AND account_id = $2",
                                        order_id, self.account_id)

    async def order_ids_in_states(self, states: list[str]) -> list[str]:
        """This account's placed orders whose `orders` state is one of `states`, oldest placed first."""
        return [r["order_id"] for r in await self.orders_in_states(states)]

    async def orders_in_states(self, states: list[str]) -> list[asyncpg.Record]:
        """The broker order rows (with the `orders` state as `state`) of `order_ids_in_states`, as
        they stand now, unlocked."""
        return await self.pool.fetch(
            """SELECT bo.*, o.state FROM broker_orders bo JOIN orders o USING (order_id)
               WHERE bo.account_id = $1 AND o.state = ANY($2::text[])
               ORDER BY bo.placed_at, bo.order_id""", self.account_id, states)

    async def order_row(self, conn: asyncpg.Connection, order_id: str, *, lock: bool = False) -> asyncpg.Record | None:
        sql = "SELECT * FROM broker_orders WHERE order_id = $1" + (" FOR UPDATE" if lock else "")
        return await conn.fetchrow(sql, order_id)

    @staticmethod
    async def lock_order(conn: asyncpg.Connection, order_id: str) -> asyncpg.Record | None:
        """The order's `orders` state (`state`) and its broker order row (all NULL when it was never
        placed), both rows locked until the caller's transaction ends: the `orders` row first, as
        every writer of an order locks them (one round trip). None: there is no such order.

        The rows are the latest committed versions (a lock waited for re-reads them), so a cancel or
        a replace that committed meanwhile is seen."""
        return await conn.fetchrow(_LOCKED_ORDER + " SELECT * FROM locked", order_id)

    async def insert_order(self, conn: asyncpg.Connection, order: Order, broker_order_id: str,
                           placed_at: datetime, good_till: datetime | None) -> None:
        """The broker order row and its `placed` event, in one statement."""
        await conn.execute(
            """WITH placed AS (
                   INSERT INTO broker_orders (broker_order_id, order_id, account_id, broker, ticker, legs, multiplier,
                                              quantity, limit_price, time_in_force, good_till, placed_at, updated_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) RETURNING broker_order_id)
               INSERT INTO broker_order_events (broker_order_id, kind, at, limit_price)
               SELECT broker_order_id, 'placed', $12, $9 FROM placed""",
            broker_order_id, order.order_id, self.account_id, self.broker, order.ticker,
            [leg.to_json() for leg in order.legs], order.multiplier, order.quantity, order.limit_price,
            order.time_in_force, good_till, placed_at)

    async def replace_limit(self, order_id: str, limit_price: Decimal, at: datetime,
                            working: Sequence[str]) -> asyncpg.Record | None:
        """Move a working order's limit to `limit_price` in one statement (one round trip, atomic).

        The `orders` row and then the broker order row are locked (`lock_order`); only when the
        order is in one of the `working` states, in this account, and its limit differs is the
        limit set and a `limit_replaced` event written. Returns the locked row (None: no such
        order) with the limit and `updated_at` as they stand after the statement, and
        `avg_fill_price` / `fills_quantity` from the fills visible to the statement: when
        `fills_quantity` differs from `filled_quantity`, a fill committed while the lock was
        awaited and the average must be read again (`order_status`)."""
        return await self.pool.fetchrow(
            _LOCKED_ORDER + f""",
               moved AS (
                   UPDATE broker_orders bo SET limit_price = $2, updated_at = $3 FROM locked
                   WHERE bo.broker_order_id = locked.broker_order_id AND locked.account_id = $4
                     AND locked.state = ANY($5::text[]) AND locked.limit_price <> $2
                   RETURNING bo.broker_order_id, bo.limit_price, bo.updated_at, locked.limit_price AS previous),
               event AS (
                   INSERT INTO broker_order_events (broker_order_id, kind, at, limit_price, detail)
                   SELECT broker_order_id, 'limit_replaced', $3, limit_price,
                          jsonb_build_object('previous', previous::text) FROM moved)
               SELECT locked.state, locked.order_id, locked.broker_order_id, locked.account_id, locked.quantity,
                      locked.filled_quantity, locked.placed_at,
                      COALESCE(moved.limit_price, locked.limit_price) AS limit_price,
                      COALESCE(moved.updated_at, locked.updated_at) AS updated_at,
                      fills.avg_fill_price, fills.fills_quantity
               FROM locked LEFT JOIN moved ON true
                    LEFT JOIN LATERAL (SELECT {_AVG_FILL_PRICE} AS avg_fill_price,
                                              COALESCE(sum(f.quantity), 0) AS fills_quantity
                                       FROM broker_fills f WHERE f.broker_order_id = locked.broker_order_id) fills ON true""",
            order_id, limit_price, at, self.account_id, list(working))

    async def set_limit(self, conn: asyncpg.Connection, broker_order_id: str, limit_price: Decimal, at: datetime,
                        previous: Decimal) -> None:
        """Record a limit the broker accepted (a live broker's mirror; the paper venue's limits move
        with `replace_limit`)."""
        await conn.execute("UPDATE broker_orders SET limit_price = $2, updated_at = $3 WHERE broker_order_id = $1",
                           broker_order_id, limit_price, at)
        await self.event(conn, broker_order_id, "limit_replaced", at, limit_price, {"previous": str(previous)})

    @staticmethod
    async def end_order(conn: asyncpg.Connection, broker_order_id: str, kind: str, at: datetime,
                        detail: dict[str, Any]) -> None:
        """Record that a broker order ended (`kind`: cancelled, expired): its event and its
        `updated_at`, in one statement."""
        await conn.execute(
            """WITH touched AS (UPDATE broker_orders SET updated_at = $3 WHERE broker_order_id = $1)
               INSERT INTO broker_order_events (broker_order_id, kind, at, detail) VALUES ($1, $2, $3, $4::jsonb)""",
            broker_order_id, kind, at, detail)

    async def event(self, conn: asyncpg.Connection, broker_order_id: str, kind: str, at: datetime,
                    limit_price: Decimal | None = None, detail: dict[str, Any] | None = None) -> None:
        await conn.execute(
            "INSERT INTO broker_order_events (broker_order_id, kind, at, limit_price, detail) VALUES ($1, $2, $3, $4, $5)",
            broker_order_id, kind, at, limit_price, detail or {})

    async def events(self, order_id: str) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            """SELECT e.kind, e.at, e.limit_price, e.detail FROM broker_order_events e
               JOIN broker_orders o USING (broker_order_id) WHERE o.order_id = $1 ORDER BY e.id""", order_id)
        return [dict(r) for r in rows]

    # ---------------------------------------------------------------- fills
    async def fill_count(self, conn: asyncpg.Connection, broker_order_id: str) -> int:
        return await conn.fetchval("SELECT count(*) FROM broker_fills WHERE broker_order_id = $1", broker_order_id)

    async def fill_exists(self, conn: asyncpg.Connection, fill_id: str) -> bool:
        return bool(await conn.fetchval("SELECT 1 FROM broker_fills WHERE fill_id = $1", fill_id))

    async def apply_fill(self, conn: asyncpg.Connection, fill: Fill, order_row: asyncpg.Record) -> int | None:
        """Record `fill` against the (locked) broker order row inside the caller's transaction.

        Returns the order's new filled quantity, or None when this fill id was already recorded
        (nothing changes). Raises `FillRejected` for an over-fill or inconsistent leg prices.
        """
        if fill.broker_order_id != order_row["broker_order_id"] or fill.order_id != order_row["order_id"]:
            raise FillRejected(f"fill {fill.fill_id} is for {fill.broker_order_id}, not {order_row['broker_order_id']}")
        legs = [ComboLeg.from_any(leg) for leg in order_row["legs"]]
        if len(fill.leg_prices) != len(legs):
            raise FillRejected(f"fill {fill.fill_id} has {len(fill.leg_prices)} leg prices for {len(legs)} legs")
        implied = sum((leg.sign * leg.ratio * p for leg, p in zip(legs, fill.leg_prices)), Decimal(0))
        if abs(implied - fill.price) > LEG_SUM_TOLERANCE:
            raise FillRejected(f"fill {fill.fill_id}: leg prices add up to {implied}, not the combo price {fill.price}")
        inserted = await conn.fetchval(
            """INSERT INTO broker_fills (fill_id, broker_order_id, order_id, account_id, quantity, price, leg_prices,
                                         commission, filled_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (fill_id) DO NOTHING RETURNING fill_id""",
            fill.fill_id, fill.broker_order_id, fill.order_id, self.account_id, fill.quantity, fill.price,
            [str(p) for p in fill.leg_prices], fill.commission, fill.at)
        if inserted is None:
            return None
        remaining = order_row["quantity"] - order_row["filled_quantity"]
        if fill.quantity > remaining:
            raise FillRejected(f"fill {fill.fill_id} of {fill.quantity} exceeds the {remaining} units still open")
        multiplier, ticker = order_row["multiplier"], order_row["ticker"]
        realized = Decimal(0)
        for leg, price in zip(legs, fill.leg_prices):
            if leg.is_shares:  # an order for the underlying's shares trades the share holding
                realized += await self._trade_shares(conn, ticker, leg.sign * fill.quantity, price, fill.at)
                continue
            realized += await self._trade_contract(conn, leg.contract(ticker, multiplier),
                                                   leg.sign * leg.ratio * fill.quantity, price, fill.at)
        realized = realized.quantize(MONEY_PLACES, rounding=ROUND_HALF_EVEN)
        premium = -fill.price * fill.quantity * multiplier
        filled = order_row["filled_quantity"] + fill.quantity
        # The fill's realized P&L, its cash (premium, then commission), the order's filled quantity
        # and its `fill` event: one statement.
        await conn.execute(
            """WITH realized AS (UPDATE broker_fills SET realized_pnl = $2 WHERE fill_id = $1),
               cash AS (
                   INSERT INTO broker_cash_ledger (account_id, at, amount, kind, fill_id, note)
                   VALUES ($3, $4, $5, 'premium', $1, $6), ($3, $4, $7, 'commission', $1, NULL)),
               filled AS (UPDATE broker_orders SET filled_quantity = $9, updated_at = $4 WHERE broker_order_id = $8)
               INSERT INTO broker_order_events (broker_order_id, kind, at, detail) VALUES ($8, 'fill', $4, $10::jsonb)""",
            fill.fill_id, realized, self.account_id, fill.at, premium, f"{fill.quantity} x {fill.price} {ticker}",
            -fill.commission, fill.broker_order_id, filled,
            {"fill_id": fill.fill_id, "quantity": fill.quantity, "price": str(fill.price)})
        return filled

    async def _trade_contract(self, conn: asyncpg.Connection, contract: OptionContract, change: int,
                              price: Decimal, at: datetime) -> Decimal:
        key = (self.account_id, contract.ticker, contract.expiry, contract.strike, contract.right)
        row = await conn.fetchrow(
            """SELECT quantity, avg_price, realized_pnl FROM broker_positions
               WHERE account_id = $1 AND ticker = $2 AND expiry = $3 AND strike = $4 AND option_right = $5
               FOR UPDATE""", *key)
        quantity, avg, realized_before = (row["quantity"], row["avg_price"], row["realized_pnl"]) if row else (0, Decimal(0), Decimal(0))
        new_qty, new_avg, realized_per = apply_to_position(quantity, avg, change, price)
        realized = realized_per * contract.multiplier
        if new_qty == 0:
            await conn.execute(
                """DELETE FROM broker_positions
                   WHERE account_id = $1 AND ticker = $2 AND expiry = $3 AND strike = $4 AND option_right = $5""", *key)
        else:
            await conn.execute(
                """INSERT INTO broker_positions (account_id, ticker, expiry, strike, option_right, multiplier, quantity,
                                                 avg_price, realized_pnl, updated_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                   ON CONFLICT (account_id, ticker, expiry, strike, option_right)
                   DO UPDATE SET quantity = EXCLUDED.quantity, avg_price = EXCLUDED.avg_price,
                                 realized_pnl = EXCLUDED.realized_pnl, updated_at = EXCLUDED.updated_at""",
                *key, contract.multiplier, new_qty, new_avg,
                (realized_before + realized).quantize(MONEY_PLACES, rounding=ROUND_HALF_EVEN), at)
        return realized

    async def order_status(self, order_id: str) -> BrokerOrderStatus | None:
        """Where this account's broker order for `order_id` stands (None: never placed here)."""
        row = await self.pool.fetchrow(
            f"""SELECT bo.*, o.state,
                      (SELECT {_AVG_FILL_PRICE} FROM broker_fills f
                        WHERE f.broker_order_id = bo.broker_order_id) AS avg_fill_price
               FROM broker_orders bo JOIN orders o USING (order_id)
               WHERE bo.order_id = $1 AND bo.account_id = $2""", order_id, self.account_id)
        return None if row is None else status_from_row(order_id, row)

    async def fills(self, order_id: str | None = None) -> list[Fill]:
        rows = await self.pool.fetch(
            """SELECT * FROM broker_fills WHERE account_id = $1 AND ($2::text IS NULL OR order_id = $2)
               ORDER BY filled_at, fill_id""", self.account_id, order_id)
        return [fill_from_row(r) for r in rows]

    # ---------------------------------------------------------------- positions and cash
    async def positions(self, ticker: str | None = None) -> list[BrokerPosition]:
        rows = await self.pool.fetch(
            """SELECT * FROM broker_positions WHERE account_id = $1 AND quantity <> 0
                 AND ($2::text IS NULL OR ticker = $2)
               ORDER BY ticker, expiry, strike, option_right""", self.account_id, ticker)
        return [position_from_row(r) for r in rows]

    async def cash(self) -> Decimal:
        return await self.pool.fetchval(
            "SELECT COALESCE(sum(amount), 0) FROM broker_cash_ledger WHERE account_id = $1", self.account_id)

    async def cash_entries(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT at, amount, kind, fill_id, note FROM broker_cash_ledger WHERE account_id = $1 ORDER BY id",
            self.account_id)
        return [dict(r) for r in rows]

    async def realized_pnl(self, since: datetime | None = None) -> Decimal:
        """Dollars realized by closing fills and by expiries (settlements, exercises, assignments)."""
        return await self.pool.fetchval(f"SELECT {_realized_since('$2')}", self.account_id, since)

    async def account_figures(self, day_start: datetime, *, conn: asyncpg.Connection | None = None) -> AccountFigures:
        """Cash, open option positions, shares held, and realized P&L in all and since `day_start`
        (`realized_pnl`), read in one statement: one round trip, one snapshot of the books."""
        row = await (conn or self.pool).fetchrow(
            f"""SELECT (SELECT COALESCE(sum(amount), 0) FROM broker_cash_ledger WHERE account_id = $1) AS cash,
                       (SELECT array_agg(p ORDER BY p.ticker, p.expiry, p.strike, p.option_right) FROM broker_positions p
                         WHERE p.account_id = $1 AND p.quantity <> 0) AS positions,
                       (SELECT array_agg(s ORDER BY s.ticker) FROM broker_share_positions s
                         WHERE s.account_id = $1 AND s.quantity <> 0) AS shares,
                       {_realized_since("NULL")} AS realized_pnl,
                       {_realized_since("$2")} AS realized_pnl_since""",
            self.account_id, day_start)
        return AccountFigures(
            cash=row["cash"], positions=tuple(position_from_row(r) for r in row["positions"] or ()),
            shares=tuple(ShareHolding(r["ticker"], r["quantity"], r["avg_price"]) for r in row["shares"] or ()),
            realized_pnl=row["realized_pnl"], realized_pnl_since=row["realized_pnl_since"])

    # ---------------------------------------------------------------- expiries and shares (migration 0007)
    async def positions_expiring(self, conn: asyncpg.Connection, on_or_before: date) -> list[asyncpg.Record]:
        """Open option rows expiring on or before `on_or_before`, locked for the caller's transaction."""
        return await conn.fetch(
            """SELECT * FROM broker_positions WHERE account_id = $1 AND expiry <= $2 AND quantity <> 0
               ORDER BY ticker, expiry, strike, option_right FOR UPDATE""", self.account_id, on_or_before)

    async def remove_at_expiry(self, conn: asyncpg.Connection, row: asyncpg.Record, *, settlement_price: Decimal,
                               intrinsic: Decimal, outcome: str, share_change: int, at: datetime) -> Decimal | None:
        """Take one expired option row off the books inside the caller's transaction.

        The option closes at its intrinsic value (`intrinsic` per share; realized against its
        average price). A cash-settled option pays intrinsic x quantity x multiplier in cash. An
        exercised or assigned one delivers `share_change` shares (signed) at the strike: the cash
        entry is -strike x share_change, and the shares are booked at the settlement price (the
        option's intrinsic value was realized on the option, so strike = settlement price -/+
        intrinsic and the two add up to the strike). Returns the dollars realized, or None when
        this contract was already removed (idempotent per contract and expiry).
        """
        contract = position_from_row(row).contract
        _, _, realized_per = apply_to_position(row["quantity"], row["avg_price"], -row["quantity"], intrinsic)
        realized = realized_per * contract.multiplier
        if share_change:
            realized += await self._trade_shares(conn, contract.ticker, share_change, settlement_price, at)
        realized = realized.quantize(MONEY_PLACES, rounding=ROUND_HALF_EVEN)
        inserted = await conn.fetchval(
            """INSERT INTO broker_expiries (account_id, ticker, expiry, strike, option_right, quantity, avg_price,
                                            settlement_price, intrinsic, outcome, realized_pnl, at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
               ON CONFLICT DO NOTHING RETURNING ticker""",
            self.account_id, contract.ticker, contract.expiry, contract.strike, contract.right, row["quantity"],
            row["avg_price"], settlement_price, intrinsic, outcome, realized, at)
        if inserted is None:
            raise FillRejected(f"{contract.label()} was already removed at expiry but is still on the books")
        await conn.execute(
            """DELETE FROM broker_positions
               WHERE account_id = $1 AND ticker = $2 AND expiry = $3 AND strike = $4 AND option_right = $5""",
            self.account_id, contract.ticker, contract.expiry, contract.strike, contract.right)
        label = f"{row['quantity']} x {contract.label()} at {settlement_price}"
        if outcome == "cash_settled" and intrinsic:
            await self._cash(conn, at, intrinsic * row["quantity"] * contract.multiplier, "settlement", label)
        elif share_change:
            await self._cash(conn, at, -contract.strike * share_change, "exercise" if outcome == "exercised" else "assignment",
                             f"{label}: {share_change:+d} shares at the strike")
        return realized

    async def _cash(self, conn: asyncpg.Connection, at: datetime, amount: Decimal, kind: str, note: str) -> None:
        await conn.execute(
            "INSERT INTO broker_cash_ledger (account_id, at, amount, kind, note) VALUES ($1, $2, $3, $4, $5)",
            self.account_id, at, amount, kind, note)

    async def _trade_shares(self, conn: asyncpg.Connection, ticker: str, change: int, price: Decimal,
                            at: datetime) -> Decimal:
        row = await conn.fetchrow(
            "SELECT quantity, avg_price, realized_pnl FROM broker_share_positions WHERE account_id = $1 AND ticker = $2 FOR UPDATE",
            self.account_id, ticker)
        quantity, avg, before = (row["quantity"], row["avg_price"], row["realized_pnl"]) if row else (0, Decimal(0), Decimal(0))
        new_qty, new_avg, realized = apply_to_position(quantity, avg, change, price)
        await conn.execute(
            """INSERT INTO broker_share_positions (account_id, ticker, quantity, avg_price, realized_pnl, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (account_id, ticker) DO UPDATE SET quantity = EXCLUDED.quantity,
                   avg_price = EXCLUDED.avg_price, realized_pnl = EXCLUDED.realized_pnl, updated_at = EXCLUDED.updated_at""",
            self.account_id, ticker, new_qty, new_avg, (before + realized).quantize(MONEY_PLACES), at)
        return realized

    async def share_positions(self) -> list[ShareHolding]:
        rows = await self.pool.fetch(
            """SELECT ticker, quantity, avg_price FROM broker_share_positions
               WHERE account_id = $1 AND quantity <> 0 ORDER BY ticker""", self.account_id)
        return [ShareHolding(r["ticker"], r["quantity"], r["avg_price"]) for r in rows]

    async def expiries(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch("SELECT * FROM broker_expiries WHERE account_id = $1 ORDER BY at, ticker, expiry, strike",
                                     self.account_id)
        return [dict(r) for r in rows]


@dataclass(frozen=True)
class ShareHolding:
    """Shares held (signed), average price per share."""

    ticker: str
    quantity: int
    avg_price: Decimal


@dataclass(frozen=True)
class AccountFigures:
    """What an account's books say at one instant (`BrokerLedger.account_figures`)."""

    cash: Decimal
    positions: tuple[BrokerPosition, ...]  # open option positions, by ticker, expiry, strike, right
    shares: tuple[ShareHolding, ...]  # shares held, by ticker
    realized_pnl: Decimal  # since the account opened
    realized_pnl_since: Decimal  # since the day start asked for


def premium_basis(positions: Sequence[BrokerPosition]) -> Decimal:
    """Dollars paid for the open contracts (+ paid for longs, - received for shorts)."""
    return sum((p.quantity * p.avg_price * p.contract.multiplier for p in positions), Decimal(0))
