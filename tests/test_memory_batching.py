"""Memory embeddings in batches: concurrent requests share one embedder call, the reflect node
embeds a run's situations in one call, and the vectors equal one-by-one embedding within float
tolerance; an embedder failure reaches every waiting caller. Real embedded Postgres; the models
are the packaged all-MiniLM-L6-v2 (local files) and a tiny BERT written by the test."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import numpy as np
import pytest

from config.settings import DecisionConfig, defaults
from domain.decision import Candidate, Regime, Signal
from memory.embeddings import MiniLMEmbedder
from memory.recall import RunMemory
from memory.store import EMBEDDING_DIM, MemoryStore
from service import approvals
from service.approvals import Decision, ServiceContext
from service.operations import run_decision
from tests.test_approvals import AS_OF, Clock
from tests.test_memory import T0, _write_tiny_bert
from tools.providers.simulated import SimulatedMarket

# Padding a text to a longer batch-mate's length moves its attention-masked mean by float32
# rounding only (~1e-7 on the packaged model); a real difference would be orders larger.
BATCH_TOLERANCE = 1e-5

TEXTS = [
    "SPY | regime neutral | signals: flow bullish 0.72 dealer_short_gamma | thesis: dealers short gamma | trade: none",
    "QQQ | regime high_vol | signals: none | thesis: none | trade: none",
    "AAPL | regime low_vol | signals: technical bearish 0.41 trend; volatility bearish 0.30 iv_rich | thesis: "
    "Regime low_vol (VIX 13.2, VIX/VIX3M 0.88). Bull evidence weight 0.31 vs bear 0.71 (margin -0.39); volatility "
    "view rich. Verdict: bearish. | trade: bear_call_spread; sell 190C 2024-02-16, buy 195C 2024-02-16; dte 30",
    "XLE | regime neutral | signals: sentiment bullish 0.55 news | thesis: oil rally | trade: none",
    "JPM earnings next week, skew cheap",
    "a",
    "TSLA | regime high_vol | signals: flow bearish 0.66 put_sweeps; technical bearish 0.58 breakdown | thesis: "
    "selloff continues | trade: none",
    "NVDA | regime neutral | signals: technical bullish 0.62 trend | thesis: trend holds | trade: none",
]


class CountingEmbedder(MiniLMEmbedder):
    """The real embedder, recording the texts of every call it gets. In float32: BATCH_TOLERANCE
    is float32 rounding (bfloat16 moves a padded text's vector by ~1e-3)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("precision", "float32")
        super().__init__(*args, **kwargs)
        self.calls: list[list[str]] = []

    def embed(self, texts):
        self.calls.append(list(texts))
        return super().embed(texts)


class BrokenEmbedder:
    """Fails its first `failures` calls the way a corrupt model file would, then embeds."""

    dim = EMBEDDING_DIM

    def __init__(self, inner: MiniLMEmbedder, failures: int = 1):
        self.inner, self.failures, self.calls = inner, failures, 0

    def embed(self, texts):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("model weights are corrupt")
        return self.inner.embed(texts)


class OneRowEmbedder:
    """Returns one row whatever it is asked: the store must refuse the shape for every caller."""

    dim = EMBEDDING_DIM

    def embed(self, texts):
        return np.ones((1, EMBEDDING_DIM), dtype=np.float32)


class ZeroForEmptyThesisEmbedder:
    """A zero vector for texts that say `thesis: none`, unit vectors otherwise."""

    dim = EMBEDDING_DIM

    def embed(self, texts):
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i, len(text) % EMBEDDING_DIM] = 0.0 if "thesis: none" in text else 1.0
        return out


@pytest.fixture(scope="module")
def tiny_384_model(tmp_path_factory):
    return _write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-384"), hidden=EMBEDDING_DIM, heads=6, seed=1)


