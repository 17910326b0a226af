-- Real social sources. Items read from Reddit (text kept so later runs can show the stories of the
-- last days) and which watchlist tickers each mentions: daily mention counts, and so the 7-day
-- baseline, are computed from these rows and survive restarts.
CREATE TABLE social_items (
    source      text NOT NULL,             -- 'reddit'
    item_id     text NOT NULL,             -- the source's id (Reddit fullname t3_/t1_)
    scope       text NOT NULL,             -- subreddit
    created_at  timestamptz NOT NULL,
    text        text NOT NULL,
    url         text,
    fetched_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, item_id)
);
CREATE INDEX social_items_scope_time ON social_items (source, scope, created_at DESC);

CREATE TABLE social_mentions (
    source      text NOT NULL,
    item_id     text NOT NULL,
    ticker      text NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (source, item_id, ticker),
    FOREIGN KEY (source, item_id) REFERENCES social_items (source, item_id) ON DELETE CASCADE
);
CREATE INDEX social_mentions_ticker_time ON social_mentions (source, ticker, created_at);

-- Google Trends answers, cached: a series younger than the configured age is reused.
CREATE TABLE trends_cache (
    keyword     text NOT NULL,
    geo         text NOT NULL,
    end_date    date NOT NULL,
    days        date[] NOT NULL,
    interest    double precision[] NOT NULL,  -- NaN where Google gave no complete day
    fetched_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (keyword, geo, end_date)
);
