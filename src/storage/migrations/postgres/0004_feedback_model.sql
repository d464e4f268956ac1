-- Postgres twin of sqlite/0004_feedback_model.sql: the version that generated a rated image.
ALTER TABLE feedback ADD COLUMN model TEXT;
UPDATE feedback SET model = (SELECT images.model FROM images WHERE images.id = feedback.image_id)
    WHERE image_id IS NOT NULL;
CREATE INDEX feedback_by_model ON feedback (model);
