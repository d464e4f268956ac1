-- Postgres twin of sqlite/0005_job_leases.sql.
ALTER TABLE fine_tunes ADD COLUMN attempt BIGINT NOT NULL DEFAULT 0;
ALTER TABLE fine_tunes ADD COLUMN worker TEXT;
ALTER TABLE fine_tunes ADD COLUMN lease_expires_at BIGINT;  -- Unix milliseconds
