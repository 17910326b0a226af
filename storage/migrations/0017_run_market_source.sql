-- How to rebuild the market a run read (simulated with chain files, a files directory, a broker's
-- market data), so its orders are re-quoted from that market when approved. NULL: the provider
-- named in runs.provider (the simulated market) alone.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS market_source jsonb;
