"""Social instruments: velocity and spikes by hand, one signal per story, feed summary as of."""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.chain import NEW_YORK
from tools.providers.base import SocialFeed, SocialPost
from tools.sentiment import score_texts
from tools.social import dedupe_stories, mention_velocity, search_spike, social_summary


def test_mention_velocity_by_hand():
    mentions = [99, 10, 12, 8, 10, 11, 9, 10, 40]  # the 99 is outside the 7-day baseline
    base = np.array([10, 12, 8, 10, 11, 9, 10], dtype=float)
    ratio, z = mention_velocity(mentions)  # unpacks as (ratio, zscore)
    assert ratio == pytest.approx(40 / base.mean())
    # this baseline is less dispersed than Poisson, so the sqrt(mean) floor applies
    assert base.std(ddof=1) < math.sqrt(base.mean())
    assert z == pytest.approx((40 - base.mean()) / math.sqrt(base.mean()))
    r = mention_velocity(mentions)
    assert r.latest == 40 and r.baseline_mean == pytest.approx(base.mean()) and r.note is None
    wide = [10, 40, 2, 30, 5, 50, 1, 60]  # dispersed baseline: its own sd is used
    b = np.array(wide[:-1], dtype=float)
    assert mention_velocity(wide).zscore == pytest.approx((60 - b.mean()) / b.std(ddof=1))


def test_mention_velocity_flat_baseline_uses_poisson_floor():
    r = mention_velocity([5, 5, 5, 5, 5, 5, 5, 9])
    assert r.baseline_std == 0.0
    assert r.zscore == pytest.approx((9 - 5) / math.sqrt(5))
    assert r.ratio == pytest.approx(9 / 5)


def test_mention_velocity_zero_baseline_and_short_and_missing():
    r = mention_velocity([0, 0, 0, 0, 0, 0, 0, 3])
    assert math.isnan(r.ratio) and r.zscore == pytest.approx(3.0) and "all zero" in r.note
    r = mention_velocity([1, 2, 3])
    assert math.isnan(r.ratio) and math.isnan(r.zscore) and "need 8" in r.note
    r = mention_velocity([1, 2, 3, 4, 5, 6, 7, np.nan])
    assert math.isnan(r.ratio) and "latest day missing" in r.note
    r = mention_velocity([np.nan, 2, np.nan, 4, 4, 6, 4, 8])
    assert r.ratio == pytest.approx(8 / 4) and "2 baseline days missing" in r.note
    r = mention_velocity([np.nan] * 5 + [1, 2, 8])
    assert math.isnan(r.ratio) and "only 2 of 7" in r.note
    with pytest.raises(ValueError, match="negative"):
        mention_velocity([1, 2, 3, 4, 5, 6, 7, -1])
    with pytest.raises(ValueError, match="window"):
        mention_velocity([1, 2, 3], window=1)


def test_search_spike_by_hand():
    rng = np.random.default_rng(0)
    baseline = rng.integers(20, 31, 30).astype(float)
    r = search_spike(np.r_[np.full(10, 90.0), baseline, 80.0])
    assert r.ratio == pytest.approx(80 / baseline.mean())
    assert r.zscore == pytest.approx((80 - baseline.mean()) / baseline.std(ddof=1))
    flat = search_spike(np.r_[np.full(30, 50.0), 52.0])
    assert flat.zscore == pytest.approx(2.0)  # one-index-point floor
    with pytest.raises(ValueError, match="0..100"):
        search_spike(np.r_[np.full(30, 50.0), 150.0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=8, max_size=60))
def test_velocity_is_finite_and_consistent(counts):
    r = mention_velocity(counts)
    assert math.isfinite(r.zscore)
    base = np.array(counts[-8:-1], dtype=float)
    if base.mean() > 0:
        assert r.ratio == pytest.approx(counts[-1] / base.mean())
        assert (r.ratio > 1) == (r.zscore > 0) or counts[-1] == base.mean()


