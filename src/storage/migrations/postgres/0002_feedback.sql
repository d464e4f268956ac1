-- Postgres twin of sqlite/0002_feedback.sql.
CREATE TABLE feedback (
    id          TEXT PRIMARY KEY NOT NULL,
    created_at  BIGINT NOT NULL,           -- Unix milliseconds
    image_id    TEXT,                      -- the generated image rated, when rated by id
    prompt      TEXT NOT NULL,
    label       TEXT NOT NULL CHECK (label IN ('good', 'bad', 'skip')),
    rater       TEXT,
    file        TEXT NOT NULL,             -- relative to the data directory
    sha256      TEXT NOT NULL,
    rowid       BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE INDEX feedback_by_label ON feedback (label);
CREATE INDEX feedback_by_image ON feedback (image_id);
