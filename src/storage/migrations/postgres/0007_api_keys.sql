-- Postgres twin of sqlite/0007_api_keys.sql.
-- API keys as data (#28): each key's SHA-256 digest (never the key), its name, the tenant that owns what it
-- creates, its scopes, an optional expiry and its last use. Revoking sets `revoked_at`; rows are kept, so the
-- audit log's names stay meaningful. Every replica reloads this table every few seconds.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY NOT NULL,   -- key_ and 32 hex digits
    name          TEXT NOT NULL,
    tenant        TEXT NOT NULL,
    scopes        TEXT NOT NULL,               -- comma-separated: inference, feedback, fine-tune, admin
    digest        TEXT NOT NULL UNIQUE,        -- hex SHA-256 of the key
    prefix        TEXT NOT NULL,               -- the key's first characters, to recognise it by
    created_at    BIGINT NOT NULL,            -- Unix milliseconds
    created_by    TEXT,                        -- the key (name) that created it; NULL from the CLI
    expires_at    BIGINT,
    revoked_at    BIGINT,
    last_used_at  BIGINT,
    rowid         BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant);

-- Who did what (#28): each admin action, fine-tune and activation, with the acting key's name and tenant.
CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY NOT NULL,     -- aud_ and 32 hex digits
    at          BIGINT NOT NULL,              -- Unix milliseconds
    key_name    TEXT,                          -- NULL in open mode and from the CLI
    tenant      TEXT NOT NULL,
    action      TEXT NOT NULL,                 -- e.g. key.create, fine_tune.create, model.activate
    target      TEXT NOT NULL,                 -- the id acted on
    detail      TEXT,                          -- JSON, or NULL
    rowid       BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE INDEX audit_log_by_at ON audit_log (at);
