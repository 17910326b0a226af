"""A small fake of tastytrade's REST API on 127.0.0.1, shaped like the documented responses the
`tastytrade` SDK (13.x) parses: OAuth token, accounts, balances, positions, order dry run, place,
replace, cancel, and the day's orders. Keys are dasherized and prices carry a `-effect`
(Debit/Credit), as the real API sends them.

The venue's behaviour is the test's choice (`policy`): fill at the limit, fill part, reject with a
reason, or hold; `stop()` / `start()` on the same port is a dropped connection.
"""
from __future__ import annotations

import asyncio
import json
import re
import threading
from datetime import datetime, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACCOUNT = "5WT00001"
NEW_YORK = ZoneInfo("America/New_York")
NOW = "2026-11-20T15:00:00.000+00:00"


def money(value: Decimal) -> tuple[str, str]:
    return str(abs(value)), ("Debit" if value < 0 else "Credit" if value > 0 else "None")


class FakeTastytrade:
    def __init__(self, *, client_secret: str, refresh_token: str, policy: str = "fill"):
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.policy = policy  # "fill" | "partial:N" | "reject:REASON" | "hold"
        self.orders: dict[int, dict] = {}
        self.next_id = 7001
        self.fill_seq = 0
        self.positions: list[dict] = []
        # Trade transactions the venue books for each leg fill (its fees); `book_fees=False`: none (yet).
        self.transactions: list[dict] = []
        self.book_fees = True
        # Option chain and streamed market data: symbol -> nested chain; streamer symbol -> (bid, ask, greeks)
        self.chains: dict[str, dict] = {}
        self.streamed: dict[str, tuple[str, str, dict]] = {}
        self.open_interest: dict[str, int] = {}  # streamer symbol -> open interest (Summary events)
        self.candles: dict[str, list[tuple]] = {}  # symbol -> [(date, open, high, low, close, volume)], oldest first
        self.dxlink_token = "dxlink-token-from-fake"
        self.dxlink_port = 0
        self.dxlink_messages: list[dict] = []
        self.requests: list[tuple[str, str, str]] = []  # (method, path, body)
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None
        self.port = 0

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "FakeTastytrade":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                with fake.lock:
                    fake.requests.append((method, self.path, body))
                    status, payload = fake.route(method, self.path.split("?")[0], body, self.headers)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

            def do_PUT(self):
                self._answer("PUT")

            def do_DELETE(self):
                self._answer("DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------- routes
    def route(self, method: str, path: str, body: str, headers) -> tuple[int, dict]:
        if method == "POST" and path == "/oauth/token":
            grant = json.loads(body)
            if grant.get("client_secret") != self.client_secret or grant.get("refresh_token") != self.refresh_token:
                return 401, {"error": {"code": "invalid_grant", "message": "Grant revoked or invalid"}}
            return 200, {"access_token": "access-token-from-fake", "expires_in": 900, "token_type": "Bearer"}
        if headers.get("Authorization") != "Bearer access-token-from-fake":
            return 401, {"error": {"code": "unauthorized", "message": "Not logged in"}}
        if method == "GET" and path == "/api-quote-tokens":
            return 200, {"data": {"token": self.dxlink_token, "dxlink-url": f"ws://127.0.0.1:{self.dxlink_port}",
                                  "level": "api"}}
        match = re.fullmatch(r"/option-chains/([A-Z]+)/nested", path)
        if method == "GET" and match:
            chain = self.chains.get(match.group(1))
            return (200, {"data": {"items": [chain]}}) if chain else (404, {"error": {"code": "not_found", "message": "no chain"}})
        if method == "GET" and path == "/customers/me/accounts":
            return 200, {"data": {"items": [{"account": self.account_json(), "authority-level": "owner"}]}}
        prefix = f"/accounts/{ACCOUNT}"
        if method == "GET" and path == f"{prefix}/balances/USD":
            return 200, {"data": self.balances_json()}
        if method == "GET" and path == f"{prefix}/positions":
            return 200, {"data": {"items": self.positions}}
        if method == "GET" and path == f"{prefix}/transactions":
            return 200, {"data": {"items": self.transactions},
                         "pagination": {"page-offset": 0, "total-pages": 1, "per-page": 250,
                                        "total-items": len(self.transactions)}}
        if method == "GET" and path == f"{prefix}/orders/live":
            return 200, {"data": {"items": list(self.orders.values())}}
        if method == "POST" and path == f"{prefix}/orders/dry-run":
            order = self.order_json(json.loads(body), order_id=None)
            return 201, {"data": {"order": order, "buying-power-effect": self.effect_json(json.loads(body)),
                                  "fee-calculation": self.fees_json(json.loads(body)),
                                  "warnings": [{"code": "tif_next_valid_sesssion", "message": "fake warning"}]}}
        if method == "POST" and path == f"{prefix}/orders":
            request = json.loads(body)
            if self.policy.startswith("reject:"):
                return 422, {"error": {"code": "margin_check_failed", "message": self.policy.split(":", 1)[1]}}
            order = self.new_order(request)
            return 201, {"data": {"order": order, "buying-power-effect": self.effect_json(request)}}
        match = re.fullmatch(rf"{prefix}/orders/(\d+)", path)
        if match:
            order_id = int(match.group(1))
            order = self.orders.get(order_id)
            if order is None:
                return 404, {"error": {"code": "not_found", "message": "order not found"}}
            if method == "GET":
                return 200, {"data": order}
            if method == "DELETE":
                if order["status"] not in ("Live", "Received"):
                    return 422, {"error": {"code": "not_cancellable", "message": f"order is {order['status']}"}}
                order["status"], order["cancellable"] = "Cancelled", False
                return 200, {"data": order}
            if method == "PUT":
                if order["status"] != "Live":
                    return 422, {"error": {"code": "not_editable", "message": f"order is {order['status']}"}}
                order["status"] = "Cancelled"
                request = json.loads(body)
                replacement = self.new_order({**request, "legs": [
                    {"instrument-type": leg["instrument-type"], "symbol": leg["symbol"], "action": leg["action"],
                     "quantity": leg["remaining-quantity"]} for leg in order["legs"]]}, replaces=order_id)
                return 200, {"data": replacement}
        return 404, {"error": {"code": "not_found", "message": f"{method} {path}"}}

    # ---------------------------------------------------------------- the venue
    def new_order(self, request: dict, replaces: int | None = None) -> dict:
        order_id = self.next_id
        self.next_id += 1
        order = self.order_json(request, order_id)
        order["replaces-order-id"] = replaces
        self.orders[order_id] = order
        if self.policy == "fill":
            self.fill(order_id, None)
        elif self.policy.startswith("partial:") and replaces is None:
            self.fill(order_id, int(self.policy.split(":")[1]))
        return order

    def signed_price(self, order: dict) -> Decimal:
        price = Decimal(order["price"])
        return -price if order.get("price-effect") == "Debit" else price

    def leg_prices(self, order: dict) -> list[Decimal]:
        """Leg prices per contract whose signed sum (+ credit for sells) matches the order price."""
        legs = order["legs"]
        gcd = min(Decimal(leg["quantity"]) for leg in legs)
        signs = [(-1 if leg["action"].startswith("Buy") else 1) * Decimal(leg["quantity"]) / gcd for leg in legs]
        others = [Decimal("5.00")] * (len(legs) - 1)
        credit = self.signed_price(order)  # + credit / - debit, per unit
        first = (credit - sum((s * p for s, p in zip(signs[1:], others)), Decimal(0))) / signs[0]
        assert first >= 0, "the fake cannot price this order"
        return [first, *others]

    def fill(self, order_id: int, units: int | None) -> None:
        order = self.orders[order_id]
        legs = order["legs"]
        # The order's units: the smallest leg (ratio 1); each leg's ratio = its quantity / units.
        size = min(Decimal(leg["quantity"]) for leg in legs)
        ratios = [Decimal(leg["quantity"]) / size for leg in legs]
        remaining_units = min(Decimal(leg["remaining-quantity"]) / r for leg, r in zip(legs, ratios))
        take = remaining_units if units is None else min(Decimal(units), remaining_units)
        if take <= 0:
            return
        self.fill_seq += 1
        at = datetime.now(timezone.utc).isoformat()
        group = f"G{self.fill_seq:05d}"  # one combo execution: its leg fills share the group fill id
        for leg, ratio, price in zip(legs, ratios, self.leg_prices(order)):
            quantity = take * ratio
            leg["fills"].append({"fill-id": f"F{self.fill_seq:05d}-{leg['symbol'].replace(' ', '')}",
                                 "quantity": str(quantity), "fill-price": str(price), "filled-at": at,
                                 "destination-venue": "FAKE", "ext-group-fill-id": group})
            if self.book_fees:
                self.transactions.append(self.transaction_json(order_id, group, leg, quantity, price, at))
            leg["remaining-quantity"] = str(Decimal(leg["remaining-quantity"]) - quantity)
        if all(Decimal(leg["remaining-quantity"]) == 0 for leg in legs):
            order["status"], order["cancellable"], order["editable"] = "Filled", False, False

    # ---------------------------------------------------------------- shapes
    def transaction_json(self, order_id: int, group: str, leg: dict, quantity: Decimal, price: Decimal,
                         at: str) -> dict:
        """A Trade transaction for one leg fill, with tastytrade's option fees: $1.00 a contract
        commission (opening), $0.10 clearing, $0.02 regulatory — each a Debit."""
        value = quantity * price * 100
        fees = {"commission": Decimal("1.00") * quantity, "clearing-fees": Decimal("0.10") * quantity,
                "regulatory-fees": Decimal("0.02") * quantity}
        data = {"id": 90000 + len(self.transactions), "account-number": ACCOUNT, "transaction-type": "Trade",
                "transaction-sub-type": leg["action"], "description": f"{leg['action']} {quantity} {leg['symbol']}",
                "executed-at": at, "transaction-date": at[:10], "value": str(value),
                "value-effect": "Debit" if leg["action"].startswith("Buy") else "Credit",
                "net-value": str(value + sum(fees.values())), "net-value-effect": "Debit",
                "is-estimated-fee": True, "symbol": leg["symbol"], "instrument-type": "Equity Option",
                "underlying-symbol": leg["symbol"][:6].strip(), "action": leg["action"], "quantity": str(quantity),
                "price": str(price), "order-id": order_id, "ext-group-fill-id": group,
                "proprietary-index-option-fees": "0.0", "proprietary-index-option-fees-effect": "None"}
        for key, amount in fees.items():
            data[key], data[f"{key}-effect"] = str(amount), "Debit"
        return data

    def order_json(self, request: dict, order_id: int | None) -> dict:
        legs = [{"instrument-type": leg["instrument-type"], "symbol": leg["symbol"], "action": leg["action"],
                 "quantity": str(leg["quantity"]), "remaining-quantity": str(leg["quantity"]), "fills": []}
                for leg in request["legs"]]
        order = {"account-number": ACCOUNT, "time-in-force": request.get("time-in-force", "Day"),
                 "order-type": request["order-type"], "underlying-symbol": request["legs"][0]["symbol"][:6].strip(),
                 "underlying-instrument-type": "Equity", "status": "Live" if order_id else "Received",
                 "cancellable": True, "editable": True, "edited": False, "updated-at": NOW, "legs": legs,
                 "price": request.get("price"), "price-effect": request.get("price-effect"),
                 "external-identifier": request.get("external-identifier")}
        if order_id is not None:
            order["id"] = order_id
        return order

    def account_json(self) -> dict:
        return {"account-number": ACCOUNT, "opened-at": NOW, "nickname": "fake", "account-type-name": "Individual",
                "is-closed": False, "day-trader-status": False, "is-firm-error": False, "is-firm-proprietary": False,
                "is-futures-approved": False, "margin-or-cash": "Margin", "is-foreign": False, "created-at": NOW}

    def balances_json(self) -> dict:
        zero = "0.0"
        fields = ["long-equity-value", "short-equity-value", "long-futures-value", "short-futures-value",
                  "long-futures-derivative-value", "short-futures-derivative-value", "long-margineable-value",
                  "short-margineable-value", "futures-margin-requirement", "maintenance-call-value",
                  "reg-t-call-value", "day-trading-call-value", "day-equity-call-value", "day-trade-excess",
                  "pending-cash", "long-cryptocurrency-value", "short-cryptocurrency-value",
                  "cryptocurrency-margin-requirement", "unsettled-cryptocurrency-fiat-amount",
                  "closed-loop-available-balance", "equity-offering-margin-requirement", "long-bond-value",
                  "bond-margin-requirement", "futures-overnight-margin-requirement",
                  "futures-intraday-margin-requirement", "pending-margin-interest",
                  "effective-cryptocurrency-buying-power"]
        data = {f: zero for f in fields}
        data.update({"account-number": ACCOUNT, "cash-balance": "90000.00", "long-derivative-value": "1200.00",
                     "short-derivative-value": "800.00", "margin-equity": "90400.00", "equity-buying-power": "80000.00",
                     "derivative-buying-power": "80000.00", "day-trading-buying-power": "0.0",
                     "available-trading-funds": "80000.00", "maintenance-requirement": "4000.00",
                     "net-liquidating-value": "90400.00", "cash-available-to-withdraw": "80000.00",
                     "used-derivative-buying-power": "4000.00", "snapshot-date": "2026-11-20",
                     "reg-t-margin-requirement": "4000.00", "maintenance-excess": "86400.00", "updated-at": NOW})
        return data

    def effect_json(self, request: dict) -> dict:
        margin, margin_effect = money(Decimal("-500.00"))
        return {"change-in-margin-requirement": margin, "change-in-margin-requirement-effect": margin_effect,
                "change-in-buying-power": "500.00", "change-in-buying-power-effect": "Debit",
                "current-buying-power": "80000.00", "current-buying-power-effect": "Credit",
                "new-buying-power": "79500.00", "new-buying-power-effect": "Credit",
                "isolated-order-margin-requirement": "500.00", "isolated-order-margin-requirement-effect": "Debit",
                "is-spread": True, "impact": "500.00", "effect": "Debit"}

    def fees_json(self, request: dict) -> dict:
        contracts = sum(Decimal(str(leg["quantity"])) for leg in request["legs"])
        commission = Decimal("1.00") * contracts
        return {"regulatory-fees": "0.10", "regulatory-fees-effect": "Debit", "clearing-fees": "0.20",
                "clearing-fees-effect": "Debit", "commission": str(commission), "commission-effect": "Debit",
                "proprietary-index-option-fees": "0.0", "proprietary-index-option-fees-effect": "None",
                "total-fees": str(commission + Decimal("0.30")), "total-fees-effect": "Debit"}


    # ---------------------------------------------------------------- DXLink (WebSocket)
    async def start_dxlink(self) -> None:
        """A DXLink endpoint speaking the messages the SDK's DXLinkStreamer uses: SETUP, AUTH_STATE,
        CHANNEL_REQUEST/OPENED, FEED_SETUP/CONFIG, FEED_SUBSCRIPTION -> FEED_DATA (FULL format)."""
        import websockets

        async def serve(ws):
            channels: dict[int, str] = {}
            async for raw in ws:
                message = json.loads(raw)
                self.dxlink_messages.append(message)
                kind, channel = message.get("type"), message.get("channel", 0)
                if kind == "SETUP":
                    await ws.send(json.dumps({"type": "SETUP", "channel": 0, "keepaliveTimeout": 60,
                                              "acceptKeepaliveTimeout": 60, "version": "fake"}))
                    await ws.send(json.dumps({"type": "AUTH_STATE", "channel": 0, "state": "UNAUTHORIZED"}))
                elif kind == "AUTH":
                    ok = message.get("token") == self.dxlink_token
                    await ws.send(json.dumps({"type": "AUTH_STATE", "channel": 0,
                                              "state": "AUTHORIZED" if ok else "UNAUTHORIZED"}))
                elif kind == "CHANNEL_REQUEST":
                    await ws.send(json.dumps({"type": "CHANNEL_OPENED", "channel": channel, "service": "FEED",
                                              "parameters": {"contract": "AUTO"}}))
                elif kind == "FEED_SETUP":
                    channels[channel] = next(iter(message["acceptEventFields"]))
                    await ws.send(json.dumps({"type": "FEED_CONFIG", "channel": channel, "dataFormat": "FULL",
                                              "aggregationPeriod": 0.1}))
                elif kind == "FEED_SUBSCRIPTION":
                    events = [e for add in message.get("add", [])
                              for e in self.events(channels[channel], add["symbol"])]
                    for start in range(0, len(events), 50):  # the SDK's socket takes messages up to 64 KiB
                        await ws.send(json.dumps({"type": "FEED_DATA", "channel": channel,
                                                  "data": events[start:start + 50]}))

        self._dxlink = await websockets.serve(serve, "127.0.0.1", 0)
        self.dxlink_port = self._dxlink.sockets[0].getsockname()[1]

    async def stop_dxlink(self) -> None:
        self._dxlink.close()
        await self._dxlink.wait_closed()

    def events(self, kind: str, symbol: str) -> list[dict]:
        """The events a subscription to `symbol` gets: one quote, Greeks or summary, or a daily-candle
        snapshot (newest first, flagged SNAPSHOT_BEGIN ... SNAPSHOT_END as dxFeed sends it)."""
        if kind == "Candle":
            rows = self.candles.get(symbol.split("{")[0], [])[::-1]
            out = []
            for i, (day, o, h, low, c, v) in enumerate(rows):
                at = int(datetime.combine(day, datetime.min.time(), tzinfo=NEW_YORK).timestamp() * 1000)
                flags = (0x4 if i == 0 else 0) | (0x8 if i == len(rows) - 1 else 0)
                out.append({"eventType": "Candle", "eventSymbol": symbol, "eventTime": 0, "eventFlags": flags,
                            "index": at, "time": at, "sequence": 0, "count": 1, "open": o, "high": h, "low": low,
                            "close": c, "volume": v})
            return out
        if kind == "Summary":
            if symbol not in self.open_interest:
                return []
            return [{"eventType": "Summary", "eventSymbol": symbol, "eventTime": 0, "dayId": 0,
                     "dayClosePriceType": "REGULAR", "prevDayId": 0, "prevDayClosePriceType": "REGULAR",
                     "openInterest": self.open_interest[symbol]}]
        event = self.event(kind, symbol)
        return [] if event is None else [event]

    def event(self, kind: str, symbol: str) -> dict | None:
        data = self.streamed.get(symbol)
        if data is None:
            return None
        bid, ask, greeks = data
        if kind == "Quote":
            return {"eventType": "Quote", "eventSymbol": symbol, "eventTime": 0, "sequence": 0, "timeNanoPart": 0,
                    "bidTime": 0, "bidExchangeCode": "C", "askTime": 0, "askExchangeCode": "C", "bidPrice": bid,
                    "askPrice": ask, "bidSize": 10, "askSize": 12}
        if kind == "Greeks":
            return {"eventType": "Greeks", "eventSymbol": symbol, "eventTime": 0, "eventFlags": 0, "index": 0,
                    "time": 0, "sequence": 0, "price": str((Decimal(bid) + Decimal(ask)) / 2), **greeks}
        return None
