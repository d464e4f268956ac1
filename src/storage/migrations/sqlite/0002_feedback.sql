-- Ratings of images (#5). Each rating keeps its own copy of the image (feedback/<id>.<ext>), so it outlives
-- the generated images' retention limit: a fine-tune job must still find what was rated.
CREATE TABLE feedback (
    id          TEXT PRIMARY KEY NOT NULL,
    created_at  INTEGER NOT NULL,          -- Unix milliseconds
    image_id    TEXT,                      -- the generated image rated, when rated by id
    prompt      TEXT NOT NULL,
    label       TEXT NOT NULL CHECK (label IN ('good', 'bad', 'skip')),
    rater       TEXT,
    file        TEXT NOT NULL,             -- relative to the data directory
    sha256      TEXT NOT NULL
);
CREATE INDEX feedback_by_label ON feedback (label);
CREATE INDEX feedback_by_image ON feedback (image_id);
