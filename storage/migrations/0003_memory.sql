-- Agent memory: embedded situations, and the outcome and reflection attached once the horizon passed.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE memories (
    id                bigserial PRIMARY KEY,
    ticker            text NOT NULL,
    regime            text NOT NULL,
    as_of             timestamptz NOT NULL,           -- when the situation was seen
    situation         text NOT NULL,                  -- exactly the text that was embedded
    signals           jsonb NOT NULL DEFAULT '[]',
    thesis            text NOT NULL,
    trade             jsonb,                          -- NULL when no trade was chosen
    run_id            text,
    embedding         vector(384) NOT NULL,
    outcome           jsonb,                          -- P&L and/or underlying return, once known
    reflection        text,
    outcome_known_at  timestamptz,
    horizon_days      integer NOT NULL CHECK (horizon_days >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- An outcome and its time arrive together, and never before the situation itself: retrieval
    -- "as of T" relies on outcome_known_at to exclude anything learned after T.
    CHECK ((outcome IS NULL) = (outcome_known_at IS NULL)),
    CHECK (outcome_known_at IS NULL OR outcome_known_at >= as_of)
);

CREATE INDEX memories_embedding_hnsw ON memories
    USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);
CREATE INDEX memories_outcome_known_at ON memories (outcome_known_at);
-- Per-ticker retrieval counts and scans its eligible rows through this one.
CREATE INDEX memories_ticker_known_at ON memories (ticker, outcome_known_at);
-- Situations still waiting for an outcome (due_for_outcome).
CREATE INDEX memories_pending ON memories (as_of) WHERE outcome_known_at IS NULL;