async def test_concurrent_embeds_share_one_call_and_equal_one_by_one(db):
    embedder = CountingEmbedder()  # the packaged all-MiniLM-L6-v2
    store = MemoryStore(db.pool, embedder)
    alone = np.stack([embedder.embed([text])[0] for text in TEXTS])
    embedder.calls.clear()

    together = await asyncio.gather(*(store.embed([text]) for text in TEXTS))
    assert embedder.calls == [TEXTS]  # one call, the texts in the callers' order
    together = np.concatenate(together)
    assert together.shape == (len(TEXTS), EMBEDDING_DIM) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, rtol=0, atol=BATCH_TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-6)

    # A request for several texts and single ones, all at once: still one call, each caller its rows.
    embedder.calls.clear()
    many, first, last = await asyncio.gather(store.embed(TEXTS[1:4]), store.embed(TEXTS[:1]), store.embed(TEXTS[-1:]))
    assert len(embedder.calls) == 1 and sorted(embedder.calls[0]) == sorted(TEXTS[1:4] + TEXTS[:1] + TEXTS[-1:])
    np.testing.assert_allclose(many, alone[1:4], rtol=0, atol=BATCH_TOLERANCE)
    np.testing.assert_allclose(first[0], alone[0], rtol=0, atol=BATCH_TOLERANCE)
    np.testing.assert_allclose(last[0], alone[-1], rtol=0, atol=BATCH_TOLERANCE)
    assert (await store.embed([])).shape == (0, EMBEDDING_DIM) and len(embedder.calls) == 1


async def test_requests_made_during_a_forward_pass_join_the_next_one(db, tiny_384_model):
    embedder = CountingEmbedder(tiny_384_model)
    store = MemoryStore(db.pool, embedder)

    async def later(text: str, turns: int):
        for _ in range(turns):
            await asyncio.sleep(0)
        return await store.embed([text])

    # The first request starts a pass at once; the others arrive while it runs (the thread cannot
    # finish in zero event-loop turns of this test) and go together into the next call.
    results = await asyncio.gather(store.embed([TEXTS[0]]), *(later(t, 3) for t in TEXTS[1:]))
    assert embedder.calls == [TEXTS[:1], TEXTS[1:]]
    np.testing.assert_allclose(np.concatenate(results), embedder.embed(TEXTS), rtol=0, atol=BATCH_TOLERANCE)


async def test_an_embedder_error_reaches_every_waiting_caller_and_the_next_batch_works(db, tiny_384_model):
    embedder = BrokenEmbedder(MiniLMEmbedder(tiny_384_model))
    store = MemoryStore(db.pool, embedder)
    outcomes = await asyncio.wait_for(asyncio.gather(
        *(store.similar(text, as_of=T0) for text in TEXTS[:4]), store.embed(TEXTS[4:]), return_exceptions=True),
        timeout=30)
    assert embedder.calls == 1
    assert all(isinstance(o, RuntimeError) and str(o) == "model weights are corrupt" for o in outcomes), outcomes
    # Nothing is left queued or stuck: the next requests are embedded.
    vectors = await asyncio.wait_for(asyncio.gather(*(store.embed([t]) for t in TEXTS[:3])), timeout=30)
    assert embedder.calls == 2 and all(v.shape == (1, EMBEDDING_DIM) for v in vectors)


async def test_a_result_of_the_wrong_shape_fails_every_caller(db):
    store = MemoryStore(db.pool, OneRowEmbedder())
    outcomes = await asyncio.wait_for(asyncio.gather(
        *(store.embed([text]) for text in TEXTS[:3]), return_exceptions=True), timeout=30)
    assert all(isinstance(o, ValueError) and "shape (1, 384) for 3 texts" in str(o) for o in outcomes), outcomes
    with pytest.raises(ValueError, match=r"shape \(1, 384\) for 2 texts"):
        await store.embed(TEXTS[:2])
    with pytest.raises(TypeError, match="not a single string"):
        await store.embed("one text")


async def test_an_unusable_row_fails_only_its_own_caller(db):
    store = MemoryStore(db.pool, ZeroForEmptyThesisEmbedder())
    outcomes = await asyncio.gather(*(store.embed([text]) for text in TEXTS[:3]), return_exceptions=True)
    assert "thesis: none" in TEXTS[1] and isinstance(outcomes[1], ValueError) and "zero vector" in str(outcomes[1])
    assert outcomes[0].shape == outcomes[2].shape == (1, EMBEDDING_DIM)


async def test_a_cancelled_caller_does_not_break_its_batch(db, tiny_384_model):
    embedder = CountingEmbedder(tiny_384_model)
    store = MemoryStore(db.pool, embedder)
    doomed = asyncio.ensure_future(store.embed([TEXTS[0]]))
    kept = asyncio.ensure_future(store.embed([TEXTS[1]]))
    await asyncio.sleep(0)
    doomed.cancel()
    vector = await asyncio.wait_for(kept, timeout=30)
    np.testing.assert_allclose(vector[0], embedder.embed([TEXTS[1]])[0], rtol=0, atol=BATCH_TOLERANCE)
    assert doomed.cancelled()


