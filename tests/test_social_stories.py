"""One signal per story: near-duplicate merging (hand-made vectors and the packaged MiniLM) and
context classes."""
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from tools.providers.base import SocialFeed, SocialPost
from tools.social import social_summary
from tools.stories import context_classes, merge_stories

T0 = datetime(2026, 11, 20, 14, 0, tzinfo=timezone.utc)


def _post(minutes, text, source="reddit", url=None, **kw):
    return SocialPost(created_at=T0 + timedelta(minutes=minutes), source=source, text=text, url=url, **kw)


def _table_embed(vectors: dict[str, list[float]]):
    def embed(texts):
        rows = np.array([vectors[t] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return embed


def test_merge_by_similarity_threshold_and_window():
    embed = _table_embed({"a": [1, 0, 0], "a2": [0.95, 0.1, 0], "b": [0, 1, 0], "a-late": [1, 0.01, 0]})
    posts = [_post(10, "a2"), _post(0, "a"), _post(5, "b"), _post(60 * 50, "a-late")]
    merged = merge_stories(posts, embed, threshold=0.8, window=timedelta(hours=48))
    assert [p.text for p in merged] == ["a", "b", "a2", "a-late"]  # oldest first
    ids = {p.text: p.story_id for p in merged}
    assert ids["a"] == ids["a2"]
    assert ids["b"] != ids["a"]
    assert ids["a-late"] != ids["a"]  # same text, 50 h later: outside the window, a new story
    again = merge_stories(list(reversed(posts)), embed, threshold=0.8)
    assert {p.text: p.story_id for p in again} == ids  # ids depend on the posts, not their order
    strict = merge_stories(posts, embed, threshold=0.999)
    assert len({p.story_id for p in strict}) == 4


def test_merge_keeps_ids_given_by_the_source_and_checks_the_embedder():
    embed = _table_embed({"x": [1, 0], "y": [1, 0]})
    merged = merge_stories([_post(0, "x", story_id="wire-1"), _post(1, "y")], embed)
    assert merged[0].story_id == "wire-1" and merged[1].story_id != "wire-1"
    assert merge_stories([], embed) == ()
    with pytest.raises(ValueError, match="vectors"):
        merge_stories([_post(0, "x")], lambda texts: np.zeros((2, 2)))
    with pytest.raises(ValueError, match="threshold"):
        merge_stories([_post(0, "x")], embed, threshold=0)


def test_packaged_minilm_merges_paraphrases_not_different_news():
    from memory.embeddings import MiniLMEmbedder

    posts = [_post(0, "Nvidia beats earnings estimates as data center revenue soars"),
             _post(3, "NVIDIA beat earnings estimates, data center revenue soared"),
             _post(6, "Tesla recalls two million cars over autopilot concerns")]
    merged = merge_stories(posts, MiniLMEmbedder().embed)
    assert merged[0].story_id == merged[1].story_id != merged[2].story_id


@pytest.mark.parametrize("text, classes", [
    ("AAPL beats estimates, EPS up 12%", ("earnings",)),
    ("Company raises full-year guidance", ("guidance",)),
    ("Microsoft agrees to acquire a game studio in a $10B deal", ("m&a",)),
    ("DOJ opens antitrust probe into Google", ("legal",)),
    ("Fed signals rate cuts as inflation cools", ("macro",)),
    ("GME to the moon 🚀🚀 diamond hands", ("meme",)),
    ("Q3 results: revenue miss, outlook cut", ("earnings", "guidance")),
    ("nice weather today", ()),
])
def test_context_classes(text, classes):
    assert context_classes(text) == classes


def test_summary_lists_top_stories_with_links_counts_and_sentiment():
    posts = (
        _post(0, "NVDA beats earnings, huge rally", url="https://r/1", story_id="s1"),
        _post(1, "NVDA beat earnings and rallied", url="https://r/2", story_id="s1", source="news"),
        _post(2, "NVDA beats earnings again", url="https://r/3", story_id="s1"),
        _post(3, "NVDA lawsuit filed, shares plunge", url="https://r/4", story_id="s2", sentiment=-0.9),
    )
    days = np.arange(np.datetime64("2026-11-12"), np.datetime64("2026-11-21"))
    feed = SocialFeed(dates=days, mentions=np.array([5, 6, 5, 4, 6, 5, 5, 6, 30.0]), search_interest=None,
                      posts=posts, sentiment_model="tiny-finbert", notes=("google trends: rate limited",))
    s = social_summary(feed, T0 + timedelta(hours=1))
    top = s["top_stories"]
    assert [t["story_id"] for t in top] == ["s1", "s2"]
    assert top[0]["posts"] == 3 and top[0]["url"] == "https://r/1" and top[0]["sources"] == ["news", "reddit"]
    assert top[0]["sentiment"] > 0 and "earnings" in top[0]["context"]
    assert top[1]["sentiment"] == -0.9 and top[1]["context"] == ["legal"]  # the recorded model score is used
    assert s["n_stories"] == 2 and s["sentiment_model"] == "tiny-finbert"
    assert s["context_counts"] == {"earnings": 1, "legal": 1}
    assert s["data_quality"][0] == "google trends: rate limited"


def test_search_spike_uses_the_latest_published_day_and_says_so():
    days = np.arange(np.datetime64("2026-10-18"), np.datetime64("2026-11-21"))  # 34 days to 11-20
    search = np.full(len(days), 30.0)
    search[::2] = 32.0
    search[-3] = 60.0  # 11-18: the spike; 11-19 and 11-20 not published yet
    search[-2:] = np.nan
    feed = SocialFeed(dates=days, mentions=np.full(len(days), 5.0), search_interest=search)
    s = social_summary(feed, T0 + timedelta(hours=1))
    baseline = search[-34:-3]
    baseline = baseline[-30:]
    assert s["search_zscore"] == pytest.approx((60 - baseline.mean()) / baseline.std(ddof=1))
    assert "search interest: latest known day is 2 day(s) before 2026-11-20" in s["data_quality"]
    complete = SocialFeed(dates=days, mentions=feed.mentions, search_interest=np.where(np.isnan(search), 31.0, search))
    assert not any("latest known day" in q for q in social_summary(complete, T0)["data_quality"])
