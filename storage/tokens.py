"""Bearer tokens of the HTTP API: random, shown once, stored only as their SHA-256.

A token's `name` is the identity the API records (e.g. as the approver of an order); its `role`
is what it may do: viewer < approver < admin. Lookup is by the SHA-256 of the presented token, so
the database never compares secret bytes and response time does not depend on how much of a
guessed token is right.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

Role = Literal["viewer", "approver", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "approver", "admin")  # in increasing privilege
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# Presented tokens longer than this are not ours (token_urlsafe(32) is 43 characters): refuse
# before hashing megabytes of header.
_MAX_TOKEN_CHARS = 256


class TokenError(ValueError):
    """A token could not be created: bad name or role, or the name already has a live token."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and role."""

    name: str
    role: Role

    def has_role(self, required: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(required)


@dataclass(frozen=True)
class TokenInfo:
    """What `list()` shows of a token: never its plaintext or hash."""

    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def token_sha256(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


class TokenRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def create(self, name: str, role: str) -> str:
        """Create a token for `name` with `role`; return its plaintext (the only time it exists)."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise TokenError(f"token name must be 1-64 of letters, digits, '_', '.', '@', '-' "
                             f"starting with a letter or digit, got {name!r}")
        if role not in ROLES:
            raise TokenError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        plaintext = secrets.token_urlsafe(32)
        try:
            await self.pool.execute(
                "INSERT INTO api_tokens (name, role, token_sha256) VALUES ($1, $2, $3)",
                name, role, token_sha256(plaintext),
            )
        except asyncpg.UniqueViolationError as exc:
            raise TokenError(f"{name!r} already has an active token; revoke it first") from exc
        return plaintext

    async def authenticate(self, plaintext: str | None) -> Principal | None:
        """The principal of a live token, or None for a missing, unknown or revoked one."""
        if not plaintext or len(plaintext) > _MAX_TOKEN_CHARS:
            return None
        digest = token_sha256(plaintext)
        row = await self.pool.fetchrow(
            "SELECT name, role, token_sha256 FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL",
            digest,
        )
        # The index found the row by equality on the hash; compare again in constant time so no
        # path of ours ever short-circuits on secret-derived bytes.
        if row is None or not hmac.compare_digest(row["token_sha256"], digest):
            return None
        return Principal(name=row["name"], role=row["role"])

    async def revoke(self, name: str) -> bool:
        """Revoke `name`'s live token. Returns whether there was one."""
        status = await self.pool.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name)
        return status != "UPDATE 0"

    async def list(self) -> list[TokenInfo]:
        rows = await self.pool.fetch(
            "SELECT name, role, created_at, revoked_at FROM api_tokens ORDER BY created_at, id")
        return [TokenInfo(**dict(r)) for r in rows]
