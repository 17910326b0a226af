"""Browser sessions of the web page: opened with an API token, stored only hashed.

The cookie carries a random session id; the table keeps its SHA-256, the token it was opened with
and the session's CSRF token. A session is live while it has not expired and its token is not
revoked, so revoking a token signs its browsers out too.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from storage.tokens import Principal, token_sha256

_MAX_SESSION_CHARS = 128


@dataclass(frozen=True)
class WebSession:
    principal: Principal
    csrf_token: str
    expires_at: datetime

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf_token.encode(), presented.encode())


def _sha(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class WebSessionRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def open(self, token_plaintext: str, lifetime: timedelta) -> tuple[str, WebSession] | None:
        """A new session for a live token: (session id for the cookie, session); None if the token
        is missing, unknown or revoked."""
        if not token_plaintext or len(token_plaintext) > 256:
            return None
        row = await self.pool.fetchrow(
            "SELECT id, name, role, token_sha256 FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL",
            token_sha256(token_plaintext))
        if row is None or not hmac.compare_digest(row["token_sha256"], token_sha256(token_plaintext)):
            return None
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = await self.pool.fetchval(
            "INSERT INTO web_sessions (session_sha256, token_id, csrf_token, expires_at) "
            "VALUES ($1, $2, $3, now() + $4::interval) RETURNING expires_at",
            _sha(session_id), row["id"], csrf, lifetime)
        await self.pool.execute("DELETE FROM web_sessions WHERE expires_at < now()")
        return session_id, WebSession(Principal(row["name"], row["role"]), csrf, expires)

    async def get(self, session_id: str | None) -> WebSession | None:
        if not session_id or len(session_id) > _MAX_SESSION_CHARS:
            return None
        row = await self.pool.fetchrow(
            """SELECT t.name, t.role, s.csrf_token, s.expires_at
                 FROM web_sessions s JOIN api_tokens t ON t.id = s.token_id
                WHERE s.session_sha256 = $1 AND s.expires_at > now() AND t.revoked_at IS NULL""",
            _sha(session_id))
        if row is None:
            return None
        return WebSession(Principal(row["name"], row["role"]), row["csrf_token"], row["expires_at"])

    async def close(self, session_id: str | None) -> None:
        if session_id and len(session_id) <= _MAX_SESSION_CHARS:
            await self.pool.execute("DELETE FROM web_sessions WHERE session_sha256 = $1", _sha(session_id))
