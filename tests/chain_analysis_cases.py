"""A fixed set of option chains for `tools.chain_analysis.analyze_chain`: the 20 backtest
tickers on the simulated market (seed 7) on two January 2022 mornings, and the three real Cboe
quote tables in ../shared/data/cboe. Shared by the golden-output test
(tests/test_chain_analysis_speed_equivalence.py, its fixture generator
tests/make_chain_analysis_golden.py) and the timing benchmark (benchmarks/quant.py), so that
what is timed is what is checked.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from tools.chain import NEW_YORK, OptionChain

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CBOE_FILES = ("spx_quotedata_2022-02-04.csv", "ndx_quotedata_2022-02-04.csv", "spy_quotedata_2023-09-14.csv")
SIMULATED_TICKERS = ("SPY", "QQQ", "IWM", "AAPL", "MSFT", "NVDA", "AMZN", "TSLA", "JPM", "XLE",
                     "GOOGL", "META", "XLF", "XLK", "DIA", "AMD", "NFLX", "BAC", "KO", "DIS")
SIMULATED_TIMES = (datetime(2022, 1, 3, 10, 30, tzinfo=NEW_YORK), datetime(2022, 1, 4, 14, 0, tzinfo=NEW_YORK))


def simulated_chains(times=SIMULATED_TIMES) -> list[tuple[str, OptionChain]]:
    """(name, chain) for every backtest ticker at each of `times`, SimulatedMarket(seed=7)."""
    from tools.providers.simulated import SimulatedMarket

    market = SimulatedMarket(seed=7)
    out = []
    for as_of in times:
        snapshot = market.snapshot(SIMULATED_TICKERS, as_of)
        for symbol in SIMULATED_TICKERS:
            out.append((f"sim:{symbol}:{as_of.isoformat()}", snapshot.tickers[symbol].chain))
    return out


def cboe_chains() -> list[tuple[str, OptionChain]]:
    """(name, chain) for each real Cboe quote table (the 2022 SPX and NDX, the 2023 SPY)."""
    from tools.cboe import read_cboe_quote_table

    return [(f"cboe:{name}", read_cboe_quote_table(SHARED_DATA / "cboe" / name)) for name in CBOE_FILES]


def all_chains() -> list[tuple[str, OptionChain]]:
    return simulated_chains() + cboe_chains()
