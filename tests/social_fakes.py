"""Local stand-ins for Reddit's and Google Trends' HTTP APIs, shaped like the real responses, for
the real praw and pytrends clients to talk to on 127.0.0.1."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from werkzeug import Request, Response

ANY_PATH = re.compile(".*")


def submission(item_id: str, title: str, created: datetime, sub: str = "stocks", selftext: str = "", score: int = 1) -> dict:
    return {"kind": "t3", "data": {"id": item_id, "name": f"t3_{item_id}", "title": title, "selftext": selftext,
                                   "created_utc": created.timestamp(), "subreddit": sub, "score": score,
                                   "permalink": f"/r/{sub}/comments/{item_id}/post/"}}


def comment(item_id: str, body: str, created: datetime, sub: str = "stocks", score: int = 1) -> dict:
    return {"kind": "t1", "data": {"id": item_id, "name": f"t1_{item_id}", "body": body,
                                   "created_utc": created.timestamp(), "subreddit": sub, "score": score,
                                   "link_id": "t3_zzz", "parent_id": "t3_zzz",
                                   "permalink": f"/r/{sub}/comments/zzz/post/{item_id}/"}}


def listing(children: list[dict]) -> str:
    return json.dumps({"kind": "Listing", "data": {"after": None, "before": None, "dist": len(children),
                                                   "children": children}})


@dataclass
class FakeReddit:
    """Serves the OAuth token and /r/{sub}/new and /r/{sub}/comments listings, newest first.
    `fail_next` is a list of (status, body) answered before the listings, one per request."""

    submissions: dict[str, list[dict]] = field(default_factory=dict)
    comments: dict[str, list[dict]] = field(default_factory=dict)
    fail_next: list[tuple[int, str]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def __call__(self, request: Request) -> Response:
        self.requests.append(f"{request.method} {request.path}")
        if request.path == "/api/v1/access_token":
            return Response(json.dumps({"access_token": "fake-token", "token_type": "bearer",
                                        "expires_in": 3600, "scope": "*"}), content_type="application/json")
        if self.fail_next:
            status, body = self.fail_next.pop(0)
            return Response(body, status=status, content_type="application/json",
                            headers={"Retry-After": "0"} if status == 429 else {})
        m = re.fullmatch(r"/r/([^/]+)/(new|comments)/?", request.path)
        if m is None:
            return Response("{}", status=404, content_type="application/json")
        source = self.submissions if m[2] == "new" else self.comments
        items = sorted(source.get(m[1], []), key=lambda c: -c["data"]["created_utc"])
        return Response(listing(items), content_type="application/json")


@dataclass
class FakeTrends:
    """Serves pytrends' cookie page, explore (widget tokens) and multiline (interest over time).
    `series[keyword]` maps date -> interest; the last day is marked partial, as Google does."""

    series: dict[str, dict[date, int]] = field(default_factory=dict)
    fail_next: list[tuple[int, str]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def __call__(self, request: Request) -> Response:
        self.requests.append(f"{request.method} {request.path}")
        if request.path == "/explore/":
            return Response("<html></html>", headers={"Set-Cookie": "NID=fake"})
        if self.fail_next:
            status, body = self.fail_next.pop(0)
            return Response(body, status=status, content_type="application/json")
        if request.path == "/api/explore":
            req = json.loads(request.args["req"])
            keyword = req["comparisonItem"][0]["keyword"]
            widget = {"id": "TIMESERIES", "token": "tok", "request": {"keyword": keyword}}
            return Response(")]}'" + json.dumps({"widgets": [widget]}), content_type="application/json")
        if request.path == "/api/widgetdata/multiline":
            keyword = json.loads(request.args["req"])["keyword"]
            days = sorted(self.series.get(keyword, {}).items())
            timeline = []
            for i, (day, value) in enumerate(days):
                point = {"time": str(int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())),
                         "formattedTime": day.isoformat(), "value": [value], "formattedValue": [str(value)]}
                if i == len(days) - 1:
                    point["isPartial"] = True
                timeline.append(point)
            return Response(")]}',\n" + json.dumps({"default": {"timelineData": timeline}}),
                            content_type="application/json")
        return Response("not found", status=404)


def daily(end: date, values: list[int]) -> dict[date, int]:
    return {end - timedelta(days=len(values) - 1 - i): v for i, v in enumerate(values)}
