-- Browser sessions of the approver's web page: a random session id (stored only as its SHA-256)
-- bound to the API token it was opened with, so revoking the token ends the session too.
CREATE TABLE web_sessions (
    session_sha256  text PRIMARY KEY,
    token_id        bigint NOT NULL REFERENCES api_tokens(id),
    csrf_token      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX web_sessions_expires ON web_sessions (expires_at);

-- Every notification sent or attempted (webhook or email), with its outcome.
CREATE TABLE notifications (
    id            bigserial PRIMARY KEY,
    event         text NOT NULL,
    channel       text NOT NULL CHECK (channel IN ('webhook', 'email')),
    subject       text NOT NULL,
    body          text NOT NULL,
    payload       jsonb NOT NULL DEFAULT '{}',
    dedupe_key    text,
    status        text NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz
);
-- One notification per (event, channel, key): "about to expire" and the daily summary are sent once.
CREATE UNIQUE INDEX notifications_dedupe ON notifications (event, channel, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX notifications_created ON notifications (created_at DESC);
