"""The broker the configuration names (`config/connections.yaml`, `HEDGEGRAPH_BROKER`).

Paper is built ready to use; a real broker is built unconnected and connects on first use (each of
its methods does), so building one never blocks or fails on the network.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from config.connections import Connections, load_connections


def make_broker(db: Any, quotes, clock: Callable[[], datetime], *, opening_cash: Decimal,
                connections: Connections | None = None, account_id: str = "paper"):
    conn = connections or load_connections()
    if conn.broker == "ibkr":
        from brokers.ibkr import IbkrBroker

        return IbkrBroker(db, conn.ibkr)
    if conn.broker == "tastytrade":
        from brokers.tastytrade import TastytradeBroker

        return TastytradeBroker(db, conn.tastytrade)
    from brokers.paper import PaperBroker

    return PaperBroker(db, quotes, clock=clock, opening_cash=opening_cash, account_id=account_id)


async def close_broker(broker: Any) -> None:
    """Close a real broker's connection (the paper broker has none)."""
    close = getattr(broker, "close", None)
    if close is not None:
        await close()
