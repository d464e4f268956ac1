-- Rate limits over time (#28): one fixed one-minute window per bucket (an API key, or in open mode a client
-- address), counting requests and generation work (pixel-steps), shared by every replica on this database.
-- Windows older than a few minutes are deleted as they pass. Each key may carry its own limits per minute
-- (NULL: the server's --rate-limit-requests / --rate-limit-work; 0: none).
CREATE TABLE rate_windows (
    bucket        TEXT NOT NULL,
    window_start  INTEGER NOT NULL,        -- Unix milliseconds, a multiple of 60000
    requests      INTEGER NOT NULL,
    work          INTEGER NOT NULL,
    PRIMARY KEY (bucket, window_start)
);
ALTER TABLE api_keys ADD COLUMN requests_per_minute INTEGER;
ALTER TABLE api_keys ADD COLUMN work_per_minute INTEGER;
