"""One signal per story: near-duplicate posts merged, and what kind of story each is.

Ten Reddit threads and a news item about the same earnings beat are one piece of information,
not eleven. `merge_stories` embeds every post (any embedder giving unit-length vectors — the
packaged MiniLM in practice; `tools/` cannot import `memory/`, so the caller passes it in),
and walks the posts oldest first: a post joins the earliest story whose first post is at least
`threshold` cosine-similar and at most `window` older; otherwise it starts a new story. The
story id is derived from the first post, so the same posts always give the same ids.

`context_classes` tags a text with the SPEC's context classes from keyword patterns: earnings,
guidance, M&A, legal, macro, meme.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta

import numpy as np

from tools.providers.base import SocialPost

DEFAULT_THRESHOLD = 0.80  # MiniLM cosine: paraphrases of one headline sit above ~0.8
DEFAULT_WINDOW = timedelta(hours=48)

CONTEXT_PATTERNS: dict[str, re.Pattern[str]] = {
    "earnings": re.compile(r"\b(earnings|eps|quarterly results|q[1-4] results|revenue beat|beats? estimates|"
                           r"miss(es|ed)? estimates|er play|reported? (a )?(profit|loss))\b", re.I),
    "guidance": re.compile(r"\b(guidance|outlook|forecast|raises? (its )?(full[- ]year )?(view|target)|"
                           r"cuts? (its )?(full[- ]year )?(view|target)|reaffirm(s|ed)?)\b", re.I),
    "m&a": re.compile(r"\b(merger|acquisition|acquires?|acquired|takeover|buyout|to buy|deal to|"
                      r"tender offer|spin[- ]?off)\b", re.I),
    "legal": re.compile(r"\b(lawsuit|sued|sues|antitrust|probe|investigation|subpoena|settlement|"
                        r"doj|ftc|sec charges|court|verdict|fined?)\b", re.I),
    "macro": re.compile(r"\b(fed|fomc|rate (hike|cut)s?|inflation|cpi|jobs report|payrolls|recession|"
                        r"tariffs?|treasury yields?|gdp)\b", re.I),
    "meme": re.compile(r"(🚀|💎|\b(yolo|to the moon|tendies|diamond hands|short squeeze|squeeze|apes?|"
                       r"hodl|stonks)\b)", re.I),
}


def context_classes(text: str) -> tuple[str, ...]:
    """The context classes a text belongs to, in `CONTEXT_PATTERNS` order (may be empty)."""
    return tuple(name for name, pattern in CONTEXT_PATTERNS.items() if pattern.search(text))


def _story_id(post: SocialPost) -> str:
    key = f"{post.source}|{post.url or ''}|{post.created_at.isoformat()}|{post.text}"
    return "story-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def merge_stories(
    posts: Sequence[SocialPost], embed: Callable[[Sequence[str]], np.ndarray], *,
    threshold: float = DEFAULT_THRESHOLD, window: timedelta = DEFAULT_WINDOW,
) -> tuple[SocialPost, ...]:
    """The posts, oldest first, each with the `story_id` of the story it belongs to.

    A post that already carries a story id keeps it (its source knew better). `embed` maps
    texts to unit-length vectors, one row per text.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    ordered = sorted(posts, key=lambda p: p.created_at)
    if not ordered:
        return ()
    vectors = np.asarray(embed([p.text for p in ordered]), dtype=np.float32)
    if vectors.shape[0] != len(ordered):
        raise ValueError(f"embedder returned {vectors.shape[0]} vectors for {len(ordered)} texts")
    similarity = vectors @ vectors.T
    leaders: list[int] = []  # index of each story's first post
    story_of: list[str] = []
    for i, post in enumerate(ordered):
        if post.story_id is not None:
            story_of.append(post.story_id)
            continue
        joined = None
        for lead in leaders:
            if post.created_at - ordered[lead].created_at <= window and similarity[i, lead] >= threshold:
                joined = lead
                break
        if joined is None:
            leaders.append(i)
            story_of.append(_story_id(post))
        else:
            story_of.append(story_of[joined])
    return tuple(replace(p, story_id=s) for p, s in zip(ordered, story_of))
