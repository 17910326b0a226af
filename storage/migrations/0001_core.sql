-- Runs, their inputs and every decision they made.
CREATE TABLE runs (
    run_id          text PRIMARY KEY,
    slot_key        text NOT NULL,
    watchlist       text NOT NULL,
    as_of           timestamptz NOT NULL,
    tickers         text[] NOT NULL,
    seed            integer NOT NULL,
    provider        text NOT NULL,
    config          jsonb NOT NULL,
    mode            text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'sandbox')),
    parent_run_id   text REFERENCES runs(run_id),
    status          text NOT NULL CHECK (status IN ('pending', 'running', 'awaiting_approval', 'completed', 'failed')),
    error           text,
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX runs_created_at ON runs (created_at DESC);

-- The market inputs a run saw, so that it can be replayed without a provider.
CREATE TABLE market_snapshots (
    run_id      text PRIMARY KEY REFERENCES runs(run_id) ON DELETE CASCADE,
    provider    text NOT NULL,
    as_of       timestamptz NOT NULL,
    sha256      text NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE node_timings (
    id          bigserial PRIMARY KEY,
    run_id      text NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    node        text NOT NULL,
    ticker      text,
    started_at  timestamptz NOT NULL,
    duration_ms double precision NOT NULL
);
CREATE INDEX node_timings_run ON node_timings (run_id);

CREATE TABLE signals (
    id            bigserial PRIMARY KEY,
    run_id        text NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    ticker        text NOT NULL,
    source        text NOT NULL,
    direction     text NOT NULL,
    conviction    double precision NOT NULL CHECK (conviction BETWEEN 0 AND 1),
    edge_type     text NOT NULL,
    horizon_days  integer NOT NULL,
    as_of         timestamptz NOT NULL,
    evidence      jsonb NOT NULL,
    data_quality  jsonb NOT NULL,
    UNIQUE (run_id, ticker, source)
);

CREATE TABLE debates (
    id               bigserial PRIMARY KEY,
    run_id           text NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    ticker           text NOT NULL,
    debater          text NOT NULL,
    price_view       text NOT NULL,
    vol_view         text NOT NULL,
    confidence       double precision NOT NULL,
    rationale        text NOT NULL,
    rounds           integer NOT NULL,
    transcript       jsonb NOT NULL,
    memories_used    jsonb NOT NULL DEFAULT '[]',
    fallback_reason  text,
    UNIQUE (run_id, ticker)
);

CREATE TABLE risk_decisions (
    id                        bigserial PRIMARY KEY,
    run_id                    text NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    ticker                    text NOT NULL,
    stage                     text NOT NULL CHECK (stage IN ('pre_trade', 'post_trade')),
    approved                  boolean NOT NULL,
    regime                    text NOT NULL,
    vetoes                    jsonb NOT NULL,
    warnings                  jsonb NOT NULL,
    requires_acknowledgement  boolean NOT NULL DEFAULT false,
    UNIQUE (run_id, ticker, stage)
);

-- Staged orders: the idempotency key (run, ticker, structure, legs) makes staging safe to repeat.
CREATE TABLE orders (
    order_id                  text PRIMARY KEY,
    idempotency_key           text NOT NULL UNIQUE,
    run_id                    text NOT NULL REFERENCES runs(run_id),
    ticker                    text NOT NULL,
    sector                    text NOT NULL,
    structure                 text NOT NULL,
    legs                      jsonb NOT NULL,
    quantity                  integer NOT NULL CHECK (quantity > 0),
    limit_price               numeric(14, 4) NOT NULL,
    state                     text NOT NULL,
    requires_acknowledgement  boolean NOT NULL DEFAULT false,
    proposal                  jsonb NOT NULL,
    sizing                    jsonb NOT NULL,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_state ON orders (state);
CREATE INDEX orders_run ON orders (run_id);

CREATE TABLE order_state_history (
    id          bigserial PRIMARY KEY,
    order_id    text NOT NULL REFERENCES orders(order_id) ON DELETE CASCADE,
    from_state  text,
    to_state    text NOT NULL,
    actor       text NOT NULL,
    reason      text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_state_history_order ON order_state_history (order_id, id);

-- Scheduler slots: the primary key is what makes two schedulers produce one run per slot.
CREATE TABLE schedule_slots (
    slot_key      text PRIMARY KEY,
    slot_name     text NOT NULL,
    watchlist     text NOT NULL,
    session_date  date NOT NULL,
    scheduled_at  timestamptz NOT NULL,
    status        text NOT NULL CHECK (status IN ('claimed', 'completed', 'failed', 'missed')),
    run_id        text,
    claimed_by    text,
    claimed_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    detail        text
);
