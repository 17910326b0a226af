"""The market a decision run reads: chosen on the command line or in `config/connections.yaml`,
recorded with the run as a *market source*, and rebuilt from that record when the run's orders are
re-quoted (approval, the order manager's re-check, the approver's preview).

A market source is a small JSON object:

- ``{"market": "simulated"}`` — the simulated market of the run's seed, with
  ``"chains": {"SPX": "/abs/spx_quotedata_2022-02-04.csv"}`` when `--chain` files replace chains;
- ``{"market": "files", "data_dir": "/abs/DIR"}`` — `tools.providers.files.FilesMarket`;
- ``{"market": "ibkr"}`` / ``{"market": "tastytrade"}`` — the broker's market data
  (`brokers.broker_market`), reached through `config/connections.yaml` as configured now.

A run made before sources were recorded has none; its provider name ("simulated") is enough.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from config.connections import Connections


class MarketSourceError(ValueError):
    """A market that cannot be built; the message is one line."""


def source_of(provider: Any) -> dict | None:
    """The provider's market source, or None when it only has a name."""
    source = getattr(provider, "source", None)
    return source() if callable(source) else None


def market_source(market: str, *, data_dir: str | Path | None = None, chains: dict[str, Path] | None = None,
                  connections: Connections | None = None) -> dict:
    """The source the command line (`--market`, `--data`, `--chain`) and the configuration ask for."""
    if market == "files":
        data_dir = data_dir or (connections.files.data_dir if connections is not None else "")
        if not data_dir:
            raise MarketSourceError("--market files needs --data DIR (or files.data_dir in config/connections.yaml, "
                                    "HEDGEGRAPH_DATA_DIR)")
        if chains:
            raise MarketSourceError("--chain replaces a simulated chain; with --market files put the Cboe quote tables "
                                    "(<ticker>_quotedata_<YYYY-MM-DD>.csv) in the --data directory")
        return {"market": "files", "data_dir": str(Path(data_dir).expanduser().resolve())}
    if data_dir:
        raise MarketSourceError(f"--data is read by the files market, not by --market {market}")
    if market in ("ibkr", "tastytrade"):
        if chains:
            raise MarketSourceError(f"--chain replaces a simulated chain, not {market}'s")
        return {"market": market}
    if market != "simulated":
        raise MarketSourceError(f"unknown market {market!r}: simulated, files, ibkr or tastytrade")
    return {"market": "simulated"} | ({"chains": {s: str(Path(p)) for s, p in chains.items()}} if chains else {})


def build_market(source: dict, seed: int, *, connections: Connections | None = None):
    """The provider a market source describes. Files are read (and refused) here."""
    kind = source.get("market")
    if kind == "simulated":
        from tools.providers.simulated import SimulatedMarket

        provider = SimulatedMarket(seed=seed)
        chains = source.get("chains") or {}
        if chains:
            from tools.providers.chain_files import ChainFileOverlay

            try:
                provider = ChainFileOverlay(provider, {s: Path(p) for s, p in chains.items()})
            except (OSError, ValueError, csv.Error) as exc:  # UnicodeDecodeError is a ValueError
                raise MarketSourceError(f"--chain: {type(exc).__name__}: {exc}") from None
        return provider
    if kind == "files":
        from tools.providers.files import FilesMarket

        try:
            return FilesMarket(source["data_dir"])
        except (OSError, ValueError, csv.Error) as exc:
            raise MarketSourceError(f"--data: {exc}") from None
    if kind in ("ibkr", "tastytrade"):
        from brokers.broker_market import BrokerMarket
        from config.connections import load_connections

        return BrokerMarket(kind, connections or load_connections())
    raise MarketSourceError(f"unknown market source {source!r}")