def _post(hours: float, source: str, text: str, story: str | None) -> SocialPost:
    return SocialPost(datetime(2024, 3, 8, 9, tzinfo=NEW_YORK) + timedelta(hours=hours), source, text, story)


def test_dedupe_keeps_the_first_post_of_each_story():
    posts = [
        _post(3, "reddit", "late repost", "s1"),
        _post(1, "news", "first report", "s1"),
        _post(2, "stocktwits", "another story", "s2"),
        _post(0, "reddit", "no story id a", None),
        _post(4, "reddit", "no story id b", None),
        _post(5, "news", "s2 again", "s2"),
    ]
    kept = dedupe_stories(posts)
    assert [p.text for p in kept] == ["no story id a", "first report", "another story", "no story id b"]
    assert dedupe_stories([]) == ()


def _feed(as_of: datetime) -> SocialFeed:
    dates = np.arange(np.datetime64("2024-02-01"), np.datetime64("2024-03-10"))  # past as_of
    mentions = np.full(len(dates), 20.0)
    search = np.full(len(dates), 30.0)
    i = int(np.nonzero(dates == np.datetime64("2024-03-08"))[0][0])
    mentions[i], search[i] = 80.0, 60.0
    mentions[i + 1:] = 10_000.0  # after as_of: must not be seen
    posts = (
        _post(-200, "reddit", "ancient bankruptcy fraud rumour", None),  # older than the lookback
        _post(-2, "news", "Company beat earnings and raised guidance", "beat"),
        _post(-1, "reddit", "they beat earnings!! disaster for shorts", "beat"),
        _post(1, "stocktwits", "impairment and default risk worry me", None),
        _post(30, "news", "future post about fraud", None),  # after as_of
    )
    return SocialFeed(dates=dates, mentions=mentions, search_interest=search, posts=posts)


def test_social_summary_uses_only_data_up_to_as_of():
    as_of = datetime(2024, 3, 8, 12, tzinfo=NEW_YORK)
    s = social_summary(_feed(as_of), as_of)
    assert s["mention_ratio"] == pytest.approx(4.0)
    assert s["mention_zscore"] == pytest.approx(60 / math.sqrt(20))
    assert s["mentions_latest"] == 80.0
    assert s["search_ratio"] == pytest.approx(2.0) and s["search_zscore"] == pytest.approx(30.0)
    assert s["n_posts"] == 3 and s["n_stories"] == 2
    assert s["posts_by_source"] == {"news": 1, "reddit": 1, "stocktwits": 1}
    expected = score_texts(["Company beat earnings and raised guidance", "impairment and default risk worry me"])
    assert s["mean_sentiment"] == pytest.approx(expected.mean())
    assert s["n_positive"] == 1 and s["n_negative"] == 1
    assert s["data_quality"] == []
    json.dumps(s, allow_nan=False)  # evidence must be strict JSON


def test_social_summary_missing_pieces_are_none_with_reasons():
    as_of = datetime(2024, 3, 8, 12, tzinfo=NEW_YORK)
    feed = SocialFeed(dates=np.arange(np.datetime64("2024-03-05"), np.datetime64("2024-03-09")),
                      mentions=np.array([1.0, 2.0, 3.0, 4.0]), search_interest=None, posts=())
    s = social_summary(feed, as_of)
    assert s["mention_ratio"] is None and s["search_zscore"] is None and s["mean_sentiment"] is None
    assert s["n_posts"] == 0
    dq = " | ".join(s["data_quality"])
    assert "need 8" in dq and "no search-interest" in dq and "no posts" in dq
    json.dumps(s, allow_nan=False)
    with pytest.raises(ValueError, match="timezone"):
        social_summary(feed, datetime(2024, 3, 8, 12))
    with pytest.raises(ValueError, match="mention counts"):
        social_summary(SocialFeed(dates=feed.dates, mentions=np.ones(3), search_interest=None), as_of)
