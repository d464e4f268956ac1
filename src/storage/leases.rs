//! Leased jobs (#25). A worker claims the oldest claimable job by raising its `attempt` and holding a lease
//! until `lease_expires_at`, which it renews by heartbeat. Every write the running job makes (its stage,
//! progress, figures, events, result, the version it registers and its final status) is fenced: it applies only
//! while the job is `running` with the same attempt, so a worker whose lease expired and was taken over, or
//! whose job was cancelled from another replica, writes nothing.
//!
//! On Postgres the claim locks the row with `FOR UPDATE SKIP LOCKED`, so concurrent workers take different jobs;
//! SQLite runs one write at a time, so the same single `UPDATE` claims atomically there.

use std::time::Duration;

use serde_json::Value;
use sqlx::Row;

use super::database::Backend;
use super::fine_tunes::{JobEvent, JobRecord, VersionRecord};
use super::{now_millis, Storage};
use crate::error::{Error, Result};

/// A worker's hold on one attempt at a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job_id: String,
    pub attempt: i64,
    /// The replica holding it (`host:pid:random`).
    pub worker: String,
}

impl Lease {
    /// The error of a fenced write that found the lease gone.
    pub fn lost(&self) -> Error {
        Error::LeaseLost {
            job: self.job_id.clone(),
            attempt: self.attempt,
        }
    }
}

/// The job fields a running attempt sets; `None` leaves a field as it is.
#[derive(Default)]
struct JobFields<'a> {
    stage: Option<&'a str>,
    progress: Option<f64>,
    metrics: Option<&'a Value>,
    result_model: Option<&'a str>,
}

