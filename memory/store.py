"""Agent memory in Postgres + pgvector: situations, their outcomes, and as-of similarity search.

A situation (ticker, regime, signals, thesis, chosen trade) is rendered to one canonical text, that
text is embedded, and both are stored. When the horizon has passed, the outcome and a reflection
are attached with the time they became known (`outcome_known_at`).

Retrieval as of time T returns only situations whose outcome was known at or before T, so a
backtest or replay at T never sees anything learned later.

pgvector before 0.8 applies the WHERE clause *after* the HNSW scan has produced its `ef_search`
candidates, so a selective as-of or ticker filter can leave fewer than k rows. `similar` therefore
asks the planner how many rows the filter keeps (an estimate from the table statistics, no scan),
scans them exactly when that is cheaper than an index search wide enough for the filter, otherwise
raises `hnsw.ef_search` for this query in proportion to the filter's selectivity, and falls back to
the exact scan when the index still comes back short. Estimates only steer cost: the result is
always min(k, eligible) memories.

The SQL (the table, the index and exact searches) is `storage.memories.MemoryRepository`; this
module decides what is stored and which search runs. The pool's connections need pgvector's asyncpg
codec (`storage.database.connect` registers it), so embeddings travel as binary float32 vectors.
"""
from __future__ import annotations

import asyncio
import json
import math
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import numpy as np

from memory.embeddings import Embedder, MiniLMEmbedder
from storage.database import dumps
from storage.memories import Memory, MemoryRepository
from tools.text_batch import text_list

EMBEDDING_DIM = 384  # the `vector(384)` column; all-MiniLM-L6-v2's width
MAX_EF_SEARCH = 1_000  # pgvector's upper bound for hnsw.ef_search
# One HNSW candidate costs about as much as comparing this many eligible rows exactly (measured with
# pgvector 0.6 at 100,000 x 384-d: ~18 us per candidate at ef_search 400-1000, ~2.2 us per row).
EXACT_COST_RATIO = 8.0


class MemoryNotFound(LookupError):
    pass


class OutcomeAlreadyAttached(ValueError):
    """Outcomes are facts with a time; rewriting one would change what past as-of queries saw."""


