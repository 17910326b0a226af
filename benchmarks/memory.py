"""Agent-memory throughput and as-of retrieval latency at 10,000 and 100,000 memories.

Runs in a throwaway database: on a throwaway embedded Postgres, or, when DATABASE_URL is set, a
new database created on that server and dropped afterwards (the role needs CREATEDB). Vectors are synthetic: unit
384-d vectors scattered around 500 random centres, so that neighbours mean something, as they do
for situation texts that share a ticker, regime and structure.

For each size it measures
- bulk load: COPY into a staging table, INSERT ... SELECT, then the HNSW index build;
- live inserts: `insert_per_s`, batched inserts of 500 rows while the HNSW index is maintained,
  which is the rate at which the decision graph can add situations;
- retrieval: 200 `MemoryStore.similar(vector, as_of=..., k=10)` calls with as-of times spread over
  the history (so 0-100% of memories are eligible), end to end through the pool; p50/p95 latency,
  recall@10 against an exact NumPy ranking, and how each search was answered; the same with a
  ticker filter (1 of 50 tickers).

Then, on the first size, the embedding path with the packaged all-MiniLM-L6-v2: medians of
several repetitions, at torch's default intra-op threads (`t2` on 2 cores) and at 1 (`t1`), set in
the thread that runs each pass (torch's thread count is per calling thread), in blocks,
`quiet` (no other process of the benchmark's) and `busy` (two CPU-bound processes running beside
it, as a busy chain-analysis pool or a parallel sweep would); load from elsewhere is not controlled:
- `reflect8_*_ms`: the reflect node's 8 situation texts, one embedder call per text in a thread
  (`one_by_one`, as before batching) and all in one `MemoryStore.embed` call (`batched`);
- `recall8_*_ms`: 8 recalls at once, as the debate makes them, end to end through the pool: each
  embedding its own query in its own thread (`unbatched`, as before), and `RunMemory.recall`,
  whose queries are embedded in one forward pass (`batched`).

Ends with one line per size, the 100,000 one last:
`n=100000 insert_per_s=... query_p50_ms=... query_p95_ms=...`, after an `embed ...` line.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from domain.decision import Candidate, Regime, Signal  # noqa: E402
from memory.recall import RunMemory  # noqa: E402
from memory.embeddings import MiniLMEmbedder  # noqa: E402
from memory.store import EMBEDDING_DIM, MemoryStore, situation_text  # noqa: E402
from storage.database import connect  # noqa: E402

SIZES = (10_000, 100_000)
LIVE_ROWS = 500  # of each size, inserted with the index live
QUERIES = 200
K = 10
TICKERS = [f"T{i:02d}" for i in range(50)]
HISTORY_START = datetime(2016, 1, 1, 14, 30, tzinfo=timezone.utc)
HISTORY_DAYS = 3650
BENCH_RUN_ID = "benchmark-memory"
console = Console()


class Synthetic:
    """Deterministic synthetic memories: vectors, tickers, as-of and outcome times."""

    def __init__(self, n: int, seed: int = 42) -> None:
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((500, EMBEDDING_DIM))
        vectors = centres[rng.integers(0, 500, n)] + 0.9 * rng.standard_normal((n, EMBEDDING_DIM))
        self.vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        self.tickers = np.array(TICKERS)[rng.integers(0, len(TICKERS), n)]
        self.as_of_s = rng.uniform(0, HISTORY_DAYS * 86400.0, n)
        self.horizon_days = rng.choice([5, 10, 21, 30, 45], n)
        known = self.as_of_s + self.horizon_days * 86400.0 + rng.uniform(0, 86400.0, n)
        known[rng.random(n) < 0.03] = np.nan  # still waiting for an outcome
        self.known_s = known

    def records(self, start: int, stop: int) -> list[tuple]:
        out = []
        for i in range(start, stop):
            as_of = HISTORY_START + timedelta(seconds=float(self.as_of_s[i]))
            known = None if np.isnan(self.known_s[i]) else HISTORY_START + timedelta(seconds=float(self.known_s[i]))
            out.append((str(self.tickers[i]), "neutral", as_of, f"{self.tickers[i]} synthetic situation {i}", "synthetic",
                        BENCH_RUN_ID, self.vectors[i], int(self.horizon_days[i]),
                        None if known is None else '{"pnl": 1.0}', None if known is None else "synthetic", known))
        return out


EMBED_TICKERS = ("SPY", "QQQ", "IWM", "AAPL", "MSFT", "NVDA", "AMZN", "TSLA")
EMBED_REPEATS = 7
REGIME = Regime(name="neutral", vix=17.4, vix3m=19.1, term_ratio=0.91)


def _signals(ticker: str, i: int, as_of: datetime) -> list[Signal]:
    return [Signal(ticker=ticker, source="flow", direction="bullish", conviction=0.5 + 0.04 * i,
                   edge_type="dealer_short_gamma", horizon_days=5, as_of=as_of),
            Signal(ticker=ticker, source="technical", direction="bullish", conviction=0.3 + 0.05 * i,
                   edge_type="trend", horizon_days=10, as_of=as_of),
            Signal(ticker=ticker, source="vol_surface", direction="rich", conviction=0.4, edge_type="iv_rich_vs_realized",
                   horizon_days=21, as_of=as_of)]


def reflect_texts(as_of: datetime) -> list[str]:
    """What the reflect node embeds for 8 debated tickers: the deterministic debate's rationale as
    the thesis, half of them with a traded vertical."""
    texts = []
    for i, ticker in enumerate(EMBED_TICKERS):
        thesis = (f"Regime neutral (VIX 17.4, VIX/VIX3M 0.91). Bull evidence weight {0.9 + 0.1 * i:.2f} vs bear "
                  f"{0.2 + 0.03 * i:.2f} (margin +0.{60 - i}); volatility view rich. Verdict: bullish. "
                  "Deterministic debate from the evidence; no LLM.")
        trade = None if i % 2 else {
            "structure": "bull_put_spread", "dte": 35, "net_debit": -1.25 - 0.05 * i,
            "legs": [{"side": "sell", "strike": 400 + 5 * i, "right": "P", "expiry": "2024-02-16"},
                     {"side": "buy", "strike": 395 + 5 * i, "right": "P", "expiry": "2024-02-16"}]}
        texts.append(situation_text(ticker, REGIME, _signals(ticker, i, as_of), thesis, trade))
    return texts


def recall_requests(as_of: datetime) -> list[tuple[Candidate, list[Signal]]]:
    return [(Candidate(ticker=t, price_view="bullish", vol_view="rich", conviction=0.55, score=0.4, vol_score=0.3,
                       sources=["flow", "technical"],
                       reasons=[f"flow bullish {0.5 + 0.04 * i:.2f} dealer_short_gamma", "technical bullish trend"]),
             _signals(t, i, as_of)) for i, t in enumerate(EMBED_TICKERS)]


class ThreadsEmbedder:
    """The packaged model with torch's intra-op threads set in the thread that runs each call:
    `torch.set_num_threads` is per calling thread (OpenMP), and the store embeds in a worker thread."""

    def __init__(self, inner: MiniLMEmbedder, threads: int) -> None:
        self.inner, self.threads, self.dim = inner, threads, inner.dim

    def embed(self, texts):
        import torch

        torch.set_num_threads(self.threads)
        return self.inner.embed(texts)


def embedding_scenarios(store: MemoryStore, as_of: datetime) -> dict[str, object]:
    """name -> coroutine function: the reflect and recall figures of the module docstring."""
    texts = reflect_texts(as_of)
    requests = recall_requests(as_of)

    async def reflect_one_by_one():  # MemoryStore._embed before batching, once per situation
        for text in texts:
            await asyncio.to_thread(store.embedder.embed, [text])

    async def reflect_batched():
        await store.embed(texts)

    async def recall_unbatched(candidate, signals):  # RunMemory.recall before batching
        if not await store.memories.count_known(as_of):
            return []
        query = situation_text(candidate.ticker, REGIME, signals, " ".join(candidate.reasons), None)
        vector = (await asyncio.to_thread(store.embedder.embed, [query]))[0]
        return await store.similar(vector, as_of=as_of, k=3)

    async def recall_unbatched_all():
        await asyncio.gather(*(recall_unbatched(c, s) for c, s in requests))

    async def recall_batched_all():
        memory = RunMemory(store, as_of)
        found = await asyncio.gather(*(memory.recall(c, s, REGIME) for c, s in requests))
        assert all(len(f) == 3 for f in found)

    return {"reflect8_one_by_one": reflect_one_by_one, "reflect8_batched": reflect_batched,
            "recall8_unbatched": recall_unbatched_all, "recall8_batched": recall_batched_all}


BUSY_LOOP = "import time\nend = time.time() + 600\nwhile time.time() < end: pass"


async def embedding_figures(pool, as_of: datetime) -> str:
    """Median ms of each scenario at torch's default threads and at 1, quiet and beside 2 busy
    processes. Each thread count runs as a block after a warm-up round: the first pass after
    torch's thread count changes pays for resizing its thread team (~100 ms on 2 cores)."""
    import torch

    model = MiniLMEmbedder()
    model.embed(["warm up"])  # the model loads once, outside the timings
    thread_counts = sorted({torch.get_num_threads(), 1}, reverse=True)
    figures: dict[str, float] = {}
    for load in ("quiet", "busy"):
        busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(2 if load == "busy" else 0)]
        try:
            for n in thread_counts:
                scenarios = embedding_scenarios(MemoryStore(pool, ThreadsEmbedder(model, n)), as_of)
                times: dict[str, list[float]] = {}
                for repeat in range(EMBED_REPEATS + 1):  # the first round warms threads and connections
                    for name, run in scenarios.items():
                        t0 = time.perf_counter()
                        await run()
                        if repeat:
                            times.setdefault(f"{name}_{load}_t{n}_ms", []).append((time.perf_counter() - t0) * 1000.0)
                figures.update({key: float(np.median(values)) for key, values in times.items()})
        finally:
            for process in busy:
                process.kill()
                process.wait()
    return f"embed torch_threads={thread_counts[0]} " + " ".join(f"{k}={v:.1f}" for k, v in figures.items())


