"""A small fake TWS / IB Gateway on 127.0.0.1 that speaks the TWS API socket protocol (server
version 157) for exactly the messages the IBKR adapter uses, so `ib_async` runs unmodified.

Framing (ib_async `client.py`): the client opens with b"API\\0" + a length-prefixed "v157..178";
every message after that is a 4-byte big-endian length and NUL-terminated fields. The server
answers the handshake with (server version, connection time), then, on `startApi` (71), with
`nextValidId` (9) and `managedAccounts` (15).

Handled requests (msg id): reqMktData 1 (snapshots; subscriptions answer open interest, tick 101),
placeOrder 3 (new, modify, whatIf), cancelOrder 4, reqOpenOrders 5,
reqExecutions 7, reqContractDetails 9, reqHistoricalData 20, reqMarketDataType 59, reqPositions 61, reqAccountSummary 62,
startApi 71, reqSecDefOptParams 78, reqCompletedOrders 99. Field layouts follow ib_async's `decoder.py` at version 157.

What the venue does with an order is the test's choice (`policy`): fill it at its limit, fill part
of it, reject it with a reason, or hold it; `fill(...)` fills a held order later (also while no
client is connected: the executions are reported on the next `reqExecutions`), and
`drop_clients()` cuts every connection as a network failure would.
"""
from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

SERVER_VERSION = 157
ACCOUNT = "DU1234567"


@dataclass
class Leg:
    con_id: int
    ratio: int
    action: str  # BUY / SELL


@dataclass
class FakeOrder:
    order_id: int
    client_id: int
    perm_id: int
    symbol: str
    legs: list[Leg]
    quantity: int
    limit: Decimal
    order_ref: str
    tif: str
    status: str = "Submitted"
    filled: int = 0
    executions: list[list] = field(default_factory=list)  # [execDetails fields (without reqId), commission]
    fill_prices: list[tuple[int, Decimal]] = field(default_factory=list)


def encode(*fields) -> bytes:
    body = "".join(f"{'' if f is None else f}\0" for f in fields).encode()
    return struct.pack(">I", len(body)) + body


