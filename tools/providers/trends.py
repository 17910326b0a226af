"""Google Trends interest over time through pytrends, with backoff on HTTP 429.

`TrendsSource.interest(keyword, end)` returns the daily 0..100 search-interest index of one
keyword for the `days` days ending at `end` (Google scales each request's series to its own
maximum, so values compare only within one series — which is all a spike z-score needs).

pytrends builds every URL from its module constant `BASE_TRENDS_URL`; `_TrendReq` re-bases them
on a configured URL (a proxy, or a local fake in tests) instead of patching the module.
pytrends' own retry option relies on a urllib3 argument removed in urllib3 2, so retries on
429 are done here: exponential backoff, `max_retries` times, then `TrendsError`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import date, timedelta

import numpy as np
import requests
from pytrends import exceptions as pytrends_errors
from pytrends import request as pytrends_request

GOOGLE_TRENDS_URL = pytrends_request.BASE_TRENDS_URL
MAX_BACKOFF_S = 60.0


class TrendsError(RuntimeError):
    """Google Trends could not be read: rate limited past the retries, refused, unreachable or malformed."""


class _TrendReq(pytrends_request.TrendReq):
    def __init__(self, base_url: str, **kwargs) -> None:
        self._base_url = base_url.rstrip("/")
        super().__init__(**kwargs)

    def _rebase(self, url: str) -> str:
        return self._base_url + url[len(GOOGLE_TRENDS_URL):] if url.startswith(GOOGLE_TRENDS_URL) else url

    def GetGoogleCookie(self):  # noqa: N802 (pytrends' name)
        response = requests.get(f"{self._base_url}/explore/?geo={self.hl[-2:]}", timeout=self.timeout,
                                **self.requests_args)
        return {k: v for k, v in response.cookies.items() if k == "NID"}

    def _get_data(self, url, method=pytrends_request.TrendReq.GET_METHOD, trim_chars=0, **kwargs):
        return super()._get_data(self._rebase(url), method=method, trim_chars=trim_chars, **kwargs)


class TrendsSource:
    name = "google_trends"

    def __init__(self, *, base_url: str | None = None, geo: str = "US", max_retries: int = 3,
                 timeout_s: float = 15.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url or GOOGLE_TRENDS_URL
        self.geo = geo
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self._sleep = sleep

    def interest(self, keyword: str, end: date, days: int = 90) -> tuple[np.ndarray, np.ndarray]:
        """(dates as datetime64[D], interest as float with NaN for missing days), oldest first."""
        if not keyword.strip():
            raise ValueError("empty Trends keyword")
        if not 2 <= days <= 269:
            raise ValueError(f"days must be within 2..269 (Google answers daily points only up to ~9 months), got {days}")
        start = end - timedelta(days=days - 1)
        timeframe = f"{start.isoformat()} {end.isoformat()}"
        for attempt in range(self.max_retries + 1):
            try:
                frame = self._request(keyword, timeframe)
                break
            except pytrends_errors.TooManyRequestsError as exc:
                if attempt == self.max_retries:
                    raise TrendsError(f"'{keyword}': rate limited (HTTP 429) after {self.max_retries} retries") from exc
                self._sleep(min(2.0 ** attempt, MAX_BACKOFF_S))
            except pytrends_errors.ResponseError as exc:
                raise TrendsError(f"'{keyword}': HTTP {exc.response.status_code}") from exc
            except requests.RequestException as exc:
                raise TrendsError(f"'{keyword}': unreachable ({type(exc).__name__})") from exc
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
                raise TrendsError(f"'{keyword}': malformed response ({type(exc).__name__}: {exc})") from exc
        axis = np.arange(np.datetime64(start, "D"), np.datetime64(end, "D") + 1)
        values = np.full(len(axis), np.nan)
        if frame.empty:
            return axis, values
        if keyword not in frame.columns:
            raise TrendsError(f"'{keyword}': response has no series for the keyword")
        got_days = frame.index.values.astype("datetime64[D]")
        series = frame[keyword].to_numpy(dtype=float)
        partial = frame["isPartial"].to_numpy(dtype=bool) if "isPartial" in frame else np.zeros(len(frame), bool)
        keep = (~partial) & (got_days >= axis[0]) & (got_days <= axis[-1])
        if np.any((series[keep] < 0) | (series[keep] > 100)):
            raise TrendsError(f"'{keyword}': interest outside 0..100")
        values[(got_days[keep] - axis[0]).astype(int)] = series[keep]
        return axis, values

    def _request(self, keyword: str, timeframe: str):
        client = _TrendReq(self.base_url, hl="en-US", tz=0, timeout=(self.timeout_s, self.timeout_s))
        client.build_payload([keyword], timeframe=timeframe, geo=self.geo)
        return client.interest_over_time()
