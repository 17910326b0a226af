"""Real social sources into a run's snapshot, on the embedded Postgres with local fakes of Reddit
and Google Trends: counts stored (the baseline survives restarts), trends cached, stories merged,
FinBERT scores recorded, failures reported, and with nothing configured nothing changes."""
from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest

from agents.analysts import social_signal
from agents.social_feed import social_source_status, with_social_sources
from config.social import SocialConfig, SocialEnvironment
from storage.snapshots import decode_snapshot, encode_snapshot
from tests.social_fakes import ANY_PATH, FakeReddit, FakeTrends, comment, daily, submission
from tests.test_social_finbert import build_tiny_classifier
from tools.chain import NEW_YORK
from tools.providers.simulated import SimulatedMarket

AS_OF = datetime(2026, 11, 20, 15, 30, tzinfo=NEW_YORK)
TICKERS = ["SPY", "NVDA", "TSLA"]
CONFIG = SocialConfig.model_validate({"reddit": {"subreddits": ["stocks", "wallstreetbets"]}})


def table_embed(texts):
    """Texts that share their first three words are one story (a stand-in for MiniLM's judgement)."""
    keys = [" ".join(t.lower().split()[:3]) for t in texts]
    vocab = sorted(set(keys))
    out = np.zeros((len(texts), len(vocab)), dtype=np.float32)
    for i, k in enumerate(keys):
        out[i, vocab.index(k)] = 1.0
    return out


def reddit_history(fake: FakeReddit, *, days: int = 9, today_nvda: int = 12) -> None:
    """NVDA: 3 posts a day for `days` days before AS_OF's date, then a burst today (one story,
    cross-posted); TSLA: 2 comments a day; SPY: nothing. Plus chatter that names no ticker."""
    subs = {"stocks": [], "wallstreetbets": []}
    comments = {"stocks": []}
    for d in range(days, 0, -1):
        noon = (AS_OF - timedelta(days=d)).replace(hour=12)
        for k in range(3):
            subs["stocks"].append(submission(f"n{d}_{k}", f"Thoughts on $NVDA day {d} number {k}", noon + timedelta(minutes=k)))
        for k in range(2):
            comments["stocks"].append(comment(f"t{d}_{k}", f"TSLA deliveries look fine {d}/{k}", noon + timedelta(minutes=k)))
        subs["wallstreetbets"].append(submission(f"x{d}", "YOLO DD: IT is ALL about the CEO", noon))
    for k in range(today_nvda):
        sub = "wallstreetbets" if k % 2 else "stocks"
        subs[sub].append(submission(f"burst{k}", f"Nvidia beats earnings estimates, post {k}",
                                    AS_OF - timedelta(minutes=90 - k), sub=sub))
    subs["stocks"].append(submission("late", "$NVDA after the as-of time", AS_OF + timedelta(minutes=5)))
    fake.submissions, fake.comments = subs, comments


def trends_history(fake: FakeTrends) -> None:
    rng = np.random.default_rng(3)
    base = [int(v) for v in rng.integers(28, 33, 31)]
    fake.series["NVDA stock"] = daily(AS_OF.date() - timedelta(days=1), base[:-1] + [70])  # spike on the 19th ... partial
    fake.series["NVDA stock"][AS_OF.date()] = 75  # today, partial: dropped
    fake.series["TSLA stock"] = daily(AS_OF.date(), [30] * 32)
    fake.series["SPY stock"] = daily(AS_OF.date(), [50] * 32)


@pytest.fixture
def fakes(httpserver):
    reddit, trends = FakeReddit(), FakeTrends()
    httpserver.expect_request(ANY_PATH).respond_with_handler(
        lambda request: (reddit if request.path.startswith(("/r/", "/api/v1/")) else trends)(request))
    return reddit, trends


def environment(httpserver, **overrides) -> SocialEnvironment:
    base = httpserver.url_for("/").rstrip("/")
    values = dict(reddit_client_id="id", reddit_client_secret="secret", reddit_oauth_url=base, reddit_url=base,
                  trends=True, trends_url=base)
    values.update(overrides)
    return SocialEnvironment(**values)


