"""Real social sources into a run's snapshot: Reddit mentions and posts, Google Trends, FinBERT,
one story per cluster of near-duplicate posts.

`with_social_sources(snapshot, db)` is called once by `load_context` on a fresh snapshot, before
it is recorded; a resumed run or a replay reads the recording and never comes here, so the social
analyst sees the same numbers every time. With no source configured (the default) the snapshot
is returned untouched: the simulated feed and the lexicon, as before.

Each configured source replaces its part of a ticker's `SocialFeed`: Reddit the mention counts
(from `social_mentions`, so the 7-day baseline survives restarts) and the posts of the last week;
Trends the search-interest series (cached in Postgres); FinBERT each post's sentiment. A failing
source leaves a note in the feed (`SocialFeed.notes`), which the analyst reports in
`data_quality` and weighs; it never fails the run.

This lives in `agents/` rather than `tools/` because it joins three floors: sources (`tools/`),
the repository (`storage/`) and the packaged MiniLM embedder (`memory/`).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from config.social import SocialConfig, SocialEnvironment, social_config, social_environment
from storage.social import SocialRepository, StoredItem
from tools.chain import NEW_YORK
from tools.finbert import FinBertError, FinBertScorer
from tools.providers.base import MarketSnapshot, SocialFeed, SocialPost
from tools.providers.reddit import RedditError, RedditSource
from tools.providers.trends import TrendsError, TrendsSource
from tools.stories import merge_stories
from tools.tickers import TickerExtractor

log = logging.getLogger(__name__)

FEED_DAYS = 35  # the latest day, the 30-day Trends baseline before it (covering the 7-day mention one), and Trends publishing a few days late
POST_LOOKBACK = timedelta(days=7)
MAX_POSTS_PER_TICKER = 200
TRENDS_GEO = "US"
# A replay or fork answers from a recorded snapshot (graph.replay.RECORDED_PROVIDER): its social
# part is what the original run saw, and asking the sources again would change it.
RECORDED_PROVIDER = "recorded"


def reddit_source(env: SocialEnvironment, config: SocialConfig) -> RedditSource:
    c = config.reddit
    return RedditSource(client_id=env.reddit_client_id or "", client_secret=env.reddit_client_secret or "",
                        user_agent=c.user_agent, subreddits=c.subreddits, oauth_url=env.reddit_oauth_url,
                        reddit_url=env.reddit_url, max_items=c.max_items_per_listing,
                        include_comments=c.include_comments, max_retries=c.max_retries)


def trends_source(env: SocialEnvironment, config: SocialConfig) -> TrendsSource:
    return TrendsSource(base_url=env.trends_url, geo=TRENDS_GEO, max_retries=config.trends.max_retries)


def _align(src_days: np.ndarray, values: np.ndarray, axis: np.ndarray) -> np.ndarray:
    out = np.full(len(axis), np.nan)
    src_days = np.asarray(src_days).astype("datetime64[D]")
    pos = np.searchsorted(axis, src_days)
    ok = (pos < len(axis)) & (axis[np.minimum(pos, len(axis) - 1)] == src_days)
    out[pos[ok]] = np.asarray(values, dtype=float)[ok]
    return out


async def _reddit(snapshot: MarketSnapshot, repo: SocialRepository, source: RedditSource, axis: np.ndarray,
                  notes: list[str]) -> tuple[dict[str, np.ndarray], dict[str, tuple[SocialPost, ...]]]:
    tickers = list(snapshot.tickers)
    fetched = True
    try:
        since = await repo.last_seen("reddit")
        items = await asyncio.to_thread(source.fetch, since)
        extractor = TickerExtractor(tickers)
        await repo.record_items("reddit", [
            (StoredItem(i.item_id, i.subreddit, i.created_at, i.text, i.url), extractor.extract(i.text))
            for i in items])
    except RedditError as exc:
        fetched = False
        notes.append(f"reddit: {exc}; today's mentions unknown")
        log.warning("reddit source failed: %s", exc)
    counts = await repo.daily_mentions("reddit", tickers, axis, snapshot.as_of)
    if not fetched:
        for series in counts.values():
            series[-1] = np.nan  # what was stored for today is an undercount, not a count
    posts = {}
    for t in tickers:
        rows = await repo.recent_items("reddit", t, snapshot.as_of - POST_LOOKBACK, snapshot.as_of,
                                       limit=MAX_POSTS_PER_TICKER)
        posts[t] = tuple(SocialPost(created_at=r.created_at, source="reddit", text=r.text, url=r.url)
                         for r in reversed(rows))
    return counts, posts


async def _trends(snapshot: MarketSnapshot, repo: SocialRepository, source: TrendsSource, config: SocialConfig,
                  axis: np.ndarray, now: datetime) -> tuple[dict[str, np.ndarray | None], dict[str, str]]:
    series: dict[str, np.ndarray | None] = {}
    failures: dict[str, str] = {}
    end = axis[-1].astype(object)
    for t in snapshot.tickers:
        keyword = config.trends.keyword(t)
        cached = await repo.cached_trends(keyword, source.geo, end, max_age=timedelta(hours=config.trends.cache_hours),
                                          now=now)
        if cached is None:
            try:
                days, interest = await asyncio.to_thread(source.interest, keyword, end, len(axis))
            except TrendsError as exc:
                series[t] = None
                failures[t] = f"google trends: {exc}"
                continue
            await repo.store_trends(keyword, source.geo, end, days, interest, now)
            cached = days, interest
        series[t] = _align(cached[0], cached[1], axis)
    return series, failures


def _score(posts: dict[str, tuple[SocialPost, ...]], model: str, batch_size: int) -> dict[str, tuple[SocialPost, ...]]:
    scorer = FinBertScorer.shared(model, batch_size=batch_size)
    texts = sorted({p.text for group in posts.values() for p in group})
    scores = dict(zip(texts, scorer.score(texts))) if texts else {}
    return {t: tuple(replace(p, sentiment=round(float(scores[p.text]), 6)) for p in group)
            for t, group in posts.items()}


def _default_embed() -> Callable[[Sequence[str]], np.ndarray]:
    from memory.embeddings import MiniLMEmbedder

    return MiniLMEmbedder().embed


async def with_social_sources(
    snapshot: MarketSnapshot, db: Any, *, provider: Any = None, env: SocialEnvironment | None = None, config: SocialConfig | None = None,
    reddit: RedditSource | None = None, trends: TrendsSource | None = None,
    embed: Callable[[Sequence[str]], np.ndarray] | None = None, now: Callable[[], datetime] | None = None,
) -> MarketSnapshot:
    """The snapshot with each ticker's social feed filled from the configured real sources.
    `provider` is the one that produced `snapshot`: a recording is returned as it is."""
    if getattr(provider, "name", None) == RECORDED_PROVIDER:
        return snapshot
    env = env or social_environment()
    if not env.any_enabled:
        return snapshot
    config = config or social_config()
    wall = (now or (lambda: datetime.now(timezone.utc)))()
    repo = SocialRepository(db.pool)
    last_day = np.datetime64(snapshot.as_of.astimezone(NEW_YORK).date(), "D")
    axis = np.arange(last_day - (FEED_DAYS - 1), last_day + 1)
    shared_notes: list[str] = []
    used: dict[str, str] = {}

    mentions: dict[str, np.ndarray] = {}
    posts: dict[str, tuple[SocialPost, ...]] = {}
    if env.reddit_enabled:
        mentions, posts = await _reddit(snapshot, repo, reddit or reddit_source(env, config), axis, shared_notes)
        used["reddit"] = ",".join(config.reddit.subreddits)
    else:
        for t, data in snapshot.tickers.items():
            if data.social is not None:
                mentions[t] = _align(data.social.dates, data.social.mentions, axis)
                posts[t] = data.social.posts
    search: dict[str, np.ndarray | None] = {}
    trend_failures: dict[str, str] = {}
    if env.trends:
        search, trend_failures = await _trends(snapshot, repo, trends or trends_source(env, config), config, axis, wall)
        used["google_trends"] = TRENDS_GEO
    else:
        for t, data in snapshot.tickers.items():
            if data.social is not None and data.social.search_interest is not None:
                search[t] = _align(data.social.dates, data.social.search_interest, axis)

    if env.reddit_enabled and any(posts.values()):
        try:
            embedder = embed or await asyncio.to_thread(_default_embed)
            stories = config.stories
            merged = await asyncio.to_thread(
                lambda: {t: merge_stories(group, embedder, threshold=stories.merge_threshold,
                                          window=timedelta(hours=stories.merge_window_hours))
                         for t, group in posts.items()})
            posts = merged
        except (FileNotFoundError, OSError, ValueError) as exc:
            shared_notes.append(f"stories not merged: {exc}")
    sentiment_model = None
    if env.finbert_model:
        try:
            posts = await asyncio.to_thread(_score, posts, env.finbert_model, config.sentiment.batch_size)
            sentiment_model = env.finbert_model
            used["finbert"] = env.finbert_model
        except FinBertError as exc:
            shared_notes.append(f"finbert: {exc}; lexicon used")
            log.warning("finbert unavailable: %s", exc)

    tickers = {}
    for t, data in snapshot.tickers.items():
        notes = tuple(shared_notes) + ((trend_failures[t],) if t in trend_failures else ())
        if t not in mentions and t not in posts and search.get(t) is None and not notes:
            tickers[t] = data
            continue
        feed = SocialFeed(dates=axis, mentions=mentions.get(t, np.full(len(axis), np.nan)),
                          search_interest=search.get(t), posts=posts.get(t, ()),
                          sentiment_model=sentiment_model, notes=notes)
        tickers[t] = replace(data, social=feed)
    meta = {**snapshot.meta, "social_sources": used}
    return replace(snapshot, tickers=tickers, meta=meta)


def social_source_status(env: SocialEnvironment | None = None, config: SocialConfig | None = None) -> list[dict]:
    """Each social source's state for `hedgegraph doctor`: on/off, what it reads, and for FinBERT
    whether the model loads. No credentials are included."""
    env = env or social_environment()
    config = config or social_config()
    rows = [{
        "source": "reddit",
        "state": "on" if env.reddit_enabled else "off",
        "detail": (f"r/{', r/'.join(config.reddit.subreddits)}" + (f" via {env.reddit_oauth_url}" if env.reddit_oauth_url else ""))
        if env.reddit_enabled else "REDDIT_CLIENT_ID / REDDIT_CLIENT_SECRET not set: simulated mentions",
    }, {
        "source": "google_trends",
        "state": "on" if env.trends else "off",
        "detail": (env.trends_url or "trends.google.com") if env.trends else "HEDGEGRAPH_TRENDS not set: simulated search interest",
    }]
    if env.finbert_model:
        try:
            FinBertScorer.shared(env.finbert_model, batch_size=config.sentiment.batch_size)
            rows.append({"source": "finbert", "state": "on", "detail": env.finbert_model})
        except FinBertError as exc:
            rows.append({"source": "finbert", "state": "error", "detail": str(exc)})
    else:
        rows.append({"source": "finbert", "state": "off", "detail": "HEDGEGRAPH_FINBERT_MODEL not set: lexicon"})
    return rows