def _aware(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value


def _json_value(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _number(value: Any) -> str:
    """Strikes and prices as their shortest exact decimal: 440, 440.0 and "440.00" all read 440."""
    if isinstance(value, bool):
        return str(value)
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except ArithmeticError:
        return str(value)
    if not number.is_finite():
        return str(value)
    return format(number.normalize(), "f")


SIGNAL_FIELDS = ("source", "direction", "conviction", "edge_type")  # what the situation text quotes


def _signal_text(signal: Mapping[str, Any]) -> str:
    return f"{signal['source']} {signal['direction']} {float(signal['conviction']):.2f} {signal['edge_type']}"


def _leg_text(leg: Mapping[str, Any]) -> str:
    ratio = int(leg.get("ratio", 1))
    size = f"{ratio}x" if ratio != 1 else ""
    return f"{leg.get('side', '?')} {size}{_number(leg.get('strike', '?'))}{leg.get('right', '?')} {leg.get('expiry', '?')}"


def _trade_text(trade: Mapping[str, Any] | None) -> str:
    if trade is None:
        return "none"
    contracts = trade.get("contracts") if isinstance(trade.get("proposal"), Mapping) else None
    proposal = trade["proposal"] if contracts is not None else trade
    if "structure" not in proposal:
        # Not a proposal we know: its key-sorted JSON is still canonical.
        return json.dumps(trade, sort_keys=True, separators=(",", ":"), default=str)
    parts = [str(proposal["structure"])]
    legs = proposal.get("legs") or []
    if legs:
        parts.append(", ".join(_leg_text(leg) for leg in legs))
    if proposal.get("dte") is not None:
        parts.append(f"dte {proposal['dte']}")
    if proposal.get("net_debit") is not None:
        parts.append(f"net {_number(proposal['net_debit'])}")
    if contracts is not None:
        parts.append(f"x{contracts}")
    return "; ".join(parts)


def _normalize_inputs(regime: Any, signals: Sequence[Any], trade: Any) -> tuple[str, list[dict], dict | None]:
    regime_name = getattr(regime, "name", regime)
    if not isinstance(regime_name, str) or not regime_name:
        raise ValueError(f"regime must be a Regime or a non-empty name, got {regime!r}")
    if isinstance(signals, (str, bytes, Mapping)):
        raise TypeError("signals must be a sequence of Signal models or mappings")
    signal_dicts = [_json_value(s) for s in signals]
    for s in signal_dicts:
        if not isinstance(s, Mapping):
            raise TypeError(f"a signal must be a Signal or a mapping, got {type(s).__name__}")
        missing = [f for f in SIGNAL_FIELDS if f not in s]
        if missing:
            raise ValueError(f"signal is missing {', '.join(missing)}")
    signal_dicts = sorted(signal_dicts, key=lambda s: (str(s.get("source")), str(s.get("edge_type")),
                                                      str(s.get("direction"))))
    trade_dict = _json_value(trade)
    if trade_dict is not None and not isinstance(trade_dict, Mapping):
        raise TypeError(f"trade must be a TradeProposal, SizedTrade, mapping or None, got {type(trade).__name__}")
    return regime_name, signal_dicts, (dict(trade_dict) if trade_dict is not None else None)


def situation_text(ticker: str, regime: Any, signals: Sequence[Any], thesis: str, trade: Any) -> str:
    """The canonical one-line text of a situation; it is what gets embedded.

    Signals are ordered by source, so the same situation always gives the same text, e.g.
    `SPY | regime neutral | signals: flow bullish 0.72 dealer_short_gamma; technical bullish 0.55
    trend | thesis: ... | trade: bull_put_spread; sell 440P 2023-10-20, buy 435P 2023-10-20;
    dte 36; net -1.25; x2`.
    """
    if not isinstance(ticker, str) or not ticker.strip():
        raise ValueError("ticker must be a non-empty string")
    regime_name, signal_dicts, trade_dict = _normalize_inputs(regime, signals, trade)
    signal_part = "; ".join(_signal_text(s) for s in signal_dicts) or "none"
    thesis_part = " ".join(str(thesis).split()) or "none"
    return (f"{ticker.strip()} | regime {regime_name} | signals: {signal_part} | "
            f"thesis: {thesis_part} | trade: {_trade_text(trade_dict)}")


def _unit_vector(embedding: Any) -> np.ndarray:
    vector = np.asarray(embedding, dtype=np.float64)
    if vector.shape != (EMBEDDING_DIM,):
        raise ValueError(f"embedding must have shape ({EMBEDDING_DIM},), got {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("embedding has non-finite values")
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise ValueError("embedding is the zero vector: cosine similarity is undefined")
    return (vector / norm).astype(np.float32)


def ef_search_for(k: int, eligible: float, total: float, max_ef: int = MAX_EF_SEARCH) -> int:
    """Candidates the HNSW scan should produce so that about 2k of them pass the filter, whose
    selectivity is estimated as `eligible / total` (row counts; stale statistics are tolerated)."""
    selectivity = min(1.0, eligible / max(total, eligible, 1))
    wanted = math.ceil(2 * k / max(selectivity, 1e-9))
    return int(min(max_ef, max(40, 2 * k, wanted)))


class _EmbedRequest:
    __slots__ = ("texts", "future")

    def __init__(self, texts: list[str], future: asyncio.Future) -> None:
        self.texts, self.future = texts, future


class _EmbedQueue:
    """One event loop's waiting requests and the task that drains them."""

    __slots__ = ("pending", "worker")

    def __init__(self) -> None:
        self.pending: list[_EmbedRequest] = []
        self.worker: asyncio.Task | None = None


class _EmbedBatcher:
    """Coalesces embedding requests into as few embedder calls (forward passes) as possible.

    The debate recalls for every candidate at once; embedded one text per thread, those forward
    passes ran side by side, each with torch's own intra-op threads, on 2 cores. Here requests
    made in the same event-loop turn, and all those made while a pass is running, become the next
    single `embedder.embed(texts)` call, run in a thread, one at a time per loop. Each caller gets
    its own rows; an embedder error, or a result of the wrong shape, is raised to every caller of
    that batch. Padding within a batch moves a vector by ~1e-7 (attention-masked mean pooling), so
    results equal one-by-one embedding within float tolerance, not bit for bit.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        # Per event loop: a loop's futures and tasks cannot be awaited from another loop.
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _EmbedQueue] = (
            weakref.WeakKeyDictionary())

    async def embed(self, texts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _EmbedQueue()
        request = _EmbedRequest(texts, loop.create_future())
        queue.pending.append(request)
        if queue.worker is None or queue.worker.done():
            queue.worker = loop.create_task(self._drain(queue))
        return await request.future

    async def _drain(self, queue: _EmbedQueue) -> None:
        try:
            await asyncio.sleep(0)  # one more turn: requests made in this one join the batch
            while queue.pending:
                batch, queue.pending = queue.pending, []
                await self._run(batch)
        finally:
            # A finished task still references its loop, the queue's weak key: drop it.
            queue.worker = None
            # Requests are left only when this task was cancelled (the loop is closing).
            left, queue.pending = queue.pending, []
            for request in left:
                request.future.cancel()

    async def _run(self, batch: list[_EmbedRequest]) -> None:
        texts = [text for request in batch for text in request.texts]
        try:
            # A model forward pass takes milliseconds of CPU: off the event loop.
            vectors = np.asarray(await asyncio.to_thread(self.embedder.embed, texts))
            if vectors.shape != (len(texts), EMBEDDING_DIM):
                raise ValueError(f"embedder returned shape {vectors.shape} for {len(texts)} texts; the "
                                 f"memories table stores {EMBEDDING_DIM}-d vectors")
        except Exception as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        except BaseException:
            for request in batch:
                request.future.cancel()
            raise
        start = 0
        for request in batch:
            rows = vectors[start:start + len(request.texts)]
            start += len(request.texts)
            if request.future.done():  # its caller was cancelled
                continue
            try:
                request.future.set_result(np.stack([_unit_vector(row) for row in rows]))
            except ValueError as exc:  # a zero or non-finite row fails only the text it belongs to
                request.future.set_exception(exc)


class MemoryStore:
    """Situations, outcomes and as-of similarity search over the `memories` table."""

    def __init__(self, pool: asyncpg.Pool, embedder: Embedder | None = None, *,
                 exact_cost_ratio: float = EXACT_COST_RATIO, max_ef_search: int = MAX_EF_SEARCH) -> None:
        """`embedder=None` is the packaged all-MiniLM-L6-v2 (loaded on first use).
        `exact_cost_ratio` (eligible rows per HNSW candidate at equal cost; 0 always tries the index
        first) and `max_ef_search` tune the search plan, never its result."""
        if not exact_cost_ratio >= 0:
            raise ValueError("exact_cost_ratio must be >= 0")
        if not 1 <= max_ef_search <= MAX_EF_SEARCH:
            raise ValueError(f"max_ef_search must be in [1, {MAX_EF_SEARCH}]")
        self.pool = pool
        self.memories = MemoryRepository(pool)
        self.embedder = embedder if embedder is not None else MiniLMEmbedder()
        self.exact_cost_ratio = exact_cost_ratio
        self.max_ef_search = max_ef_search
        # How searches were answered: "exact", "index", or "index_short" (index, then exact).
        self.search_paths: Counter[str] = Counter()
        self._batcher = _EmbedBatcher(self.embedder)

    situation_text = staticmethod(situation_text)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit 384-d float32 rows, one per text, from one embedder call shared with every other
        embedding requested meanwhile on this event loop (see `_EmbedBatcher`)."""
        texts = text_list(texts, "embed")
        if not texts:
            return np.empty((0, EMBEDDING_DIM), dtype=np.float32)
        return await self._batcher.embed(texts)

    async def _embed(self, text: str) -> np.ndarray:
        return (await self.embed([text]))[0]

    async def add(self, *, ticker: str, regime: Any, as_of: datetime, signals: Sequence[Any], thesis: str,
                  trade: Any, horizon_days: int, run_id: str | None = None,
                  embedding: np.ndarray | None = None) -> int:
        """Store a situation; returns its id.

        `regime` is a `Regime` or its name; `signals` are `Signal`s or mappings; `trade` is a
        `TradeProposal`, `SizedTrade`, mapping, or None when nothing was traded. `horizon_days` is
        calendar days until the outcome is due. `embedding` (384 floats) skips the embedder when the
        caller already embedded `situation_text(...)` in a batch.
        """
        _aware(as_of, "as_of")
        if isinstance(horizon_days, bool) or not isinstance(horizon_days, int) or horizon_days < 0:
            raise ValueError(f"horizon_days must be a whole number >= 0, got {horizon_days!r}")
        text = situation_text(ticker, regime, signals, thesis, trade)
        regime_name, signal_dicts, trade_dict = _normalize_inputs(regime, signals, trade)
        vector = await self._embed(text) if embedding is None else _unit_vector(embedding)
        return await self.memories.insert(
            ticker=ticker.strip(), regime=regime_name, as_of=as_of, situation=text, signals=signal_dicts,
            thesis=" ".join(str(thesis).split()), trade=trade_dict, run_id=run_id, embedding=vector,
            horizon_days=horizon_days)

    async def attach_trade(self, run_id: str, ticker: str, trade: Any) -> int | None:
        """Record the trade a remembered situation led to, once it was actually filled (an order
        approved off-hours fills after the run reflected). The situation is re-embedded with its
        trade. Returns the memory id, or None when the run remembered no situation for `ticker`
        or it already names a trade."""
        memory = await self.memories.without_trade(run_id, ticker)
        if memory is None:
            return None
        text = situation_text(memory.ticker, memory.regime, memory.signals, memory.thesis, trade)
        _, _, trade_dict = _normalize_inputs(memory.regime, memory.signals, trade)
        vector = await self._embed(text)
        return await self.memories.set_trade(memory.id, trade_dict, text, vector)

    async def get(self, memory_id: int) -> Memory:
        memory = await self.memories.get(memory_id)
        if memory is None:
            raise MemoryNotFound(f"no memory with id {memory_id}")
        return memory

    async def attach_outcome(self, memory_id: int, outcome: Mapping[str, Any], reflection: str,
                             known_at: datetime) -> None:
        """Record what happened and when it became known.

        `outcome` is a JSON-safe mapping (e.g. `pnl` in dollars, `underlying_return` as a fraction).
        Refused: a naive `known_at`, one before the situation's `as_of`, an empty outcome or
        reflection, an unknown id (`MemoryNotFound`), or a second outcome (`OutcomeAlreadyAttached`).
        """
        _aware(known_at, "known_at")
        if not isinstance(outcome, Mapping) or not outcome:
            raise ValueError("outcome must be a non-empty mapping")
        dumps(outcome)  # NaN, infinities and non-JSON values are refused here, not half-way in SQL
        if not isinstance(reflection, str) or not reflection.strip():
            raise ValueError("reflection must be a non-empty string")
        if await self.memories.set_outcome(memory_id, dict(outcome), reflection.strip(), known_at):
            return
        state = await self.memories.outcome_state(memory_id)
        if state is None:
            raise MemoryNotFound(f"no memory with id {memory_id}")
        as_of, outcome_known_at = state
        if outcome_known_at is not None:
            raise OutcomeAlreadyAttached(
                f"memory {memory_id} already has an outcome, known at {outcome_known_at.isoformat()}")
        raise ValueError(f"known_at {known_at.isoformat()} is before the situation's as_of {as_of.isoformat()}")

    async def record_realized(self, run_id: str, ticker: str, pnl: Any, status: str, reflection: str,
                              known_at: datetime) -> int | None:
        """A remembered trade's position closed (or settled): attach its realized P&L in dollars.

        Merges into an outcome the horizon may have attached already; the whole outcome then
        becomes known at `known_at` (never earlier), so a recall as of a date before the close
        cannot see the realized result. Returns the memory id (None: no situation with a trade)."""
        _aware(known_at, "known_at")
        realized = {"pnl": float(pnl), "realized": True, "closed_as": status}
        dumps(realized)
        return await self.memories.merge_realized(run_id, ticker, realized, reflection.strip(), known_at)

    async def due_for_outcome(self, now: datetime) -> list[Memory]:
        """Situations whose horizon (as_of + horizon_days calendar days) is at or before `now` and
        that still have no outcome, oldest first."""
        _aware(now, "now")
        return await self.memories.due_for_outcome(now)

    async def similar(self, query: str | np.ndarray, *, as_of: datetime, k: int = 10,
                      ticker: str | None = None) -> list[Memory]:
        """The k situations most similar to `query` (a text, embedded here, or a 384-d vector) among
        those whose outcome was known at or before `as_of`, optionally for one ticker; most similar
        first, each with its cosine `similarity`. Returns min(k, eligible) memories."""
        _aware(as_of, "as_of")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a whole number >= 1, got {k!r}")
        vector = await self._embed(query) if isinstance(query, str) else _unit_vector(query)

        eligible, total = await self.memories.estimate_known(as_of, ticker)
        ef_search = ef_search_for(k, eligible, total, self.max_ef_search)
        path, found = "exact", None
        if eligible > self.exact_cost_ratio * ef_search:
            path = "index"
            found = await self.memories.nearest_by_index(vector, as_of, ticker, k, ef_search)
            if len(found) < k:
                path, found = "index_short", None  # the filter ate the index's candidates
        if found is None:
            found = await self.memories.nearest_exact(vector, as_of, ticker, k)
        self.search_paths[path] += 1
        return found