/// A fenced write's outcome: it changed the job's row, or the lease is gone.
fn held(lease: &Lease, rows: u64) -> Result<()> {
    if rows == 1 {
        Ok(())
    } else {
        Err(lease.lost())
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Storage {
    /// Claims the oldest job that is queued, or running on an expired lease with attempts left (its worker
    /// stopped), for `worker`, for `lease`. Returns the job as claimed and the lease.
    pub async fn claim_job(
        &self,
        worker: &str,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Option<(JobRecord, Lease)>> {
        let now = now_millis();
        let lock = match self.database.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "UPDATE fine_tunes SET status = 'running', attempt = attempt + 1, worker = $1, lease_expires_at = $2, \
             updated_at = $3, started_at = COALESCE(started_at, $4) \
             WHERE id = (SELECT id FROM fine_tunes WHERE status = 'queued' \
                 OR (status = 'running' AND COALESCE(lease_expires_at, 0) < $5 AND attempt < $6) \
                 ORDER BY rowid LIMIT 1{lock}) \
             RETURNING id, attempt"
        ))
        .bind(worker)
        .bind(now.saturating_add(millis(lease)))
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(i64::from(max_attempts))
        .fetch_optional(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot claim a job", err))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let lease = Lease {
            job_id: row.get("id"),
            attempt: row.get("attempt"),
            worker: worker.to_string(),
        };
        let job = self
            .job(&lease.job_id)
            .await?
            .ok_or_else(|| Error::Internal(format!("storage: job `{}` vanished after its claim", lease.job_id)))?;
        Ok(Some((job, lease)))
    }

    /// Extends a held lease to `lease` from now; false when it is no longer held (taken over or cancelled).
    pub async fn renew_lease(&self, lease: &Lease, duration: Duration) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE fine_tunes SET lease_expires_at = $1 WHERE id = $2 AND attempt = $3 AND status = 'running'",
        )
        .bind(now_millis().saturating_add(millis(duration)))
        .bind(&lease.job_id)
        .bind(lease.attempt)
        .execute(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot renew the job's lease", err))?;
        Ok(result.rows_affected() == 1)
    }

    /// Sets the given fields of a running attempt's job (the others keep their values), fenced. Only the given
    /// fields are bound: sqlx's `Any` driver declares a NULL parameter's type on Postgres from the first
    /// statement it prepares, so one statement text must never see both a NULL and a value in a place.
    async fn set_job_fields(&self, lease: &Lease, fields: JobFields<'_>, what: &str) -> Result<()> {
        let mut sets = Vec::new();
        for (column, given) in [
            ("stage", fields.stage.is_some()),
            ("progress", fields.progress.is_some()),
            ("metrics", fields.metrics.is_some()),
            ("result_model", fields.result_model.is_some()),
        ] {
            if given {
                sets.push(format!("{column} = ${}", sets.len() + 1));
            }
        }
        let n = sets.len();
        let sql = format!(
            "UPDATE fine_tunes SET {}, updated_at = ${} WHERE id = ${} AND attempt = ${} AND status = 'running'",
            sets.join(", "),
            n + 1,
            n + 2,
            n + 3
        );
        let mut query = sqlx::query(&sql);
        if let Some(stage) = fields.stage {
            query = query.bind(stage);
        }
        if let Some(progress) = fields.progress {
            query = query.bind(progress.clamp(0.0, 1.0));
        }
        if let Some(metrics) = fields.metrics {
            query = query.bind(metrics.to_string());
        }
        if let Some(model) = fields.result_model {
            query = query.bind(model);
        }
        let result = query
            .bind(now_millis())
            .bind(&lease.job_id)
            .bind(lease.attempt)
            .execute(&self.pool)
            .await
            .map_err(|err| self.database_error(what, err))?;
        held(lease, result.rows_affected())
    }

    pub async fn set_job_stage(&self, lease: &Lease, stage: &str, progress: f64) -> Result<()> {
        let fields = JobFields {
            stage: Some(stage),
            progress: Some(progress),
            ..JobFields::default()
        };
        self.set_job_fields(lease, fields, "cannot update the job's stage")
            .await
    }

    pub async fn set_job_progress(&self, lease: &Lease, progress: f64) -> Result<()> {
        let fields = JobFields {
            progress: Some(progress),
            ..JobFields::default()
        };
        self.set_job_fields(lease, fields, "cannot update the job's progress")
            .await
    }

    pub async fn set_job_metrics(&self, lease: &Lease, metrics: &Value) -> Result<()> {
        let fields = JobFields {
            metrics: Some(metrics),
            ..JobFields::default()
        };
        self.set_job_fields(lease, fields, "cannot update the job's metrics")
            .await
    }

    pub async fn set_job_result(&self, lease: &Lease, model: &str) -> Result<()> {
        let fields = JobFields {
            result_model: Some(model),
            ..JobFields::default()
        };
        self.set_job_fields(lease, fields, "cannot record the job's model")
            .await
    }

    /// Ends the attempt with a final status (and error); false when the lease was no longer held.
    pub async fn finish_job(&self, lease: &Lease, status: super::JobStatus, error: Option<&str>) -> Result<bool> {
        let now = now_millis();
        let result = sqlx::query(
            "UPDATE fine_tunes SET status = $1, error = COALESCE($2, error), finished_at = $3, updated_at = $4, \
             lease_expires_at = NULL WHERE id = $5 AND attempt = $6 AND status = 'running'",
        )
        .bind(status.name())
        .bind(error)
        .bind(now)
        .bind(now)
        .bind(&lease.job_id)
        .bind(lease.attempt)
        .execute(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot record the job's end", err))?;
        Ok(result.rows_affected() == 1)
    }

    /// Gives a held job back to the queue (a shutdown): another worker, or this one after a restart, claims it
    /// as its next attempt. False when the lease was no longer held.
    pub async fn requeue_job(&self, lease: &Lease) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE fine_tunes SET status = 'queued', worker = NULL, lease_expires_at = NULL, updated_at = $1 \
             WHERE id = $2 AND attempt = $3 AND status = 'running'",
        )
        .bind(now_millis())
        .bind(&lease.job_id)
        .bind(lease.attempt)
        .execute(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot requeue the job", err))?;
        Ok(result.rows_affected() == 1)
    }

    /// Records an event of a running attempt; refused (`LeaseLost`) when the lease is no longer held.
    pub async fn insert_job_event(
        &self,
        lease: &Lease,
        level: &str,
        kind: &str,
        message: &str,
        data: Option<&Value>,
    ) -> Result<JobEvent> {
        self.insert_event_if(&lease.job_id, lease.attempt, level, kind, message, data)
            .await?
            .ok_or_else(|| lease.lost())
    }

    /// Inserts a version row while the lease is held, in one transaction: the row is committed only if the
    /// attempt still holds the job (the job's row stays locked until the commit).
    pub async fn insert_version_fenced(&self, lease: &Lease, version: &VersionRecord) -> Result<()> {
        let mut transaction = self
            .pool
            .begin()
            .await
            .map_err(|err| self.database_error("cannot start a transaction", err))?;
        let held =
            sqlx::query("UPDATE fine_tunes SET updated_at = $1 WHERE id = $2 AND attempt = $3 AND status = 'running'")
                .bind(now_millis())
                .bind(&lease.job_id)
                .bind(lease.attempt)
                .execute(&mut *transaction)
                .await
                .map_err(|err| self.database_error("cannot check the job's lease", err))?;
        if held.rows_affected() != 1 {
            let _ = transaction.rollback().await;
            return Err(lease.lost());
        }
        super::fine_tunes::insert_version_query(version)
            .execute(&mut *transaction)
            .await
            .map_err(|err| self.database_error("cannot record the model version", err))?;
        transaction
            .commit()
            .await
            .map_err(|err| self.database_error("cannot commit the model version", err))
    }

    /// Fails the jobs whose worker stopped (their lease expired) on their last allowed attempt, with an event;
    /// returns their ids. Jobs with attempts left are claimed again instead (`claim_job`).
    pub async fn fail_expired_jobs(&self, max_attempts: u32) -> Result<Vec<String>> {
        let now = now_millis();
        let rows = sqlx::query(
            "SELECT id, attempt, worker FROM fine_tunes \
             WHERE status = 'running' AND COALESCE(lease_expires_at, 0) < $1 AND attempt >= $2",
        )
        .bind(now)
        .bind(i64::from(max_attempts))
        .fetch_all(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot list expired jobs", err))?;
        let mut failed = Vec::new();
        for row in rows {
            let lease = Lease {
                job_id: row.get("id"),
                attempt: row.get("attempt"),
                worker: row.get::<Option<String>, _>("worker").unwrap_or_default(),
            };
            let message = format!(
                "interrupted: the replica running attempt {} of {max_attempts} ({}) stopped, and its lease expired",
                lease.attempt, lease.worker
            );
            // Fenced on the expiry as well, so a worker that renewed in between keeps its job.
            let result = sqlx::query(
                "UPDATE fine_tunes SET status = 'failed', error = $1, finished_at = $2, updated_at = $3, \
                 lease_expires_at = NULL \
                 WHERE id = $4 AND attempt = $5 AND status = 'running' AND COALESCE(lease_expires_at, 0) < $6",
            )
            .bind(&message)
            .bind(now)
            .bind(now)
            .bind(&lease.job_id)
            .bind(lease.attempt)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot fail an expired job", err))?;
            if result.rows_affected() == 1 {
                self.insert_event(&lease.job_id, "error", "status", &format!("failed ({message})"), None)
                    .await?;
                failed.push(lease.job_id);
            }
        }
        Ok(failed)
    }
}