@pytest.fixture(scope="module")
def snapshot():
    return SimulatedMarket(seed=7).snapshot(TICKERS, AS_OF)


async def test_nothing_configured_changes_nothing(db, snapshot, monkeypatch):
    for name in ("REDDIT_CLIENT_ID", "REDDIT_CLIENT_SECRET", "HEDGEGRAPH_TRENDS", "HEDGEGRAPH_FINBERT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    assert await with_social_sources(snapshot, db) is snapshot
    assert [r["state"] for r in social_source_status()] == ["off", "off", "off"]


async def test_reddit_trends_finbert_into_the_recorded_snapshot(db, snapshot, fakes, httpserver, tmp_path):
    reddit, trends = fakes
    reddit_history(reddit)
    trends_history(trends)
    model = build_tiny_classifier(tmp_path / "finbert", {0: "positive", 1: "negative", 2: "neutral"}, bias=[2.0, 0, 0])
    env = environment(httpserver, finbert_model=str(model))
    out = await with_social_sources(snapshot, db, env=env, config=CONFIG, embed=table_embed)

    nvda = out.tickers["NVDA"].social
    assert nvda.dates[-1] == np.datetime64("2026-11-20") and len(nvda.dates) == 35
    np.testing.assert_array_equal(nvda.mentions[-10:], [3] * 9 + [12])  # the 'late' post is after as-of
    assert np.isnan(nvda.mentions[:-10]).all()  # before the first stored item: unknown, not zero
    assert out.tickers["SPY"].social.mentions[-1] == 0
    assert out.tickers["TSLA"].social.mentions[-2] == 2
    assert all(p.created_at <= AS_OF and p.url.startswith("https://www.reddit.com/r/") for p in nvda.posts)
    assert len({p.story_id for p in nvda.posts if "beats earnings" in p.text}) == 1  # the burst is one story
    assert nvda.sentiment_model == str(model) and all(p.sentiment is not None and p.sentiment > 0 for p in nvda.posts)
    assert nvda.search_interest[-2] == 70 and np.isnan(nvda.search_interest[-1])  # today is partial: dropped
    assert out.meta["social_sources"]["reddit"] == "stocks,wallstreetbets"
    stored = await db.pool.fetchval("SELECT count(*) FROM social_items")
    assert stored == 9 * 3 + 9 * 2 + 9 + 12 + 1
    assert await db.pool.fetchval("SELECT count(*) FROM social_mentions WHERE ticker = 'SPY'") == 0  # "YOLO DD: IT is ALL..."

    recorded = decode_snapshot(encode_snapshot(out))  # what the run records is what replay sees
    assert recorded.tickers["NVDA"].social.posts == nvda.posts

    signal = social_signal(recorded.tickers["NVDA"], AS_OF)
    ev = signal.evidence
    assert ev["mentions_latest"] == 12 and ev["mentions_baseline"] == 3 and ev["mention_zscore"] > 2
    assert ev["search_zscore"] > 5 and ev["sentiment_model"] == str(model) and ev["mean_sentiment"] > 0
    assert ev["context_earnings"] == 1
    top = ev["top_stories"][0]
    assert top["posts"] == 12 and top["url"].startswith("https://www.reddit.com/") and "earnings" in top["context"]
    assert signal.direction == "bullish" and signal.edge_type == "mention_spike"
    assert any("search interest: latest known day is 1 day(s) before" in q for q in signal.data_quality)


async def test_baseline_survives_a_restart_and_trends_are_cached(db, snapshot, fakes, httpserver):
    reddit, trends = fakes
    reddit_history(reddit)
    trends_history(trends)
    env = environment(httpserver)
    await with_social_sources(snapshot, db, env=env, config=CONFIG, embed=table_embed)
    # A new process: Reddit's listings now only hold today's posts, Trends would refuse.
    reddit.submissions = {s: [c for c in items if c["data"]["id"].startswith("burst")] for s, items in reddit.submissions.items()}
    reddit.comments = {}
    reddit.requests.clear()
    trends.requests.clear()
    trends.fail_next = [(429, "{}")] * 50
    out = await with_social_sources(snapshot, db, env=env, config=CONFIG, embed=table_embed)
    np.testing.assert_array_equal(out.tickers["NVDA"].social.mentions[-10:], [3] * 9 + [12])
    assert out.tickers["NVDA"].social.search_interest[-2] == 70  # from the cache, no request
    assert not [r for r in trends.requests if "/api/" in r]
    assert out.tickers["NVDA"].social.notes == ()


async def test_failing_sources_degrade_the_signal_with_reasons(db, snapshot, fakes, httpserver, tmp_path):
    reddit, trends = fakes
    reddit_history(reddit)
    trends_history(trends)
    env = environment(httpserver)
    await with_social_sources(snapshot, db, env=env, config=CONFIG, embed=table_embed)  # yesterday's baseline stored

    reddit.fail_next = [(429, "{}")] * 50
    trends.fail_next = [(200, "<html>captcha</html>")] * 50
    later = replace(snapshot, as_of=AS_OF + timedelta(days=1))  # a new day: Trends not cached
    env = environment(httpserver, finbert_model=str(tmp_path / "missing"))
    cfg = CONFIG.model_copy(update={"reddit": CONFIG.reddit.model_copy(update={"max_retries": 1})})
    out = await with_social_sources(later, db, env=env, config=cfg, embed=table_embed)
    feed = out.tickers["NVDA"].social
    assert np.isnan(feed.mentions[-1]) and feed.search_interest is None
    joined = " | ".join(feed.notes)
    assert "reddit: r/stocks submissions: rate limited (HTTP 429) after 1 retries" in joined
    assert "google trends: 'NVDA stock': malformed response" in joined
    assert "finbert: FinBERT model directory not found" in joined
    signal = social_signal(out.tickers["NVDA"], later.as_of)
    assert "a social source failed: conviction halved" in signal.data_quality
    assert any(q.startswith("reddit: ") for q in signal.data_quality)
    assert "mentions: latest day missing" in signal.data_quality
    assert signal.evidence["sentiment_model"] == "lexicon"
    statuses = {r["source"]: r for r in social_source_status(env, cfg)}
    assert statuses["finbert"]["state"] == "error" and statuses["reddit"]["state"] == "on"
    assert "secret" not in str(statuses)


async def test_a_run_with_the_fakes_shows_social_evidence_and_replays_without_asking_again(
        db, fakes, httpserver, monkeypatch):
    from graph.replay import replay_run
    from graph.runner import RunRequest, execute_run
    from service.operations import default_account

    reddit, trends = fakes
    reddit_history(reddit)
    trends_history(trends)
    base = httpserver.url_for("/").rstrip("/")
    for name, value in {"REDDIT_CLIENT_ID": "id", "REDDIT_CLIENT_SECRET": "secret", "REDDIT_OAUTH_URL": base,
                        "REDDIT_URL": base, "HEDGEGRAPH_TRENDS": "1", "HEDGEGRAPH_TRENDS_URL": base}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HEDGEGRAPH_FINBERT_MODEL", raising=False)
    request = RunRequest(watchlist="social", tickers=TICKERS, as_of=AS_OF, seed=7, provider="simulated")
    outcome = await execute_run(db, request, SimulatedMarket(seed=7), account=default_account())
    row = await db.pool.fetchrow("SELECT evidence, data_quality FROM signals WHERE run_id = $1 AND ticker = 'NVDA' "
                                 "AND source = 'social'", outcome.run.run_id)
    import json
    evidence = json.loads(row["evidence"]) if isinstance(row["evidence"], str) else row["evidence"]
    assert evidence["mentions_latest"] == 12 and evidence["mention_zscore"] > 2
    assert evidence["search_zscore"] > 5 and evidence["mean_sentiment"] is not None
    assert evidence["top_stories"][0]["posts"] == 12  # the packaged MiniLM merged the cross-posted burst
    assert evidence["top_stories"][0]["url"].startswith("https://www.reddit.com/r/")

    reddit.requests.clear()
    trends.requests.clear()
    reddit.fail_next = trends.fail_next = [(500, "{}")] * 50
    report = await replay_run(db, outcome.run.run_id)
    assert report.matched and report.differing_nodes == []
    assert reddit.requests == [] and trends.requests == []
