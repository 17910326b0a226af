-- Backtests: one row per backtest (its parameters, where its runs live, its results), one per day.
-- A backtest's runs, orders, fills and book live in a database of their own (database column),
-- so the user's paper book, approvals, memories and kill switch are never touched by it.
CREATE TABLE backtests (
    backtest_id   text PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    status        text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'completed', 'failed')),
    params        jsonb NOT NULL,
    database      text NOT NULL,
    account_id    text NOT NULL,
    results_dir   text,
    summary       jsonb,
    error         text
);

CREATE TABLE backtest_days (
    backtest_id      text NOT NULL REFERENCES backtests(backtest_id) ON DELETE CASCADE,
    session          date NOT NULL,
    run_ids          text[] NOT NULL,
    orders_staged    integer NOT NULL,
    orders_filled    integer NOT NULL,
    net_liquidation  numeric(20, 4),
    PRIMARY KEY (backtest_id, session)
);
