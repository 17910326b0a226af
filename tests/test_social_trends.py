"""Google Trends through the real pytrends client against a local fake."""
from datetime import date

import numpy as np
import pytest

from tests.social_fakes import ANY_PATH, FakeTrends, daily
from tools.providers.trends import TrendsError, TrendsSource

END = date(2026, 11, 20)


@pytest.fixture
def fake(httpserver):
    trends = FakeTrends()
    httpserver.expect_request(ANY_PATH).respond_with_handler(trends)
    return trends


def _source(httpserver, **kw):
    sleeps = []
    return TrendsSource(base_url=httpserver.url_for("/").rstrip("/"), sleep=sleeps.append, **kw), sleeps


def test_interest_over_time_on_a_daily_axis(httpserver, fake):
    # 28 days of data ending 2 days before END; the last one is partial (dropped)
    fake.series["NVDA stock"] = daily(date(2026, 11, 18), list(range(40, 68)))
    src, _ = _source(httpserver)
    days, interest = src.interest("NVDA stock", END, days=31)
    assert days[0] == np.datetime64("2026-10-21") and days[-1] == np.datetime64("2026-11-20") and len(days) == 31
    assert np.isnan(interest[-3:]).all()  # 11-18 partial, 11-19 and 11-20 not published
    assert interest[-4] == 66 and interest[1] == 40 and np.isnan(interest[0])  # data start 10-22
    assert any(r.endswith("/api/widgetdata/multiline") for r in fake.requests)


def test_429_backoff_then_success_and_exhaustion(httpserver, fake):
    fake.series["SPY stock"] = daily(END, [50] * 10)
    fake.fail_next = [(429, "{}")]
    src, sleeps = _source(httpserver, max_retries=2)
    _, interest = src.interest("SPY stock", END, days=10)
    assert sleeps == [1.0] and np.nansum(interest) == 50 * 9
    fake.fail_next = [(429, "{}")] * 3
    src, sleeps = _source(httpserver, max_retries=2)
    with pytest.raises(TrendsError, match=r"rate limited \(HTTP 429\) after 2 retries"):
        src.interest("SPY stock", END, days=10)
    assert sleeps == [1.0, 2.0]


@pytest.mark.parametrize("status, body, match", [
    (200, "not json at all", "malformed"),
    (200, ")]}'" + '{"nowidgets": []}', "malformed"),
    (500, "boom", "HTTP 500"),
])
def test_malformed_and_failing_pages(httpserver, fake, status, body, match):
    fake.fail_next = [(status, body)]
    src, _ = _source(httpserver, max_retries=0)
    with pytest.raises(TrendsError, match=match):
        src.interest("SPY stock", END, days=10)


def test_bad_arguments():
    src = TrendsSource(base_url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="empty"):
        src.interest(" ", END)
    with pytest.raises(ValueError, match="days"):
        src.interest("x", END, days=1)
