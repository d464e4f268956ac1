-- Model versions, fine-tune jobs and their events (#5).

-- Every diffusion model this server can serve, and every reward model a job trained. A folder given with
-- --model is registered as it is (source 'folder', path absolute); a fine-tune's version is copied under
-- models/<id>/ in the data directory (path relative to it) with the SHA-256 of each of its files.
CREATE TABLE model_versions (
    id          TEXT PRIMARY KEY NOT NULL,
    created_at  INTEGER NOT NULL,          -- Unix milliseconds
    kind        TEXT NOT NULL CHECK (kind IN ('diffusion', 'reward')),
    source      TEXT NOT NULL CHECK (source IN ('folder', 'fine_tune')),
    path        TEXT NOT NULL,
    parent      TEXT,                      -- the version it was fine-tuned from
    job_id      TEXT,                      -- the job that made it
    metrics     TEXT,                      -- JSON: the job's evaluation
    checksums   TEXT,                      -- JSON: {relative file path: sha256}
    active      INTEGER NOT NULL DEFAULT 0 -- at most one active diffusion version
);
CREATE INDEX model_versions_by_kind ON model_versions (kind, created_at);

CREATE TABLE fine_tunes (
    id            TEXT PRIMARY KEY NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    stage         TEXT,                    -- the running (or last) stage
    progress      REAL NOT NULL DEFAULT 0, -- 0..1 over the whole job
    base_model    TEXT NOT NULL,
    spec          TEXT NOT NULL,           -- JSON: the request, defaults filled in
    metrics       TEXT,                    -- JSON: figures so far (trainer loss, evaluation, gate)
    result_model  TEXT,                    -- the version it registered
    error         TEXT,
    started_at    INTEGER,
    finished_at   INTEGER
);
CREATE INDEX fine_tunes_by_status ON fine_tunes (status);

CREATE TABLE fine_tune_events (
    id          TEXT PRIMARY KEY NOT NULL,
    job_id      TEXT NOT NULL REFERENCES fine_tunes (id),
    created_at  INTEGER NOT NULL,
    level       TEXT NOT NULL CHECK (level IN ('info', 'warning', 'error')),
    kind        TEXT NOT NULL,             -- status, stage, progress, trainer, metrics, ...
    message     TEXT NOT NULL,
    data        TEXT                       -- JSON
);
CREATE INDEX fine_tune_events_by_job ON fine_tune_events (job_id);
