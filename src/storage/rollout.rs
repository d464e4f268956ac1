//! The active version's rollout across replicas (#25), in the database. Activating a version updates the
//! `active` flag and the `rollout` row (version, generation) in one transaction; on Postgres the same
//! transaction sends `NOTIFY t2i_rollout` with the generation, delivered to listeners when it commits. Each
//! replica reports which generation it serves in `replicas`. The reconcile loop that acts on this is
//! `crate::serving::rollout`.

use sqlx::Row;

use super::database::Backend;
use super::{now_millis, Storage};
use crate::error::{Error, Result};

/// The Postgres channel a rollout is announced on.
pub const ROLLOUT_CHANNEL: &str = "t2i_rollout";

/// The version every replica should serve, and its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutState {
    pub version: String,
    pub generation: i64,
    pub updated_at: i64,
}

/// What a replica last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    pub id: String,
    pub roles: String,
    pub version: String,
    pub generation: i64,
    pub error: Option<String>,
    pub started_at: i64,
    pub seen_at: i64,
}

impl Storage {
    /// Makes `id` the one active diffusion version and the rollout's target, in one transaction; returns the
    /// rollout's generation, raised only when the version changes. On Postgres the commit also notifies the
    /// replicas listening on `ROLLOUT_CHANNEL`.
    pub async fn set_active_version(&self, id: &str) -> Result<i64> {
        let mut transaction = self
            .pool
            .begin()
            .await
            .map_err(|err| self.database_error("cannot start a transaction", err))?;
        sqlx::query("UPDATE model_versions SET active = 0 WHERE kind = 'diffusion' AND active = 1")
            .execute(&mut *transaction)
            .await
            .map_err(|err| self.database_error("cannot deactivate the version", err))?;
        let updated = sqlx::query("UPDATE model_versions SET active = 1 WHERE id = $1 AND kind = 'diffusion'")
            .bind(id)
            .execute(&mut *transaction)
            .await
            .map_err(|err| self.database_error("cannot activate the version", err))?;
        if updated.rows_affected() != 1 {
            return Err(Error::NotFound(format!("no diffusion model version `{id}`")));
        }
        let generation: i64 = sqlx::query(
            "INSERT INTO rollout (id, version, generation, updated_at) VALUES (1, $1, 1, $2) \
             ON CONFLICT (id) DO UPDATE SET \
             generation = CASE WHEN rollout.version = excluded.version THEN rollout.generation \
                 ELSE rollout.generation + 1 END, \
             updated_at = CASE WHEN rollout.version = excluded.version THEN rollout.updated_at \
                 ELSE excluded.updated_at END, \
             version = excluded.version \
             RETURNING generation",
        )
        .bind(id)
        .bind(now_millis())
        .fetch_one(&mut *transaction)
        .await
        .map_err(|err| self.database_error("cannot record the rollout", err))?
        .get("generation");
        if self.database.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(ROLLOUT_CHANNEL)
                .bind(generation.to_string())
                .execute(&mut *transaction)
                .await
                .map_err(|err| self.database_error("cannot announce the rollout", err))?;
        }
        transaction
            .commit()
            .await
            .map_err(|err| self.database_error("cannot commit the activation", err))?;
        Ok(generation)
    }

    /// The version every replica should serve, once one was activated.
    pub async fn rollout(&self) -> Result<Option<RolloutState>> {
        let row = sqlx::query("SELECT version, generation, updated_at FROM rollout WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot read the rollout", err))?;
        Ok(row.map(|row| RolloutState {
            version: row.get("version"),
            generation: row.get("generation"),
            updated_at: row.get("updated_at"),
        }))
    }

    /// Records what a replica serves now (and why it cannot serve the rollout's version, if it cannot).
    pub async fn report_replica(&self, replica: &ReplicaRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO replicas (id, roles, version, generation, error, started_at, seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, generation = excluded.generation, \
             error = excluded.error, seen_at = excluded.seen_at",
        )
        .bind(&replica.id)
        .bind(&replica.roles)
        .bind(&replica.version)
        .bind(replica.generation)
        .bind(replica.error.as_deref().unwrap_or(""))
        .bind(replica.started_at)
        .bind(replica.seen_at)
        .execute(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot report the replica", err))?;
        Ok(())
    }

    /// The replicas that reported since `since` (Unix milliseconds), in the order they started; older ones
    /// are removed.
    pub async fn replicas(&self, since: i64) -> Result<Vec<ReplicaRecord>> {
        sqlx::query("DELETE FROM replicas WHERE seen_at < $1")
            .bind(since)
            .execute(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot forget stopped replicas", err))?;
        let rows = sqlx::query(
            "SELECT id, roles, version, generation, error, started_at, seen_at FROM replicas \
             ORDER BY started_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot list the replicas", err))?;
        Ok(rows
            .iter()
            .map(|row| ReplicaRecord {
                id: row.get("id"),
                roles: row.get("roles"),
                version: row.get("version"),
                generation: row.get("generation"),
                error: row.get::<Option<String>, _>("error").filter(|error| !error.is_empty()),
                started_at: row.get("started_at"),
                seen_at: row.get("seen_at"),
            })
            .collect())
    }

    /// A replica that stops removes its report.
    pub async fn forget_replica(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot remove the replica's report", err))?;
        Ok(())
    }

    /// The Postgres URL to listen for rollouts on, when the database is Postgres.
    pub fn postgres_url(&self) -> Option<&str> {
        match &self.database {
            super::Database::Postgres(url) => Some(url),
            super::Database::Sqlite(_) => None,
        }
    }
}