STAGING_COLUMNS = ["ticker", "regime", "as_of", "situation", "thesis", "run_id", "embedding", "horizon_days",
                   "outcome", "reflection", "outcome_known_at"]


async def bulk_load(conn, data: Synthetic, start: int, stop: int) -> tuple[float, float]:
    """COPY rows [start, stop) in with the HNSW index dropped, then rebuild it; (load s, build s)."""
    t0 = time.perf_counter()
    await conn.execute("DROP INDEX IF EXISTS memories_embedding_hnsw")
    # Binary COPY cannot encode our text-format jsonb codec: stage outcome as text, cast on insert.
    await conn.execute("""CREATE TEMP TABLE IF NOT EXISTS memories_staging (
        ticker text, regime text, as_of timestamptz, situation text, thesis text, run_id text,
        embedding vector(384), horizon_days int, outcome text, reflection text, outcome_known_at timestamptz)""")
    for lo in range(start, stop, 5000):
        await conn.copy_records_to_table("memories_staging", records=data.records(lo, min(stop, lo + 5000)),
                                         columns=STAGING_COLUMNS)
    await conn.execute(f"""INSERT INTO memories ({", ".join(STAGING_COLUMNS)})
        SELECT ticker, regime, as_of, situation, thesis, run_id, embedding, horizon_days, outcome::jsonb,
               reflection, outcome_known_at FROM memories_staging""")
    await conn.execute("TRUNCATE memories_staging")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    await conn.execute("SET maintenance_work_mem = '1GB'")
    await conn.execute("""CREATE INDEX memories_embedding_hnsw ON memories
        USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)""")
    await conn.execute("RESET maintenance_work_mem")
    return load_s, time.perf_counter() - t0


