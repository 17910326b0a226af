-- The book: strategy positions built from broker fills, their marks, expiries, share holdings,
-- and the link from a closing order to the position it closes. Money is numeric (exact); prices
-- are per share per unit, signed like order limits (+ paid / - received).

-- One strategy position per opening order: the structure as one unit.
CREATE TABLE strategy_positions (
    position_id            text PRIMARY KEY,
    order_id               text NOT NULL UNIQUE REFERENCES orders(order_id),
    run_id                 text NOT NULL,
    account_id             text NOT NULL,
    ticker                 text NOT NULL,
    sector                 text NOT NULL,
    structure              text NOT NULL,
    legs                   jsonb NOT NULL,              -- per-unit legs, each with its open "cost" (sum of leg price x units)
    multiplier             integer NOT NULL CHECK (multiplier > 0),
    units_opened           integer NOT NULL CHECK (units_opened > 0),
    units_open             integer NOT NULL CHECK (units_open >= 0 AND units_open <= units_opened),
    entry_cost             numeric(20, 8) NOT NULL,     -- signed combo price x units still open (per share)
    entry_price            numeric(18, 8) NOT NULL,     -- average signed entry price per share per unit
    max_profit             numeric(18, 4),              -- dollars per unit
    max_loss               numeric(18, 4),              -- dollars per unit, positive
    probability_of_profit  double precision,
    thesis                 text NOT NULL DEFAULT '',
    opened_at              timestamptz NOT NULL,
    closed_at              timestamptz,
    status                 text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed', 'settled', 'assigned')),
    realized_pnl           numeric(18, 4) NOT NULL DEFAULT 0,  -- dollars, net of every commission
    commissions            numeric(18, 4) NOT NULL DEFAULT 0
);
CREATE INDEX strategy_positions_open ON strategy_positions (account_id, status, ticker);

-- Every event that changed a position: broker fills (open/close) and expiries (settle/exercise/assign).
-- fill_id is the broker's fill id (or "expiry:<position>"): booking twice is a no-op.
CREATE TABLE position_fills (
    fill_id       text PRIMARY KEY,
    position_id   text NOT NULL REFERENCES strategy_positions(position_id),
    order_id      text REFERENCES orders(order_id),
    kind          text NOT NULL CHECK (kind IN ('open', 'close', 'settle', 'expire')),
    units         integer NOT NULL CHECK (units > 0),
    price         numeric(14, 6) NOT NULL,      -- signed per share per unit (a settlement: minus the unit's value)
    commission    numeric(14, 4) NOT NULL DEFAULT 0,
    gross_pnl     numeric(18, 4) NOT NULL DEFAULT 0,  -- dollars realized before commission
    realized_pnl  numeric(18, 4) NOT NULL DEFAULT 0,  -- gross_pnl - commission
    at            timestamptz NOT NULL,
    booked_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX position_fills_time ON position_fills (at);
CREATE INDEX position_fills_position ON position_fills (position_id, at);

-- A mark of each open position at a slot. mark is per share per unit, signed like the entry.
CREATE TABLE position_marks (
    position_id       text NOT NULL REFERENCES strategy_positions(position_id),
    marked_at         timestamptz NOT NULL,
    units             integer NOT NULL,
    mark              numeric(14, 6) NOT NULL,
    value             numeric(18, 4) NOT NULL,     -- mark x units x multiplier
    unrealized_pnl    numeric(18, 4) NOT NULL,     -- (mark - entry) x units x multiplier
    underlying_price  numeric(14, 4),
    delta             double precision,            -- whole position, see brokers.portfolio
    gamma             double precision,
    vega              double precision,
    theta             double precision,
    missing           jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (position_id, marked_at)
);

-- A closing order points at the position it closes and the rule that triggered it.
ALTER TABLE orders ADD COLUMN closes_position_id text REFERENCES strategy_positions(position_id),
                   ADD COLUMN exit_rule text;
CREATE INDEX orders_closes_position ON orders (closes_position_id) WHERE closes_position_id IS NOT NULL;

-- Shares from exercised or assigned equity options (the broker's books).
CREATE TABLE broker_share_positions (
    account_id    text NOT NULL REFERENCES broker_accounts(account_id),
    ticker        text NOT NULL,
    quantity      integer NOT NULL,
    avg_price     numeric(18, 6) NOT NULL CHECK (avg_price >= 0),
    realized_pnl  numeric(18, 4) NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (account_id, ticker)
);

-- Option contracts the broker removed at expiry, once each (the primary key makes settling idempotent).
CREATE TABLE broker_expiries (
    account_id        text NOT NULL REFERENCES broker_accounts(account_id),
    ticker            text NOT NULL,
    expiry            date NOT NULL,
    strike            numeric(14, 4) NOT NULL,
    option_right      text NOT NULL CHECK (option_right IN ('C', 'P')),
    quantity          integer NOT NULL,
    avg_price         numeric(18, 6) NOT NULL,
    settlement_price  numeric(14, 4) NOT NULL,    -- the underlying's settlement/closing price
    intrinsic         numeric(14, 4) NOT NULL,    -- per share
    outcome           text NOT NULL CHECK (outcome IN ('cash_settled', 'exercised', 'assigned', 'expired_worthless')),
    realized_pnl      numeric(18, 4) NOT NULL,    -- dollars: (intrinsic - avg) x quantity x multiplier
    at                timestamptz NOT NULL,
    PRIMARY KEY (account_id, ticker, expiry, strike, option_right)
);

ALTER TABLE broker_cash_ledger DROP CONSTRAINT broker_cash_ledger_kind_check;
ALTER TABLE broker_cash_ledger ADD CONSTRAINT broker_cash_ledger_kind_check
    CHECK (kind IN ('deposit', 'withdrawal', 'premium', 'commission', 'adjustment', 'settlement', 'exercise',
                    'assignment'));

ALTER TABLE account_snapshots ADD COLUMN realized_pnl numeric(18, 4),     -- since the account opened
                              ADD COLUMN daily_pnl numeric(18, 4),        -- NLV change since the daily reset
                              ADD COLUMN unrealized_pnl numeric(18, 4),   -- of the open positions
                              ADD COLUMN shares_value numeric(18, 4);
