"""Reddit through the real praw client against a local fake of Reddit's API."""
from datetime import datetime, timedelta, timezone

import pytest

from tests.social_fakes import ANY_PATH, FakeReddit, comment, submission
from tools.providers.reddit import RedditError, RedditSource

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)


@pytest.fixture
def fake(httpserver):
    reddit = FakeReddit()
    httpserver.expect_request(ANY_PATH).respond_with_handler(reddit)
    return reddit


def _source(httpserver, **kw):
    base = httpserver.url_for("/").rstrip("/")
    sleeps = []
    src = RedditSource(client_id="id", client_secret="top-secret", user_agent="hedgegraph-test",
                       subreddits=kw.pop("subreddits", ["stocks"]), oauth_url=base, reddit_url=base,
                       sleep=sleeps.append, **kw)
    return src, sleeps


def test_reads_submissions_and_comments_newer_than_the_cursor(httpserver, fake):
    fake.submissions["stocks"] = [submission("a1", "$NVDA beats", NOW - timedelta(hours=3), selftext="big quarter"),
                                  submission("a2", "TSLA recall", NOW - timedelta(hours=1))]
    fake.comments["stocks"] = [comment("c1", "AAPL looks weak", NOW - timedelta(minutes=30))]
    src, _ = _source(httpserver)
    items = src.fetch()
    by_id = {i.item_id: i for i in items}
    assert set(by_id) == {"t3_a1", "t3_a2", "t1_c1"}
    assert by_id["t3_a1"].text == "$NVDA beats\nbig quarter" and by_id["t3_a1"].kind == "submission"
    assert by_id["t3_a1"].created_at == NOW - timedelta(hours=3)
    assert by_id["t1_c1"].url == "https://www.reddit.com/r/stocks/comments/zzz/post/c1/"
    newer = src.fetch({"stocks": NOW - timedelta(hours=2)})
    assert {i.item_id for i in newer} == {"t3_a2", "t1_c1"}
    assert "top-secret" not in repr(src)


def test_429_backs_off_then_succeeds(httpserver, fake):
    fake.submissions["stocks"] = [submission("a1", "$NVDA", NOW)]
    fake.fail_next = [(429, "{}"), (429, "{}")]
    src, sleeps = _source(httpserver, include_comments=False, max_retries=3)
    assert [i.item_id for i in src.fetch()] == ["t3_a1"]
    assert sleeps == [0.0, 0.0]  # Retry-After: 0 honoured


def test_429_past_the_retries_is_a_clear_error(httpserver, fake):
    fake.fail_next = [(429, "{}")] * 5
    src, sleeps = _source(httpserver, include_comments=False, max_retries=2)
    with pytest.raises(RedditError, match=r"r/stocks submissions: rate limited \(HTTP 429\) after 2 retries"):
        src.fetch()
    assert len(sleeps) == 2


@pytest.mark.parametrize("body, status, match", [
    ('{"kind": "Listing", "data": {"children": [{"kind": "t3", "data": {"id": "x"}}]}}', 200, "malformed response"),
    ('{"kind": "Listing"}', 200, "malformed response"),
    ("<html>oops</html>", 200, "malformed|HTTP"),
    ("{}", 403, "HTTP 403"),
    ("{}", 500, "HTTP 500"),
])
def test_malformed_and_refused_pages(httpserver, fake, body, status, match):
    fake.fail_next = [(status, body)] * 5
    src, _ = _source(httpserver, include_comments=False, max_retries=0)
    with pytest.raises(RedditError, match=match):
        src.fetch()


def test_configuration_errors():
    with pytest.raises(ValueError, match="client id"):
        RedditSource(client_id="", client_secret="x", user_agent="u", subreddits=["a"])
    with pytest.raises(ValueError, match="subreddits"):
        RedditSource(client_id="i", client_secret="x", user_agent="u", subreddits=[" "])
