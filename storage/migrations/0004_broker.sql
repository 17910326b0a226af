-- Broker books (paper broker and any adapter that keeps its own ledger), the trade journal and
-- account snapshots. Money is numeric (exact); prices are per share, signed where noted.

CREATE TABLE broker_accounts (
    account_id    text PRIMARY KEY,
    broker        text NOT NULL,
    opening_cash  numeric(18, 4) NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- One broker order per approved order: the UNIQUE order_id is what makes placing idempotent.
-- The order's state lives only in orders.state (moved through the state machine).
CREATE TABLE broker_orders (
    broker_order_id  text PRIMARY KEY,
    order_id         text NOT NULL UNIQUE REFERENCES orders(order_id),
    account_id       text NOT NULL REFERENCES broker_accounts(account_id),
    broker           text NOT NULL,
    ticker           text NOT NULL,
    legs             jsonb NOT NULL,
    multiplier       integer NOT NULL CHECK (multiplier > 0),
    quantity         integer NOT NULL CHECK (quantity > 0),
    filled_quantity  integer NOT NULL DEFAULT 0,
    limit_price      numeric(14, 4) NOT NULL,          -- working limit, signed: + pay / - receive
    time_in_force    text NOT NULL CHECK (time_in_force IN ('DAY', 'GTC')),
    good_till        timestamptz,                       -- DAY orders: the session close
    placed_at        timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    CHECK (filled_quantity BETWEEN 0 AND quantity)
);
CREATE INDEX broker_orders_account ON broker_orders (account_id, placed_at);

-- What happened to a broker order, in order: placed, limit replaced, cancelled, expired.
CREATE TABLE broker_order_events (
    id               bigserial PRIMARY KEY,
    broker_order_id  text NOT NULL REFERENCES broker_orders(broker_order_id) ON DELETE CASCADE,
    kind             text NOT NULL CHECK (kind IN ('placed', 'limit_replaced', 'cancelled', 'expired', 'fill')),
    at               timestamptz NOT NULL,
    limit_price      numeric(14, 4),
    detail           jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX broker_order_events_order ON broker_order_events (broker_order_id, id);

-- Executions. fill_id is the broker's execution id: a repeated report is a no-op.
CREATE TABLE broker_fills (
    fill_id          text PRIMARY KEY,
    broker_order_id  text NOT NULL REFERENCES broker_orders(broker_order_id),
    order_id         text NOT NULL REFERENCES orders(order_id),
    account_id       text NOT NULL REFERENCES broker_accounts(account_id),
    quantity         integer NOT NULL CHECK (quantity > 0),
    price            numeric(14, 4) NOT NULL,           -- per share per unit, signed like the limit
    leg_prices       jsonb NOT NULL,                    -- per-share unsigned leg prices (strings)
    commission       numeric(14, 4) NOT NULL CHECK (commission >= 0),
    realized_pnl     numeric(18, 4) NOT NULL DEFAULT 0, -- dollars realized by closing contracts
    filled_at        timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX broker_fills_order ON broker_fills (order_id, filled_at);
CREATE INDEX broker_fills_account_time ON broker_fills (account_id, filled_at);

-- Open contracts per leg. quantity is signed (+ long / - short); avg_price per share, >= 0.
CREATE TABLE broker_positions (
    account_id    text NOT NULL REFERENCES broker_accounts(account_id),
    ticker        text NOT NULL,
    expiry        date NOT NULL,
    strike        numeric(14, 4) NOT NULL CHECK (strike > 0),
    option_right  text NOT NULL CHECK (option_right IN ('C', 'P')),
    multiplier    integer NOT NULL CHECK (multiplier > 0),
    quantity      integer NOT NULL,
    avg_price     numeric(18, 6) NOT NULL CHECK (avg_price >= 0),
    realized_pnl  numeric(18, 4) NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (account_id, ticker, expiry, strike, option_right)
);

-- Every cash movement; the balance is the sum. Premium: + received / - paid.
CREATE TABLE broker_cash_ledger (
    id          bigserial PRIMARY KEY,
    account_id  text NOT NULL REFERENCES broker_accounts(account_id),
    at          timestamptz NOT NULL,
    amount      numeric(18, 4) NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('deposit', 'withdrawal', 'premium', 'commission', 'adjustment')),
    fill_id     text REFERENCES broker_fills(fill_id),
    note        text
);
CREATE INDEX broker_cash_ledger_account ON broker_cash_ledger (account_id, id);

-- One journal entry per fill, with the market and portfolio context it happened in.
CREATE TABLE trade_journal (
    id                bigserial PRIMARY KEY,
    fill_id           text NOT NULL UNIQUE,
    order_id          text NOT NULL REFERENCES orders(order_id),
    run_id            text NOT NULL,
    broker            text NOT NULL,
    account_id        text NOT NULL,
    broker_order_id   text NOT NULL,
    ticker            text NOT NULL,
    structure         text NOT NULL,
    strategy_tag      text NOT NULL,
    legs              jsonb NOT NULL,
    quantity          integer NOT NULL CHECK (quantity > 0),
    price             numeric(14, 4) NOT NULL,
    commission        numeric(14, 4) NOT NULL,
    filled_at         timestamptz NOT NULL,
    vix               double precision,
    regime            text,
    underlying_price  numeric(14, 4),
    spx_price         numeric(14, 4),
    pre_greeks        jsonb NOT NULL,
    post_greeks       jsonb NOT NULL,
    approver          text,
    rationale         text NOT NULL DEFAULT '',
    extra             jsonb NOT NULL DEFAULT '{}',
    recorded_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX trade_journal_filled_at ON trade_journal (filled_at DESC);
CREATE INDEX trade_journal_ticker ON trade_journal (ticker, filled_at DESC);
CREATE INDEX trade_journal_run ON trade_journal (run_id);

CREATE TABLE account_snapshots (
    id                       bigserial PRIMARY KEY,
    account_id               text NOT NULL,
    broker                   text NOT NULL,
    captured_at              timestamptz NOT NULL,
    net_liquidation          numeric(18, 4) NOT NULL,
    cash                     numeric(18, 4) NOT NULL,
    margin_used              numeric(18, 4) NOT NULL,
    delta                    double precision,   -- shares of the underlyings, summed
    gamma                    double precision,   -- shares per $1
    vega                     double precision,   -- $ per vol point
    theta                    double precision,   -- $ per calendar day
    spx_beta_weighted_delta  double precision,   -- SPX-equivalent units
    theta_vega_ratio         double precision,   -- |theta| / |vega|; NULL when vega is 0
    vix                      double precision,
    spx_price                numeric(14, 4),
    regime                   text,
    missing                  jsonb NOT NULL DEFAULT '[]',  -- what could not be valued, and why
    UNIQUE (account_id, captured_at)
);
CREATE INDEX account_snapshots_time ON account_snapshots (account_id, captured_at DESC);
