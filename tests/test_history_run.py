"""A decision run end to end on the historical market (the provider the backtest will drive)."""
from __future__ import annotations

from datetime import datetime

from graph.runner import RunRequest, execute_run
from service.operations import default_account
from tests.conftest import SHARED_DATA
from tools.chain import NEW_YORK
from tools.providers.history import NO_SOCIAL, HistoricalMarket


async def test_a_run_on_a_historical_day_reads_the_modelled_chain_and_no_social_data(db):
    market = HistoricalMarket(SHARED_DATA / "history")
    request = RunRequest(watchlist="history", tickers=["SPY"], as_of=datetime(2022, 3, 8, 16, 30, tzinfo=NEW_YORK),
                         seed=0, provider=market.name)
    outcome = await execute_run(db, request, market, account=default_account())
    assert outcome.executed and outcome.run.status in ("awaiting_approval", "completed")
    signals = {s.source: s for s in outcome.state["signals"]}
    assert set(signals) == {"vol_surface", "flow", "technical", "social"}
    assert NO_SOCIAL in signals["social"].data_quality
    assert signals["social"].edge_type == "no_feed"
    assert "chain modelled from VIX9D/VIX/VIX3M/SKEW on 2022-03-08" in signals["vol_surface"].data_quality
    assert signals["vol_surface"].edge_type not in ("no_chain", "insufficient_data")
    # The regime came from that day's real VIX (35.13) and VIX3M (35.00): backwardation, not calm.
    assert outcome.state["context"].regime.name != "calm"
    # Modelled open interest is an assumption, not positioning: the flow analyst abstains and says so.
    assert signals["flow"].edge_type == "no_flow_data" and signals["flow"].conviction == 0.0
    assert "modelled chain: no flow information" in signals["flow"].data_quality