class FakeTws:
    def __init__(self, *, policy: str = "fill", what_if_init_change: str = "500", positions=None,
                 account_values: dict[str, str] | None = None):
        self.policy = policy  # "fill" | "partial:N" | "reject:REASON" | "hold" | "warn" (warning 399, then hold)
        self.what_if_init_change = what_if_init_change
        self.positions = positions or []  # [(conId, symbol, expiry, strike, right, qty, avgCost)]
        self.account_values = account_values or {"NetLiquidation": "250000.00", "TotalCashValue": "180000.00",
                                                 "InitMarginReq": "12000.00", "GrossPositionValue": "70000.00",
                                                 "RealizedPnL": "125.50"}
        # Market data: (symbol, expiry, strike, right) -> (bid, ask, iv, delta, gamma, vega, theta, underlying)
        self.option_quotes: dict[tuple, tuple] = {}
        self.open_interest: dict[tuple, int] = {}  # (symbol, expiry, strike, right) -> contracts (generic tick 101)
        self.market_data_type = 3  # what IB answers under reqMarketDataType(3) without a subscription
        self.chain: dict[str, tuple[list[str], list[float]]] = {}  # symbol -> (expirations, strikes)
        self.daily: dict[str, list[tuple]] = {}  # symbol -> [(yyyymmdd, o, h, l, c, v)]
        self.contracts: dict[int, tuple[str, str, float, str]] = {}  # conId -> (symbol, expiry, strike, right)
        self._conid_by_key: dict[tuple, int] = {}
        self.orders: dict[int, FakeOrder] = {}
        self.next_order_id = 1
        self.next_perm_id = 900001
        self.exec_seq = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.received: list[list[str]] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> "FakeTws":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.drop_clients()
        self.server.close()
        await self.server.wait_closed()

    def drop_clients(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    # ---------------------------------------------------------------- wire
    def _send(self, *fields) -> None:
        for writer in self.writers:
            writer.write(encode(*fields))

    async def _read(self, reader: asyncio.StreamReader) -> list[str]:
        size = struct.unpack(">I", await reader.readexactly(4))[0]
        return (await reader.readexactly(size)).decode().split("\0")[:-1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            assert await reader.readexactly(4) == b"API\0"
            size = struct.unpack(">I", await reader.readexactly(4))[0]
            await reader.readexactly(size)  # "v157..178"
            self.writers.append(writer)
            writer.write(encode(SERVER_VERSION, "20261120 10:00:00 EST"))
            while True:
                fields = await self._read(reader)
                self.received.append(fields)
                self._handle(int(fields[0]), fields)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if writer in self.writers:
                self.writers.remove(writer)
            writer.close()

    # ---------------------------------------------------------------- contracts
    def con_id(self, symbol: str, expiry: str, strike: float, right: str) -> int:
        key = (symbol, expiry, float(strike), right)
        if key not in self._conid_by_key:
            con_id = 500000 + len(self._conid_by_key)
            self._conid_by_key[key] = con_id
            self.contracts[con_id] = key
        return self._conid_by_key[key]

    # ---------------------------------------------------------------- requests
    def _handle(self, msg_id: int, f: list[str]) -> None:
        if msg_id == 71:  # startApi
            self._send(9, 1, self.next_order_id)
            self._send(15, 1, ACCOUNT)
        elif msg_id == 61:  # reqPositions
            for con_id, symbol, expiry, strike, right, qty, avg_cost in self.positions:
                self._send(61, 3, ACCOUNT, con_id, symbol, "OPT", expiry, strike, right, "100", "SMART", "USD",
                           "", symbol, qty, avg_cost)
            self._send(62, 1)
        elif msg_id == 5:  # reqOpenOrders
            for order in self.orders.values():
                if order.status in ("Submitted", "PreSubmitted"):
                    self._open_order(order)
                    self._order_status(order)
            self._send(53, 1)
        elif msg_id == 99:  # reqCompletedOrders (the adapter reconciles from executions and open orders)
            self._send(102)
        elif msg_id == 7:  # reqExecutions
            req_id = f[2]
            for order in self.orders.values():
                for execution, commission in order.executions:
                    self._send(11, req_id, *execution)
                    self._send(59, 1, execution[12], commission, "USD", "", "", "")
            self._send(55, 1, req_id)
        elif msg_id == 9:  # reqContractDetails
            req_id, symbol, sec_type, expiry, strike, right = f[2], f[4], f[5], f[6], float(f[7]), f[8]
            con_id = self.con_id(symbol, expiry, strike, right)
            self._send(10, 8, req_id, symbol, sec_type, expiry, strike, right, "SMART", "USD",
                       f"{symbol} {expiry} {strike}{right}", symbol, symbol, con_id, "0.01", "", "100", "LMT",
                       "SMART", "1", "0", symbol, "", "", "", "", "", "US/Eastern", "", "", "", "", 0,
                       "", symbol, "STK", "", expiry, "")
            self._send(52, 1, req_id)
        elif msg_id == 62:  # reqAccountSummary
            req_id = f[2]
            for tag, value in self.account_values.items():
                self._send(63, 1, req_id, ACCOUNT, tag, value, "USD")
            self._send(64, 1, req_id)
        elif msg_id == 78:  # reqSecDefOptParams
            req_id, symbol, con_id = f[1], f[2], f[5]
            if symbol in self.chain:
                expirations, strikes = self.chain[symbol]
                self._send(75, req_id, "SMART", con_id, symbol, "100", len(expirations), *expirations, len(strikes),
                           *strikes)
            self._send(76, req_id)
        elif msg_id == 1:  # reqMktData: a snapshot, or a subscription (open interest with generic tick 101)
            req_id, key = f[2], (f[4], f[6], float(f[7] or 0), f[8])
            quote = self.option_quotes.get(key)
            if f[17] not in ("1", "True"):  # streaming: the open interest this fake knows, then nothing more
                if "101" in f[16].split(",") and key in self.open_interest:
                    self._send(2, 6, req_id, 27 if key[3] == "C" else 28, self.open_interest[key])
                return
            if quote is not None:
                delayed = self.market_data_type == 3
                bid, ask, iv, delta, gamma, vega, theta, und = quote
                self._send(58, 1, req_id, self.market_data_type)
                self._send(1, 6, req_id, 66 if delayed else 1, bid, 10, 0)
                self._send(1, 6, req_id, 67 if delayed else 2, ask, 10, 0)
                self._send(21, req_id, 83 if delayed else 13, 0, iv, delta, (bid + ask) / 2, 0, gamma, vega, theta, und)
            else:
                self._send(4, 2, req_id, 354, "Requested market data is not subscribed.")
            self._send(57, 1, req_id)
        elif msg_id == 20:  # reqHistoricalData
            req_id, symbol = f[1], f[3]
            rows = self.daily.get(symbol, [])
            fields = [17, req_id, "", "", len(rows)]
            for day, o, h, low, c, v in rows:
                fields += [day, o, h, low, c, v, c, 1]
            self._send(*fields)
        elif msg_id == 3:
            self._place(f)
        elif msg_id == 4:  # cancelOrder
            order = self.orders.get(int(f[2]))
            if order is not None and order.status not in ("Filled", "Cancelled", "Inactive"):
                order.status = "Cancelled"
                self._order_status(order)
                self._send(4, 2, order.order_id, 202, "Order Canceled - reason:")

    def _place(self, f: list[str]) -> None:
        order_id = int(f[1])
        symbol, quantity, limit, tif, order_ref = f[3], int(float(f[17])), Decimal(f[19]), f[21], f[26]
        what_if = f[-25] == "1"
        n_legs = int(f[35])
        legs = [Leg(int(f[36 + 8 * i]), int(f[37 + 8 * i]), f[38 + 8 * i]) for i in range(n_legs)]
        if what_if:
            order = FakeOrder(order_id, 0, 0, symbol, legs, quantity, limit, order_ref, tif, status="PreSubmitted")
            self._open_order(order, what_if=True)
            return
        if order_id in self.orders:  # a modification: the new limit
            order = self.orders[order_id]
            order.limit = limit
            self._open_order(order)
            self._order_status(order)
            if self.policy == "fill" or self.policy == "fill_on_modify":
                self.fill(order_id, order.quantity - order.filled)
            return
        order = FakeOrder(order_id, self._client_id(), self.next_perm_id, symbol, legs, quantity, limit, order_ref, tif)
        self.next_perm_id += 1
        self.orders[order_id] = order
        if self.policy.startswith("reject:"):
            order.status = "Inactive"
            self._send(4, 2, order_id, 201, f"Order rejected - reason:{self.policy.split(':', 1)[1]}")
            self._order_status(order)
            return
        self._open_order(order)
        self._order_status(order)
        if self.policy == "warn":  # an informational warning: the order stays live
            self._send(4, 2, order_id, 399, "Order Message: Warning: your order will not be placed at the exchange "
                                            "until 2026-11-20 09:30:00 US/Eastern")
        if self.policy == "fill":
            self.fill(order_id, quantity)
        elif self.policy.startswith("partial:"):
            self.fill(order_id, int(self.policy.split(":")[1]))

    def _client_id(self) -> int:
        starts = [fields for fields in self.received if fields[0] == "71"]
        return int(starts[-1][2]) if starts else 0

    # ---------------------------------------------------------------- the venue
    def leg_prices(self, order: FakeOrder) -> list[Decimal]:
        """Leg prices whose signed sum is the order's limit: every leg but the first at 5.00."""
        signs = [(1 if leg.action == "BUY" else -1) * leg.ratio for leg in order.legs]
        others = [Decimal("5.00")] * (len(order.legs) - 1)
        first = (order.limit - sum((s * p for s, p in zip(signs[1:], others)), Decimal(0))) / signs[0]
        assert first >= 0, "the fake cannot price this combo"
        return [first, *others]

    def fill(self, order_id: int, units: int) -> None:
        """Execute `units` of the order at its limit: one BAG execution and one per leg, each with a
        commission report, then the order status."""
        order = self.orders[order_id]
        units = min(units, order.quantity - order.filled)
        if units <= 0:
            return
        order.filled += units
        order.status = "Filled" if order.filled == order.quantity else "Submitted"
        order.fill_prices.append((units, order.limit))
        now = datetime.now(timezone.utc)
        stamp = now.strftime("%Y%m%d %H:%M:%S") + " UTC"
        self.exec_seq += 1
        base = f"0000e{self.exec_seq:04d}.{order.perm_id}"
        rows = [[order.order_id, 0, order.symbol, "BAG", "", "", "", "", "SMART", "USD", "", "", f"{base}.00",
                 stamp, ACCOUNT, "SMART", "BOT", units, order.limit, order.perm_id, order.client_id, 0, order.filled,
                 order.limit, order.order_ref, "", "", "", 1]]
        commissions = ["0"]
        for i, (leg, price) in enumerate(zip(order.legs, self.leg_prices(order))):
            symbol, expiry, strike, right = self.contracts[leg.con_id]
            rows.append([order.order_id, leg.con_id, symbol, "OPT", expiry, strike, right, "100", "SMART", "USD", "",
                         symbol, f"{base}.{i + 1:02d}", stamp, ACCOUNT, "SMART",
                         "BOT" if leg.action == "BUY" else "SLD", units * leg.ratio, price, order.perm_id,
                         order.client_id, 0, order.filled * leg.ratio, price, order.order_ref, "", "", "", 1])
            commissions.append(str(Decimal("0.65") * units * leg.ratio))
        for row, commission in zip(rows, commissions):
            order.executions.append([row, commission])
            self._send(11, -1, *row)
        for row, commission in zip(rows, commissions):
            self._send(59, 1, row[12], commission, "USD", "", "", "")
        self._order_status(order)

    # ---------------------------------------------------------------- messages
    def _order_status(self, order: FakeOrder) -> None:
        avg = (sum((q * p for q, p in order.fill_prices), Decimal(0)) / order.filled) if order.filled else 0
        last = order.fill_prices[-1][1] if order.fill_prices else 0
        self._send(3, order.order_id, order.status, order.filled, order.quantity - order.filled, avg, order.perm_id, 0,
                   last, order.client_id, "", "")

    def _open_order(self, order: FakeOrder, *, what_if: bool = False) -> None:
        """openOrder (5) laid out as ib_async's `Decoder.openOrder` reads it at server version 157."""
        margin = (["10000", "10000", "250000", self.what_if_init_change, self.what_if_init_change, "0",
                   str(Decimal("10000") + Decimal(self.what_if_init_change)),
                   str(Decimal("10000") + Decimal(self.what_if_init_change)), "250000", "1.30", "", "", "USD", ""]
                  if what_if else [""] * 9 + ["", "", "", "", ""])
        fields = [5, order.order_id, 0, order.symbol, "BAG", "", "", "", "", "SMART", "USD", "", "",
                  "BUY", order.quantity, "LMT", order.limit, "", order.tif, "", ACCOUNT, "O", 0, order.order_ref,
                  order.client_id, order.perm_id, 0, 0, 0, "", "", "", "", "", "",
                  # modelCode .. deltaNeutralAuxPrice (29)
                  "", "", "", "", "", 0, "", "", 0, "", "", "", "", "", "", 0, 0, 0, "", "", 0, 0, "", 0, 0, "", "", "", "",
                  # continuousUpdate .. comboLegsDescrip (7)
                  0, "", "", "", "", "", "",
                  len(order.legs)]
        for leg in order.legs:
            fields += [leg.con_id, leg.ratio, leg.action, "SMART", 0, 0, "", -1]
        fields += [0, 0, "", "", "", "", 0, "", "", 0, 0, "",
                   0, 1 if what_if else 0, order.status, *margin, 0, 0,
                   0,
                   "", "", "", "", "", "", "", 0, "", "", "", "", 0, 0, "", 0]
        self._send(*fields)
