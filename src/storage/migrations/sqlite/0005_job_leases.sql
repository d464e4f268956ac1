-- Leased jobs (#25): a worker claims a job by raising `attempt` and holding a lease until `lease_expires_at`,
-- which it renews by heartbeat. Every write the job makes names its attempt, so a worker whose lease was taken
-- over writes nothing. `worker` names the replica that holds (or last held) the lease.
ALTER TABLE fine_tunes ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE fine_tunes ADD COLUMN worker TEXT;
ALTER TABLE fine_tunes ADD COLUMN lease_expires_at INTEGER;  -- Unix milliseconds
