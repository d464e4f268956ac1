-- Rollout of the active version across replicas (#25). `rollout` has one row: the version every replica should
-- serve and its generation, raised each time the active version changes. Each replica reports in `replicas`
-- which generation it serves, so the API can show a rollout's progress.
CREATE TABLE rollout (
    id          INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    version     TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL           -- Unix milliseconds
);
INSERT INTO rollout (id, version, generation, updated_at)
    SELECT 1, id, 1, created_at FROM model_versions WHERE kind = 'diffusion' AND active = 1;

CREATE TABLE replicas (
    id          TEXT PRIMARY KEY NOT NULL, -- host:pid:random, as in fine_tunes.worker
    roles       TEXT NOT NULL,             -- comma-separated: api, worker
    version     TEXT NOT NULL,             -- the version it serves
    generation  INTEGER NOT NULL,               -- the rollout generation it serves
    error       TEXT,                      -- why it cannot serve the rollout's version, while it cannot
    started_at  INTEGER NOT NULL,
    seen_at     INTEGER NOT NULL                -- its last report; a replica silent for long has stopped
);
