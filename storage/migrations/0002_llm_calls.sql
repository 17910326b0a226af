-- Every LLM call a run made: for cost accounting and for replaying the run without a network.
-- The API key is never stored; `messages` holds only the prompt text sent.
CREATE TABLE llm_calls (
    id           bigserial PRIMARY KEY,
    run_id       text NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    node         text NOT NULL,
    ticker       text NOT NULL,
    role         text NOT NULL CHECK (role IN ('bull', 'bear', 'judge')),
    round        integer NOT NULL CHECK (round >= 1),
    model        text NOT NULL,
    prompt_hash  text NOT NULL,          -- sha256 of the canonical JSON of `messages`
    messages     jsonb NOT NULL,
    response     text,                   -- the model's text; NULL when nothing came back
    status       text NOT NULL CHECK (status IN ('ok', 'timeout', 'http_error', 'malformed', 'refused')),
    error        text,
    tokens_in    integer,
    tokens_out   integer,
    latency_ms   double precision NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX llm_calls_run ON llm_calls (run_id);