async def live_insert(conn, data: Synthetic, start: int, stop: int) -> float:
    """Rows per second through a batched INSERT while the HNSW index is maintained."""
    rows = [r[:8] + (None if r[8] is None else {"pnl": 1.0},) + r[9:] for r in data.records(start, stop)]
    t0 = time.perf_counter()
    for lo in range(0, len(rows), 100):
        await conn.executemany(
            f"""INSERT INTO memories ({", ".join(STAGING_COLUMNS)})
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""", rows[lo:lo + 100])
    return (stop - start) / (time.perf_counter() - t0)


def exact_top_k(data: Synthetic, n: int, query: np.ndarray, as_of_s: float, ticker: str | None) -> set[int]:
    eligible = data.known_s[:n] <= as_of_s  # NaN (no outcome yet) compares False
    if ticker is not None:
        eligible &= data.tickers[:n] == ticker
    sims = np.where(eligible, data.vectors[:n] @ query, -np.inf)
    top = np.argsort(-sims, kind="stable")[:min(K, int(eligible.sum()))]
    return set(top.tolist())


async def measure_queries(store: MemoryStore, data: Synthetic, n: int, id_of: dict[int, int], seed: int,
                          with_ticker: bool) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    store.search_paths.clear()
    latencies, recalls, counts = [], [], []
    for _ in range(QUERIES):
        near = data.vectors[rng.integers(0, n)] + 0.05 * rng.standard_normal(EMBEDDING_DIM)
        query = (near / np.linalg.norm(near)).astype(np.float32)
        as_of_s = float(rng.uniform(0, HISTORY_DAYS * 86400.0))
        ticker = str(rng.choice(TICKERS)) if with_ticker else None
        as_of = HISTORY_START + timedelta(seconds=as_of_s)
        t0 = time.perf_counter()
        hits = await store.similar(query, as_of=as_of, k=K, ticker=ticker)
        latencies.append((time.perf_counter() - t0) * 1000.0)
        expected = exact_top_k(data, n, query, as_of_s, ticker)
        assert len(hits) == len(expected), (len(hits), len(expected))
        got = {id_of[h.id] for h in hits}
        recalls.append(len(got & expected) / len(expected) if expected else 1.0)
        counts.append(len(hits))
    lat = np.array(latencies)
    return {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "max": float(lat.max()), "recall": float(np.mean(recalls)),
            "paths": dict(store.search_paths)}


