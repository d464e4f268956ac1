-- Images this server generated. The PNG lives beside the database (images/<id>.png); the row says where,
-- and its SHA-256, so a damaged file is noticed when read.
CREATE TABLE images (
    id          TEXT PRIMARY KEY NOT NULL,
    created_at  INTEGER NOT NULL,          -- Unix milliseconds
    prompt      TEXT NOT NULL,
    seed        INTEGER NOT NULL,
    model       TEXT NOT NULL,
    reward      REAL,
    file        TEXT NOT NULL,             -- relative to the data directory
    bytes       INTEGER NOT NULL,
    sha256      TEXT NOT NULL
);
CREATE INDEX images_by_age ON images (created_at, id);
