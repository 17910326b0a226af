"""Social-source records: items read from Reddit with the tickers they mention, and the Google
Trends cache.

Mention counts are never stored as totals: each item is stored once (by its source id) with one
row per ticker it mentions, and daily counts are a GROUP BY over New York dates. Reading the same
item twice (overlapping fetches, a retried run) therefore counts it once, and the 7-day baseline
is whatever the table holds, across restarts.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import asyncpg
import numpy as np

NEW_YORK_TZ = "America/New_York"


@dataclass(frozen=True)
class StoredItem:
    item_id: str
    scope: str
    created_at: datetime
    text: str
    url: str | None


class SocialRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def record_items(self, source: str, items: Iterable[tuple[StoredItem, Iterable[str]]]) -> int:
        """Store items and the tickers each mentions; items already stored are left as they are.
        Returns how many items were new."""
        rows = [(item, sorted(set(tickers))) for item, tickers in items]
        if not rows:
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            before = await conn.fetchval("SELECT count(*) FROM social_items WHERE source = $1", source)
            await conn.executemany(
                """INSERT INTO social_items (source, item_id, scope, created_at, text, url)
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (source, item_id) DO NOTHING""",
                [(source, i.item_id, i.scope, i.created_at, i.text, i.url) for i, _ in rows])
            await conn.executemany(
                """INSERT INTO social_mentions (source, item_id, ticker, created_at)
                   VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
                [(source, i.item_id, t, i.created_at) for i, tickers in rows for t in tickers])
            after = await conn.fetchval("SELECT count(*) FROM social_items WHERE source = $1", source)
        return int(after - before)

    async def last_seen(self, source: str) -> dict[str, datetime]:
        """Per scope (subreddit), the creation time of the newest stored item."""
        rows = await self.pool.fetch(
            "SELECT scope, max(created_at) AS newest FROM social_items WHERE source = $1 GROUP BY scope", source)
        return {r["scope"]: r["newest"] for r in rows}

    async def first_seen(self, source: str) -> datetime | None:
        """When the oldest stored item was created: before it, counts are unknown, not zero."""
        return await self.pool.fetchval("SELECT min(created_at) FROM social_items WHERE source = $1", source)

    async def daily_mentions(self, source: str, tickers: Sequence[str], days: np.ndarray,
                             until: datetime) -> dict[str, np.ndarray]:
        """Mentions per ticker per New York day in `days` (datetime64[D], ascending), counting
        items created at or before `until`. Days before the first stored item are NaN."""
        first_day, last_day = days[0].astype(date), days[-1].astype(date)
        rows = await self.pool.fetch(
            """SELECT ticker, (created_at AT TIME ZONE $6)::date AS day, count(*) AS n
                FROM social_mentions
                WHERE source = $1 AND ticker = ANY($2::text[]) AND created_at <= $3
                  AND (created_at AT TIME ZONE $6)::date BETWEEN $4 AND $5
                GROUP BY 1, 2""",
            source, list(tickers), until, first_day, last_day, NEW_YORK_TZ)
        out = {t: np.zeros(len(days)) for t in tickers}
        for r in rows:
            out[r["ticker"]][int((np.datetime64(r["day"], "D") - days[0]).astype(int))] = r["n"]
        first = await self.first_seen(source)
        if first is None:
            unknown = np.ones(len(days), dtype=bool)
        else:
            first_day_seen = await self.pool.fetchval("SELECT ($1::timestamptz AT TIME ZONE $2)::date", first, NEW_YORK_TZ)
            unknown = days < np.datetime64(first_day_seen, "D")
        for series in out.values():
            series[unknown] = np.nan
        return out

    async def recent_items(self, source: str, ticker: str, since: datetime, until: datetime,
                           limit: int = 200) -> list[StoredItem]:
        """Items mentioning `ticker` created in (since, until], newest first, at most `limit`."""
        rows = await self.pool.fetch(
            """SELECT i.item_id, i.scope, i.created_at, i.text, i.url
               FROM social_mentions m JOIN social_items i USING (source, item_id)
               WHERE m.source = $1 AND m.ticker = $2 AND m.created_at > $3 AND m.created_at <= $4
               ORDER BY m.created_at DESC, i.item_id LIMIT $5""",
            source, ticker, since, until, limit)
        return [StoredItem(**dict(r)) for r in rows]

    # ------------------------------------------------------------------ Google Trends cache

    async def cached_trends(self, keyword: str, geo: str, end_date: date, *, max_age: timedelta,
                            now: datetime) -> tuple[np.ndarray, np.ndarray] | None:
        row = await self.pool.fetchrow(
            """SELECT days, interest FROM trends_cache
               WHERE keyword = $1 AND geo = $2 AND end_date = $3 AND fetched_at >= $4""",
            keyword, geo, end_date, now - max_age)
        if row is None:
            return None
        return np.array(row["days"], dtype="datetime64[D]"), np.array(row["interest"], dtype=float)

    async def store_trends(self, keyword: str, geo: str, end_date: date, days: np.ndarray,
                           interest: np.ndarray, now: datetime) -> None:
        await self.pool.execute(
            """INSERT INTO trends_cache (keyword, geo, end_date, days, interest, fetched_at)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (keyword, geo, end_date)
               DO UPDATE SET days = EXCLUDED.days, interest = EXCLUDED.interest, fetched_at = EXCLUDED.fetched_at""",
            keyword, geo, end_date, [d.astype(date) for d in days], [float(v) for v in interest], now)
