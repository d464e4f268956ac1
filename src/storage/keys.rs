//! API keys and the audit log, in the database (#28). A key is stored as its SHA-256 digest with its name,
//! tenant, scopes, expiry, revocation and last use; the secret itself is shown once, when it is made, and never
//! stored. `crate::http::auth` keeps each replica's copy of the table, reloaded every few seconds, so a
//! revocation reaches every replica that shares the database.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_millis, Storage};
use crate::error::{Error, Result};

/// A key as stored: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub tenant: String,
    /// Scope names, as stored (comma-separated in the row).
    pub scopes: Vec<String>,
    /// Hex SHA-256 of the key.
    pub digest: String,
    /// The key's first characters, to tell keys apart in a list.
    pub prefix: String,
    pub created_at: i64,
    pub created_by: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// Its own limits per minute (`None`: the server's; 0: none).
    pub requests_per_minute: Option<i64>,
    pub work_per_minute: Option<i64>,
}

/// A key to store.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub tenant: String,
    pub scopes: Vec<String>,
    pub digest: String,
    pub prefix: String,
    pub created_by: Option<String>,
    pub expires_at: Option<i64>,
    pub requests_per_minute: Option<i64>,
    pub work_per_minute: Option<i64>,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: String,
    pub at: i64,
    /// The acting key's name; `None` in open mode and from the CLI.
    pub key_name: Option<String>,
    pub tenant: String,
    pub action: String,
    pub target: String,
    /// JSON, when the action has details.
    pub detail: Option<String>,
}

/// An audit entry to write.
#[derive(Debug, Clone)]
pub struct NewAudit<'a> {
    pub key_name: Option<&'a str>,
    pub tenant: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub detail: Option<serde_json::Value>,
}

const KEY_COLUMNS: &str = "id, name, tenant, scopes, digest, prefix, created_at, created_by, expires_at, revoked_at, \
     last_used_at, requests_per_minute, work_per_minute";

fn key_record(row: &AnyRow) -> KeyRecord {
    let scopes: String = row.get("scopes");
    KeyRecord {
        id: row.get("id"),
        name: row.get("name"),
        tenant: row.get("tenant"),
        scopes: scopes
            .split(',')
            .filter(|scope| !scope.is_empty())
            .map(String::from)
            .collect(),
        digest: row.get("digest"),
        prefix: row.get("prefix"),
        created_at: row.get("created_at"),
        created_by: row.get("created_by"),
        expires_at: row.get("expires_at"),
        revoked_at: row.get("revoked_at"),
        last_used_at: row.get("last_used_at"),
        requests_per_minute: row.get("requests_per_minute"),
        work_per_minute: row.get("work_per_minute"),
    }
}

