-- Postgres twin of sqlite/0001_images.sql: the same tables, columns and numbers, in Postgres's types
-- (BIGINT for SQLite's INTEGER, DOUBLE PRECISION for its REAL). `rowid` stands in for SQLite's implicit
-- one, so the pages' cursors read the same column on both backends.
CREATE TABLE images (
    id          TEXT PRIMARY KEY NOT NULL,
    created_at  BIGINT NOT NULL,           -- Unix milliseconds
    prompt      TEXT NOT NULL,
    seed        BIGINT NOT NULL,
    model       TEXT NOT NULL,
    reward      DOUBLE PRECISION,
    file        TEXT NOT NULL,             -- relative to the data directory
    bytes       BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    rowid       BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE INDEX images_by_age ON images (created_at, id);