async def test_concurrent_recalls_embed_once_and_find_what_one_by_one_recalls_find(db):
    embedder = CountingEmbedder()
    store = MemoryStore(db.pool, embedder)
    regime = Regime(name="neutral", vix=18.0, vix3m=19.5, term_ratio=0.92)
    tickers = ["SPY", "QQQ", "AAPL", "XLE", "TSLA", "NVDA"]
    # Past situations with known outcomes, embedded one by one (each text its own call).
    for i, text in enumerate(TEXTS):
        memory_id = await store.add(ticker=tickers[i % len(tickers)], regime=regime, as_of=T0 + timedelta(days=i),
                                    signals=[], thesis=text, trade=None, horizon_days=1)
        await store.attach_outcome(memory_id, {"underlying_return": 0.01 * (i - 3)}, f"lesson {i}",
                                   known_at=T0 + timedelta(days=i + 1))
    as_of = T0 + timedelta(days=30)
    candidates = [Candidate(ticker=t, price_view="bullish", vol_view="rich", conviction=0.6, score=0.5,
                            vol_score=0.3, sources=["technical"], reasons=[f"{t} trend holds", "dealers short gamma"])
                  for t in tickers]
    signals = {t: [Signal(ticker=t, source="technical", direction="bullish", conviction=0.55 + 0.05 * i,
                          horizon_days=5, edge_type="trend", as_of=as_of)]
               for i, t in enumerate(tickers)}

    embedder.calls.clear()
    one_by_one = [await RunMemory(store, as_of).recall(c, signals[c.ticker], regime) for c in candidates]
    assert len(embedder.calls) == len(candidates)
    embedder.calls.clear()
    memory = RunMemory(store, as_of)
    together = await asyncio.gather(*(memory.recall(c, signals[c.ticker], regime) for c in candidates))
    assert len(embedder.calls) == 1 and len(embedder.calls[0]) == len(candidates)
    assert [len(found) for found in together] == [3] * len(candidates)
    assert together == one_by_one  # same memories, same order, same similarities to 2 decimals


def _config() -> DecisionConfig:
    # Every analyst's signal counts and almost any conviction makes a candidate: many verdicts.
    return defaults().decision.with_overrides({"min_agreeing_sources": 1, "conviction_threshold": 0.05})


async def test_reflect_embeds_the_runs_situations_in_one_call_in_verdict_order(db, tiny_384_model):
    clock = Clock(AS_OF)
    tickers = ["AMZN", "JPM", "XLE", "SPY", "QQQ", "AAPL", "MSFT", "NVDA", "IWM", "TSLA"]
    outcome = await run_decision(db, SimulatedMarket(7), watchlist="core", tickers=tickers, as_of=AS_OF, seed=7,
                                 config=_config(), now=clock)
    assert outcome.run.status == "awaiting_approval" and outcome.orders
    verdicts = outcome.state["verdicts"]
    assert len(verdicts) >= 3, [v.ticker for v in verdicts]
    embedder = CountingEmbedder(tiny_384_model)
    clock.at = AS_OF + timedelta(minutes=5)
    ctx = ServiceContext(db=db, clock=clock, memory=MemoryStore(db.pool, embedder))
    for order in outcome.orders:  # rejected: no fill, so nothing but the reflection embeds
        await approvals.decide(ctx, order.order_id, Decision("reject", "bob", reason="test"))

    rows = await db.pool.fetch("SELECT ticker, situation, embedding FROM memories WHERE run_id = $1 ORDER BY id",
                               outcome.run.run_id)
    assert [r["ticker"] for r in rows] == [v.ticker for v in verdicts]  # ids follow the verdicts
    assert embedder.calls == [[r["situation"] for r in rows]]  # one call for all of them
    stored = np.stack([r["embedding"].to_numpy() for r in rows])
    alone = np.stack([embedder.embed([r["situation"]])[0] for r in rows])
    np.testing.assert_allclose(stored, alone, rtol=0, atol=BATCH_TOLERANCE)
