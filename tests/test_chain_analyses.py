"""One chain analysis per distinct chain: started early (a backtest's head start on the next run),
taken by whoever asks for the identical chain, and never by a chain that differs in anything."""
from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime

import numpy as np
import pytest

from agents import chain_analyses
from agents.chain_analyses import analysis_of, chain_key, prefetch
from tools.chain import NEW_YORK
from tools.chain_analysis import analyze_chain
from tools.providers.simulated import SimulatedMarket

AS_OF = datetime(2022, 3, 8, 15, 30, tzinfo=NEW_YORK)


@pytest.fixture(scope="module")
def chain():
    return SimulatedMarket(seed=11).snapshot(["SPY"], AS_OF).tickers["SPY"].chain


def _copy(chain, **changes):
    arrays = {f.name: np.array(getattr(chain, f.name), copy=True) for f in dataclasses.fields(chain)
              if isinstance(getattr(chain, f.name), np.ndarray)}
    return dataclasses.replace(chain, **(arrays | changes))


def test_the_key_is_the_content_not_the_object(chain):
    assert chain_key(_copy(chain)) == chain_key(chain)
    bid = np.array(chain.bid, copy=True)
    bid[len(bid) // 2] += 0.01  # one quote a cent apart is another chain
    assert chain_key(_copy(chain, bid=bid)) != chain_key(chain)
    assert chain_key(_copy(chain, spot=chain.spot + 0.01)) != chain_key(chain)
    assert chain_key(_copy(chain, as_of=AS_OF.replace(minute=31))) != chain_key(chain)


def test_a_prefetched_analysis_is_the_one_the_run_gets_and_equals_a_fresh_one(chain):
    prefetch([chain])
    started = chain_analyses._kept[chain_key(chain)]
    got = asyncio.run(analysis_of(_copy(chain)))  # another object with the same content
    assert got is started.result()
    fresh = analyze_chain(chain)
    assert got.n_usable_quotes == fresh.n_usable_quotes
    np.testing.assert_array_equal(got.chain_iv.vol, fresh.chain_iv.vol)
    assert [s.fit.params for s in got.surface.fitted_slices] == [s.fit.params for s in fresh.surface.fitted_slices]


def test_a_changed_chain_is_analysed_anew(chain):
    spot = chain.spot * 1.01
    moved = asyncio.run(analysis_of(_copy(chain, spot=spot)))
    assert moved.spot == pytest.approx(spot)
    assert asyncio.run(analysis_of(chain)).spot == pytest.approx(chain.spot)


def test_only_the_most_recent_analyses_are_kept(chain, monkeypatch):
    monkeypatch.setattr(chain_analyses, "MAX_KEPT", 2)
    chains = [_copy(chain, spot=chain.spot + i) for i in range(3)]
    prefetch(chains)
    assert list(chain_analyses._kept)[-2:] == [chain_key(c) for c in chains[1:]]
    assert chain_key(chains[0]) not in chain_analyses._kept
