"""Social instruments: mention velocity, search-interest spikes, one signal per story, and a
summary of a ticker's `SocialFeed` as of a moment.

Velocity and spikes compare the latest day with a trailing baseline of the `window` days
before it (the latest day is not part of its own baseline):
  ratio  = latest / mean(baseline)
  zscore = (latest - mean(baseline)) / max(std(baseline, ddof=1), floor)
The floor keeps a perfectly flat baseline from making one extra mention infinitely surprising:
mention counts are counts, so their floor is the Poisson sd sqrt(max(mean, 1)); a search index
(0..100) gets a floor of 1 index point.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterable

import numpy as np

from tools.chain import NEW_YORK
from tools.providers.base import SocialFeed, SocialPost
from tools.sentiment import score_texts
from tools.stories import context_classes

# VADER's own cut-offs for calling a text positive or negative.
POSITIVE_COMPOUND = 0.05
NEGATIVE_COMPOUND = -0.05


@dataclass(frozen=True)
class SpikeReading:
    """The latest value against its trailing baseline. Unpacks as `(ratio, zscore)`.

    `ratio` is NaN when the baseline mean is 0 (no level to compare with; `zscore` still
    measures the jump); both are NaN when the latest value or the baseline is missing, and
    `note` says why.
    """

    ratio: float
    zscore: float
    latest: float
    baseline_mean: float
    baseline_std: float
    note: str | None = None

    def __iter__(self):
        return iter((self.ratio, self.zscore))


def _spike(series, window: int, std_floor: Callable[[float], float], what: str) -> SpikeReading:
    x = np.asarray(series, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {x.shape}")
    if window < 2:
        raise ValueError(f"window must be at least 2 days, got {window}")
    if np.any(x < 0):
        raise ValueError(f"{what} has negative values")
    nan = float("nan")
    if len(x) < window + 1:
        return SpikeReading(nan, nan, nan, nan, nan,
                            f"{what}: {len(x)} days, need {window + 1} (latest + {window}-day baseline)")
    latest = float(x[-1])
    baseline = x[-window - 1:-1]
    seen = baseline[np.isfinite(baseline)]
    if len(seen) < max(2, (window + 1) // 2):
        return SpikeReading(nan, nan, latest, nan, nan,
                            f"{what}: only {len(seen)} of {window} baseline days known")
    mean = float(seen.mean())
    std = float(seen.std(ddof=1))
    if not np.isfinite(latest):
        return SpikeReading(nan, nan, latest, mean, std, f"{what}: latest day missing")
    zscore = (latest - mean) / max(std, std_floor(mean))
    if mean == 0:
        return SpikeReading(nan, zscore, latest, mean, std, f"{what}: baseline is all zero, ratio undefined")
    note = None if len(seen) == window else f"{what}: {window - len(seen)} baseline days missing"
    return SpikeReading(latest / mean, zscore, latest, mean, std, note)


def mention_velocity(mentions, window: int = 7) -> SpikeReading:
    """Latest day's mention count vs the `window` days before it (ratio, z-score).

    `mentions`: daily counts, oldest first, NaN for unknown days. Negative counts raise.
    """
    return _spike(mentions, window, lambda mean: float(np.sqrt(max(mean, 1.0))), "mentions")


def search_spike(search_interest, window: int = 30) -> SpikeReading:
    """Latest day's search interest (0..100 index) vs the `window` days before it."""
    x = np.asarray(search_interest, dtype=float)
    if np.any(x > 100):
        raise ValueError("search interest is a 0..100 index; got values above 100")
    return _spike(x, window, lambda mean: 1.0, "search interest")


def dedupe_stories(posts: Iterable[SocialPost]) -> tuple[SocialPost, ...]:
    """One post per story: the earliest post of each `story_id` (the first to report it), plus
    every post without a story id (each its own story). Returned oldest first."""
    ordered = sorted(posts, key=lambda p: p.created_at)
    seen: set[str] = set()
    kept = []
    for post in ordered:
        if post.story_id is not None:
            if post.story_id in seen:
                continue
            seen.add(post.story_id)
        kept.append(post)
    return tuple(kept)


def story_sentiments(stories: tuple[SocialPost, ...]) -> np.ndarray:
    """Sentiment per story in [-1, 1]: the feed's model score where the post carries one (recorded
    with the snapshot), the finance lexicon for the rest."""
    scores = np.array([np.nan if p.sentiment is None else float(p.sentiment) for p in stories], dtype=float)
    unscored = np.flatnonzero(np.isnan(scores))
    if len(unscored):
        scores[unscored] = score_texts([stories[i].text for i in unscored])
    return scores