async def throwaway_database(server_url: str) -> tuple[str, str]:
    """A new, empty database on the server at `server_url`: the benchmark drops and rebuilds the
    HNSW index, which it must never do to a database in use."""
    name = f"hedgegraph_bench_memory_{os.getpid()}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}")), name


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


async def main(sizes: tuple[int, ...] = SIZES) -> None:
    tempdir = None
    server = None
    server_url = os.environ.get("DATABASE_URL")
    if not server_url:
        from storage.embedded import start_embedded_server

        tempdir = Path(tempfile.mkdtemp(prefix="hedgegraph-bench-memory-"))
        server = start_embedded_server(tempdir)
        server_url = server.get_uri()
    url, name = await throwaway_database(server_url)
    data = Synthetic(max(sizes))
    db = await connect(url, server, max_size=2)
    lines = []
    try:
        store = MemoryStore(db.pool, embedder=None)
        loaded = 0
        for n in sizes:
            async with db.pool.acquire() as conn:
                load_s, build_s = await bulk_load(conn, data, loaded, n - LIVE_ROWS)
                insert_per_s = await live_insert(conn, data, n - LIVE_ROWS, n)
                await conn.execute("VACUUM ANALYZE memories")
                # database id -> synthetic row, read back from the situation text
                id_of = {r["id"]: int(r["situation"].rsplit(" ", 1)[1]) for r in await conn.fetch(
                    "SELECT id, situation FROM memories WHERE run_id = $1", BENCH_RUN_ID)}
            assert len(id_of) == n
            if not lines:
                embed_line = await embedding_figures(db.pool, HISTORY_START + timedelta(days=HISTORY_DAYS))
            bulk_rows, loaded = n - LIVE_ROWS - loaded, n
            plain = await measure_queries(store, data, n, id_of, seed=n, with_ticker=False)
            by_ticker = await measure_queries(store, data, n, id_of, seed=n + 1, with_ticker=True)
            table = Table(title=f"{n:,} memories")
            for col in ("measure", "value"):
                table.add_column(col)
            table.add_row("bulk load (COPY + INSERT SELECT)", f"{bulk_rows:,} rows in {load_s:.1f} s")
            table.add_row("HNSW index build (m=16, ef_construction=64)", f"{build_s:.1f} s for {n - LIVE_ROWS:,} rows")
            table.add_row("live inserts, index maintained", f"{insert_per_s:,.0f} rows/s")
            for label, q in (("as-of", plain), ("as-of + ticker", by_ticker)):
                table.add_row(f"top-{K} {label}: p50 / p95 / max ms", f"{q['p50']:.2f} / {q['p95']:.2f} / {q['max']:.2f}")
                table.add_row(f"top-{K} {label}: recall@{K} vs exact", f"{q['recall']:.3f}")
                table.add_row(f"top-{K} {label}: search paths", ", ".join(f"{k} {v}" for k, v in sorted(q["paths"].items())))
            console.print(table)
            lines.append(
                f"n={n} insert_per_s={insert_per_s:.0f} query_p50_ms={plain['p50']:.2f} "
                f"query_p95_ms={plain['p95']:.2f} recall_at_10={plain['recall']:.3f} "
                f"ticker_query_p95_ms={by_ticker['p95']:.2f} index_build_s={build_s:.1f}")
    finally:
        await db.close()
        await drop_database(server_url, name)
        if server is not None:
            server.cleanup()
            shutil.rmtree(tempdir, ignore_errors=True)
    print(embed_line)
    for line in lines:
        print(line)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="comma-separated table sizes, ascending (default %(default)s)")
    sizes = tuple(int(x) for x in parser.parse_args().sizes.split(","))
    if list(sizes) != sorted(sizes) or sizes[0] <= LIVE_ROWS:
        parser.error(f"sizes must be ascending and above {LIVE_ROWS}")
    asyncio.run(main(sizes))
