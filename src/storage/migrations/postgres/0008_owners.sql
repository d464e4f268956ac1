-- Postgres twin of sqlite/0008_owners.sql.
-- Owners (#28): the tenant whose key created each image, rating, job and model version. A key sees and changes
-- only its tenant's rows; admin keys see every tenant's. Rows from before keys had tenants belong to `default`,
-- the tenant of open mode and of keys that name none. A version with no tenant (a --model folder) is every
-- tenant's to use.
ALTER TABLE images ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE feedback ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE fine_tunes ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE model_versions ADD COLUMN tenant TEXT;
CREATE INDEX images_by_tenant ON images (tenant);
CREATE INDEX feedback_by_tenant ON feedback (tenant);
CREATE INDEX fine_tunes_by_tenant ON fine_tunes (tenant, status);
