-- What a backtest day did beyond its orders, kept in the index so a resumed or reused backtest
-- reports earlier days exactly as the process that ran them saw them (exits staged, expiries
-- settled, whether the day's chains were modelled rather than recorded).
ALTER TABLE backtest_days ADD COLUMN exits_staged integer NOT NULL DEFAULT 0,
                          ADD COLUMN settled integer NOT NULL DEFAULT 0,
                          ADD COLUMN modelled_chains boolean NOT NULL DEFAULT false;