def top_stories(recent: list[SocialPost], stories: tuple[SocialPost, ...], scores: np.ndarray,
                limit: int = 5) -> list[dict]:
    """The most-discussed stories: first post's text (trimmed), link, post count, sources,
    sentiment and context classes; ties go to the earlier story."""
    members: dict[str, list[SocialPost]] = {}
    for p in recent:
        if p.story_id is not None:
            members.setdefault(p.story_id, []).append(p)
    rows = []
    for order, (lead, score) in enumerate(zip(stories, scores)):
        group = members.get(lead.story_id, [lead]) if lead.story_id is not None else [lead]
        rows.append((-len(group), order, {
            "story_id": lead.story_id,
            "text": lead.text if len(lead.text) <= 160 else lead.text[:157] + "...",
            "url": lead.url,
            "posts": len(group),
            "sources": sorted({p.source for p in group}),
            "sentiment": round(float(score), 4),
            "context": list(context_classes(" ".join(p.text for p in group))),
            "first_seen": lead.created_at.isoformat(),
        }))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [r[2] for r in rows[:limit]]


def _finite_or_none(x: float) -> float | None:
    # The summary becomes signal evidence stored as JSON: NaN is not valid JSON, None is.
    return float(x) if np.isfinite(x) else None


def social_summary(
    feed: SocialFeed, as_of: datetime, *,
    mention_window: int = 7, search_window: int = 30, post_lookback: timedelta = timedelta(days=7),
) -> dict:
    """Velocity, search spike and sentiment of a feed, using only data at or before `as_of`.

    Daily series keep days up to `as_of`'s New York date; posts keep those created within
    `post_lookback` before `as_of`, de-duplicated to one per story before scoring. Missing
    numbers are None (JSON-safe), with the reason in `data_quality`.

    Keys: mention_ratio, mention_zscore, mentions_latest, mentions_baseline, search_ratio,
    search_zscore, mean_sentiment (-1..1, mean over stories: the posts' recorded model score, else
    VADER+LM compound), n_posts,
    n_stories, n_positive, n_negative (stories with compound >= 0.05 / <= -0.05),
    posts_by_source (dict), sentiment_model ("lexicon" or the model that scored the posts),
    context_counts (stories per context class), top_stories (list of dicts, see `top_stories`),
    data_quality (list of str, starting with the feed's own notes on failed sources).
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    dates = np.asarray(feed.dates).astype("datetime64[D]")
    mentions = np.asarray(feed.mentions, dtype=float)
    if len(dates) != len(mentions):
        raise ValueError(f"feed has {len(dates)} dates but {len(mentions)} mention counts")
    last_day = np.datetime64(as_of.astimezone(NEW_YORK).date(), "D")
    known = dates <= last_day
    notes: list[str] = list(feed.notes)

    velocity = mention_velocity(mentions[known], window=mention_window)
    if velocity.note:
        notes.append(velocity.note)

    if feed.search_interest is None:
        spike = None
        notes.append("no search-interest series")
    else:
        search = np.asarray(feed.search_interest, dtype=float)
        if len(search) != len(dates):
            raise ValueError(f"feed has {len(dates)} dates but {len(search)} search-interest values")
        search = search[known]
        # Google publishes a day's interest once the day is complete, a day or more late: the
        # spike is measured on the latest day known, and the lag is reported.
        known_days = np.flatnonzero(np.isfinite(search))
        lag = len(search) - 1 - known_days[-1] if len(known_days) else 0
        if lag > 0:
            search = search[:known_days[-1] + 1]
            notes.append(f"search interest: latest known day is {lag} day(s) before {last_day}")
        spike = search_spike(search, window=search_window)
        if spike.note:
            notes.append(spike.note)

    recent = [p for p in feed.posts if as_of - post_lookback < p.created_at <= as_of]
    stories = dedupe_stories(recent)
    scores = story_sentiments(stories)
    if len(scores) == 0:
        notes.append(f"no posts in the {post_lookback} before {as_of.isoformat()}")
    by_source: dict[str, int] = {}
    for p in recent:
        by_source[p.source] = by_source.get(p.source, 0) + 1

    return {
        "mention_ratio": _finite_or_none(velocity.ratio),
        "mention_zscore": _finite_or_none(velocity.zscore),
        "mentions_latest": _finite_or_none(velocity.latest),
        "mentions_baseline": _finite_or_none(velocity.baseline_mean),
        "search_ratio": None if spike is None else _finite_or_none(spike.ratio),
        "search_zscore": None if spike is None else _finite_or_none(spike.zscore),
        "mean_sentiment": _finite_or_none(float(scores.mean())) if len(scores) else None,
        "n_posts": len(recent),
        "n_stories": len(stories),
        "n_positive": int((scores >= POSITIVE_COMPOUND).sum()),
        "n_negative": int((scores <= NEGATIVE_COMPOUND).sum()),
        "posts_by_source": by_source,
        "sentiment_model": feed.sentiment_model or "lexicon",
        "context_counts": _context_counts(stories),
        "top_stories": top_stories(recent, stories, scores),
        "data_quality": notes,
    }



def _context_counts(stories: tuple[SocialPost, ...]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in stories:
        for c in context_classes(p.text):
            counts[c] = counts.get(c, 0) + 1
    return counts
