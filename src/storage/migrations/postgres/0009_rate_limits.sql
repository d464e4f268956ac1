-- Postgres twin of sqlite/0009_rate_limits.sql (`rowid` stands in for SQLite's implicit one).
-- Rate limits over time (#28): one fixed one-minute window per bucket (an API key, or in open mode a client
-- address), counting requests and generation work (pixel-steps), shared by every replica on this database.
-- Windows older than a few minutes are deleted as they pass. Each key may carry its own limits per minute
-- (NULL: the server's --rate-limit-requests / --rate-limit-work; 0: none).
CREATE TABLE rate_windows (
    bucket        TEXT NOT NULL,
    window_start  BIGINT NOT NULL,        -- Unix milliseconds, a multiple of 60000
    requests      BIGINT NOT NULL,
    work          BIGINT NOT NULL,
    rowid         BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    PRIMARY KEY (bucket, window_start)
);
ALTER TABLE api_keys ADD COLUMN requests_per_minute BIGINT;
ALTER TABLE api_keys ADD COLUMN work_per_minute BIGINT;
