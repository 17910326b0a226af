-- Shares an expiry delivered to a strategy position (a short option assigned, a long one exercised)
-- stay the position's until the book's exit sells or buys them back: its P&L is the options' and
-- the shares', and it counts as an outcome (Kelly) only once it is flat in both.
ALTER TABLE strategy_positions
    ADD COLUMN shares_open integer NOT NULL DEFAULT 0,          -- signed shares still held (+ long, - short)
    ADD COLUMN shares_cost numeric(20, 8) NOT NULL DEFAULT 0;   -- signed: shares_open x their price at delivery

-- A fill of the delivered shares: units are shares, price per share, signed like an order limit.
ALTER TABLE position_fills DROP CONSTRAINT position_fills_kind_check;
ALTER TABLE position_fills ADD CONSTRAINT position_fills_kind_check
    CHECK (kind IN ('open', 'close', 'settle', 'expire', 'shares'));
