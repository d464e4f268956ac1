-- The version that generated a rated image, so that a fine-tune job can train on the ratings of one model's
-- images (on-policy rounds). NULL for images sent with their prompt. Ratings stored before this column are
-- filled from their image where the image is still kept.
ALTER TABLE feedback ADD COLUMN model TEXT;
UPDATE feedback SET model = (SELECT images.model FROM images WHERE images.id = feedback.image_id)
    WHERE image_id IS NOT NULL;
CREATE INDEX feedback_by_model ON feedback (model);