impl Storage {
    /// Stores a key and returns its record.
    pub async fn insert_key(&self, key: &NewKey) -> Result<KeyRecord> {
        let record = KeyRecord {
            id: format!("key_{}", uuid::Uuid::new_v4().simple()),
            name: key.name.clone(),
            tenant: key.tenant.clone(),
            scopes: key.scopes.clone(),
            digest: key.digest.clone(),
            prefix: key.prefix.clone(),
            created_at: now_millis(),
            created_by: key.created_by.clone(),
            expires_at: key.expires_at,
            revoked_at: None,
            last_used_at: None,
            requests_per_minute: key.requests_per_minute,
            work_per_minute: key.work_per_minute,
        };
        sqlx::query(&format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, $10, $11)"
        ))
        .bind(&record.id)
        .bind(&record.name)
        .bind(&record.tenant)
        .bind(record.scopes.join(","))
        .bind(&record.digest)
        .bind(&record.prefix)
        .bind(record.created_at)
        .bind(&record.created_by)
        .bind(record.expires_at)
        .bind(record.requests_per_minute)
        .bind(record.work_per_minute)
        .execute(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot store the key", err))?;
        Ok(record)
    }

    /// Every key, revoked and expired ones too, oldest first; only `tenant`'s when given.
    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>> {
        let rows = match tenant {
            Some(tenant) => {
                sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = $1 ORDER BY created_at, id"
                ))
                .bind(tenant)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"))
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(|err| self.database_error("cannot list the keys", err))?;
        Ok(rows.iter().map(key_record).collect())
    }

    /// One key by id.
    pub async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot read the key", err))?;
        Ok(row.as_ref().map(key_record))
    }

    /// Revokes a key now; returns its record, or `None` when there is no such key. Revoking a revoked key
    /// keeps its first revocation time.
    pub async fn revoke_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_millis())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot revoke the key", err))?;
        self.get_key(id).await
    }

    /// Records that keys were used, at the times given; a time older than the stored one is ignored, so
    /// replicas writing out of order never move it back.
    pub async fn touch_keys(&self, used: &[(String, i64)]) -> Result<()> {
        for (id, at) in used {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
            )
            .bind(*at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot record the keys' last use", err))?;
        }
        Ok(())
    }

    /// Writes one line of the audit log and returns its id.
    pub async fn audit(&self, entry: &NewAudit<'_>) -> Result<String> {
        let id = format!("aud_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(
            "INSERT INTO audit_log (id, at, key_name, tenant, action, target, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(now_millis())
        .bind(entry.key_name)
        .bind(entry.tenant)
        .bind(entry.action)
        .bind(entry.target)
        .bind(entry.detail.as_ref().map(|detail| detail.to_string()))
        .execute(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot write the audit log", err))?;
        Ok(id)
    }

    /// The audit log, newest first (in the order it was written): up to `limit` entries older than the entry
    /// `before` (an id; 404 when there is none), only `tenant`'s when given.
    pub async fn list_audit(&self, tenant: Option<&str>, before: Option<&str>, limit: u32) -> Result<Vec<AuditRecord>> {
        let before_rowid = match before {
            Some(id) => sqlx::query_scalar::<_, i64>("SELECT rowid FROM audit_log WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|err| self.database_error("cannot read the audit log", err))?
                .ok_or_else(|| Error::NotFound(format!("`before`: no audit entry `{id}`")))?,
            None => i64::MAX,
        };
        let query = sqlx::query(
            "SELECT id, at, key_name, tenant, action, target, detail FROM audit_log \
             WHERE rowid < $1 AND ($2 IS NULL OR tenant = $3) ORDER BY rowid DESC LIMIT $4",
        )
        .bind(before_rowid)
        .bind(tenant)
        .bind(tenant);
        let rows = query
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot read the audit log", err))?;
        Ok(rows
            .iter()
            .map(|row| AuditRecord {
                id: row.get("id"),
                at: row.get("at"),
                key_name: row.get("key_name"),
                tenant: row.get("tenant"),
                action: row.get("action"),
                target: row.get("target"),
                detail: row.get("detail"),
            })
            .collect())
    }
}

impl Storage {
    /// Adds `requests` and `work` to `bucket`'s window starting at `window_start` and returns the window's
    /// totals after the addition, in one statement, so replicas counting at once never lose a count.
    ///
    /// Every request writes here, so the write goes through the pool that does not wait for the disk
    /// (`Database::connect_unsynced`): a crashed process keeps every count, and power loss may drop the
    /// last ones, which only lets a client a few more requests within the minute.
    pub async fn count_rate(&self, bucket: &str, window_start: i64, requests: i64, work: i64) -> Result<(i64, i64)> {
        let row = sqlx::query(
            "INSERT INTO rate_windows (bucket, window_start, requests, work) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (bucket, window_start) DO UPDATE SET \
             requests = rate_windows.requests + excluded.requests, work = rate_windows.work + excluded.work \
             RETURNING requests, work",
        )
        .bind(bucket)
        .bind(window_start)
        .bind(requests)
        .bind(work)
        .fetch_one(&self.unsynced)
        .await
        .map_err(|err| self.database_error("cannot count the request against its rate limit", err))?;
        Ok((row.get("requests"), row.get("work")))
    }

    /// Deletes the rate windows that started before `before`; returns how many.
    pub async fn prune_rate_windows(&self, before: i64) -> Result<u64> {
        let deleted = sqlx::query("DELETE FROM rate_windows WHERE window_start < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot prune the rate windows", err))?;
        Ok(deleted.rows_affected())
    }
}
