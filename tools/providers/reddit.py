"""Reddit posts and comments through praw, read-only (a "script" app's client credentials).

`RedditSource.fetch(since)` reads each configured subreddit's newest submissions and comments,
newest first, and stops at the first item not newer than `since` (what the previous run already
stored), so a run reads only what is new. praw's own rate limiter paces requests by Reddit's
`X-Ratelimit-*` headers; an HTTP 429 anyway is retried here with exponential backoff
(honouring `Retry-After`) up to `max_retries` times, then reported as `RedditError`. So is a page
that is not the listing JSON Reddit sends. Credentials are passed in, never logged or repr'd.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

import praw
import prawcore

DEFAULT_REDDIT_WEB = "https://www.reddit.com"
MAX_BACKOFF_S = 60.0


class RedditError(RuntimeError):
    """Reddit could not be read: rate limited past the retries, refused, unreachable or malformed."""


@dataclass(frozen=True)
class RedditItem:
    item_id: str  # Reddit fullname: t3_… for a submission, t1_… for a comment
    kind: Literal["submission", "comment"]
    subreddit: str
    created_at: datetime  # UTC
    text: str
    url: str  # permalink on reddit.com
    score: int


def _retry_after(exc: prawcore.TooManyRequests, attempt: int) -> float:
    header = exc.response.headers.get("retry-after") if exc.response is not None else None
    try:
        wait = float(header) if header is not None else 2.0 ** attempt
    except ValueError:
        wait = 2.0 ** attempt
    return min(max(wait, 0.0), MAX_BACKOFF_S)


class RedditSource:
    name = "reddit"

    def __init__(self, *, client_id: str, client_secret: str, user_agent: str, subreddits: Iterable[str],
                 oauth_url: str | None = None, reddit_url: str | None = None, max_items: int = 500,
                 include_comments: bool = True, max_retries: int = 3, timeout_s: float = 15.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not client_id or not client_secret:
            raise ValueError("Reddit needs a client id and a client secret (REDDIT_CLIENT_ID, REDDIT_CLIENT_SECRET)")
        self.subreddits = [s.strip().removeprefix("r/") for s in subreddits if s.strip()]
        if not self.subreddits:
            raise ValueError("no subreddits configured")
        endpoints = {k: v for k, v in (("oauth_url", oauth_url), ("reddit_url", reddit_url)) if v}
        self._reddit = praw.Reddit(client_id=client_id, client_secret=client_secret, user_agent=user_agent,
                                   check_for_updates=False, check_for_async=False, timeout=timeout_s,
                                   **endpoints)
        self._reddit.read_only = True
        self.max_items = max_items
        self.include_comments = include_comments
        self.max_retries = max_retries
        self._sleep = sleep
        self.web_url = DEFAULT_REDDIT_WEB

    def __repr__(self) -> str:  # never show the credentials
        return f"RedditSource(subreddits={self.subreddits!r})"

    def fetch(self, since: dict[str, datetime] | None = None) -> list[RedditItem]:
        """Items newer than `since[subreddit]` (everything up to `max_items` per listing when absent)."""
        since = since or {}
        items: list[RedditItem] = []
        for sub in self.subreddits:
            items.extend(self._with_backoff(sub, "submissions", lambda s=sub: self._submissions(s, since.get(s))))
            if self.include_comments:
                items.extend(self._with_backoff(sub, "comments", lambda s=sub: self._comments(s, since.get(s))))
        return items

    def _with_backoff(self, sub: str, what: str, read: Callable[[], list[RedditItem]]) -> list[RedditItem]:
        for attempt in range(self.max_retries + 1):
            try:
                return read()
            except prawcore.TooManyRequests as exc:
                if attempt == self.max_retries:
                    raise RedditError(f"r/{sub} {what}: rate limited (HTTP 429) after {self.max_retries} retries") from exc
                self._sleep(_retry_after(exc, attempt))
            except prawcore.OAuthException as exc:
                raise RedditError(f"r/{sub} {what}: authentication refused ({exc.error})") from exc
            except prawcore.ResponseException as exc:
                status = exc.response.status_code if exc.response is not None else "?"
                raise RedditError(f"r/{sub} {what}: HTTP {status} ({type(exc).__name__})") from exc
            except prawcore.RequestException as exc:
                raise RedditError(f"r/{sub} {what}: unreachable ({type(exc.original_exception).__name__})") from exc
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # praw parses whatever JSON came back; a page that is not a listing fails here.
                raise RedditError(f"r/{sub} {what}: malformed response ({type(exc).__name__}: {exc})") from exc
        raise AssertionError("unreachable")

    def _newer(self, things: Iterator, since: datetime | None) -> Iterator:
        for thing in things:
            created = datetime.fromtimestamp(float(thing.created_utc), tz=timezone.utc)
            if since is not None and created <= since:
                return  # listings are newest first: the rest was read by an earlier run
            yield thing, created

    def _submissions(self, sub: str, since: datetime | None) -> list[RedditItem]:
        listing = self._reddit.subreddit(sub).new(limit=self.max_items)
        return [RedditItem(item_id=s.fullname, kind="submission", subreddit=sub, created_at=created,
                           text=(f"{s.title}\n{s.selftext}".strip() if s.selftext else str(s.title)),
                           url=self.web_url + str(s.permalink), score=int(s.score))
                for s, created in self._newer(listing, since)]

    def _comments(self, sub: str, since: datetime | None) -> list[RedditItem]:
        listing = self._reddit.subreddit(sub).comments(limit=self.max_items)
        return [RedditItem(item_id=c.fullname, kind="comment", subreddit=sub, created_at=created,
                           text=str(c.body), url=self.web_url + str(c.permalink), score=int(c.score))
                for c, created in self._newer(listing, since)]
