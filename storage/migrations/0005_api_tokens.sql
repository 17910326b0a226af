-- Bearer tokens of the HTTP API. Only the SHA-256 of a token is stored: the plaintext is shown
-- once when it is created and cannot be recovered from the database.
CREATE TABLE api_tokens (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'),
    role          text NOT NULL CHECK (role IN ('viewer', 'approver', 'admin')),
    token_sha256  text NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
-- The name is who an approval is recorded as: at most one live token per name.
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;
