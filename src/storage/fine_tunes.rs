//! Fine-tune jobs, their events and model versions in the database (#5). The job runner (`crate::jobs`) and
//! the registry (`crate::registry`) own the logic; this file only reads and writes rows.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_millis, Storage};
use crate::error::{Error, Result};

/// Where a job is in its life. Only `queued` and `running` can still change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const NAMES: &'static str = "queued, running, succeeded, failed, cancelled";

    pub fn name(&self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ]
        .into_iter()
        .find(|status| status.name() == name)
    }

    pub fn is_final(&self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub status: JobStatus,
    pub stage: Option<String>,
    pub progress: f64,
    pub base_model: String,
    pub spec: Value,
    pub metrics: Option<Value>,
    pub result_model: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// How many times a worker claimed it (#25); the running attempt's number.
    pub attempt: i64,
    /// The replica that holds (or last held) its lease.
    pub worker: Option<String>,
    /// When the running attempt's lease ends unless renewed (Unix milliseconds).
    pub lease_expires_at: Option<i64>,
    /// The tenant whose key created it (#28): it trains on that tenant's ratings, and its version is theirs.
    pub tenant: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub id: String,
    pub job_id: String,
    pub created_at: i64,
    pub level: String,
    pub kind: String,
    pub message: String,
    pub data: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionKind {
    Diffusion,
    Reward,
}

impl VersionKind {
    pub fn name(&self) -> &'static str {
        match self {
            VersionKind::Diffusion => "diffusion",
            VersionKind::Reward => "reward",
        }
    }
}

/// A registered model version.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRecord {
    pub id: String,
    pub created_at: i64,
    pub kind: String,
    /// `folder` (a --model folder, served where it is) or `fine_tune` (copied into the data directory).
    pub source: String,
    /// Absolute for `folder`; relative to the data directory for `fine_tune`.
    pub path: String,
    pub parent: Option<String>,
    pub job_id: Option<String>,
    pub metrics: Option<Value>,
    pub checksums: Option<Value>,
    pub active: bool,
    /// The tenant whose job made it; `None` (every tenant's) for --model folders.
    pub tenant: Option<String>,
}

impl VersionRecord {
    /// Whether a caller who sees `tenant`'s records (`None`: every tenant's) may see and use this version.
    pub fn visible_to(&self, tenant: Option<&str>) -> bool {
        match (tenant, self.tenant.as_deref()) {
            (None, _) | (_, None) => true,
            (Some(caller), Some(owner)) => caller == owner,
        }
    }
}

fn json_column(row: &AnyRow, name: &str) -> Option<Value> {
    row.get::<Option<String>, _>(name)
        .and_then(|text| serde_json::from_str(&text).ok())
}

fn job_from_row(row: &AnyRow) -> Result<JobRecord> {
    let status: String = row.get("status");
    Ok(JobRecord {
        id: row.get("id"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        status: JobStatus::from_name(&status)
            .ok_or_else(|| Error::Internal(format!("storage: a job has the unknown status `{status}`")))?,
        stage: row.get("stage"),
        progress: row.get("progress"),
        base_model: row.get("base_model"),
        spec: json_column(row, "spec").unwrap_or(Value::Null),
        metrics: json_column(row, "metrics"),
        result_model: row.get("result_model"),
        error: row.get("error"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        attempt: row.get("attempt"),
        worker: row.get("worker"),
        lease_expires_at: row.get("lease_expires_at"),
        tenant: row.get("tenant"),
    })
}

fn version_from_row(row: &AnyRow) -> VersionRecord {
    VersionRecord {
        id: row.get("id"),
        created_at: row.get("created_at"),
        kind: row.get("kind"),
        source: row.get("source"),
        path: row.get("path"),
        parent: row.get("parent"),
        job_id: row.get("job_id"),
        metrics: json_column(row, "metrics"),
        checksums: json_column(row, "checksums"),
        active: row.get::<i64, _>("active") != 0,
        tenant: row.get("tenant"),
    }
}

const JOB_COLUMNS: &str = "id, created_at, updated_at, status, stage, progress, base_model, spec, metrics, \
     result_model, error, started_at, finished_at, attempt, worker, lease_expires_at, tenant";
const VERSION_COLUMNS: &str = "id, created_at, kind, source, path, parent, job_id, metrics, checksums, active, tenant";

/// `insert_event_if`'s attempt for an event of the job whatever runs it.
const ANY_ATTEMPT: i64 = -1;

/// The insert of a version's row, to run on the pool or in a transaction.
pub(super) fn insert_version_query(
    version: &VersionRecord,
) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(
        "INSERT INTO model_versions \
         (id, created_at, kind, source, path, parent, job_id, metrics, checksums, active, tenant) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10)",
    )
    .bind(&version.id)
    .bind(version.created_at)
    .bind(&version.kind)
    .bind(&version.source)
    .bind(&version.path)
    .bind(&version.parent)
    .bind(&version.job_id)
    .bind(version.metrics.as_ref().map(Value::to_string))
    .bind(version.checksums.as_ref().map(Value::to_string))
    .bind(&version.tenant)
}

impl Storage {
    /// Records a new queued job of `tenant`.
    pub async fn insert_job(&self, id: &str, base_model: &str, spec: &Value, tenant: &str) -> Result<JobRecord> {
        let now = now_millis();
        sqlx::query(
            "INSERT INTO fine_tunes (id, created_at, updated_at, status, progress, base_model, spec, tenant) \
             VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6)",
        )
        .bind(id)
        .bind(now)
        .bind(now)
        .bind(base_model)
        .bind(spec.to_string())
        .bind(tenant)
        .execute(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot record the job", err))?;
        self.job(id)
            .await?
            .ok_or_else(|| Error::Internal(format!("storage: job `{id}` vanished after its insert")))
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM fine_tunes WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot read the job", err))?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// A page of jobs, newest first, after the job `after`; and whether more follow. Only `tenant`'s jobs when
    /// given (`after` then names one of them).
    pub async fn list_jobs(
        &self,
        tenant: Option<&str>,
        status: Option<JobStatus>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<JobRecord>, bool)> {
        let before_rowid = match after {
            Some(_) => self.cursor("fine_tunes", after, "a fine-tune job's", tenant).await?,
            None => i64::MAX,
        };
        let limit = i64::from(limit.max(1));
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM fine_tunes WHERE rowid < $1 AND ($2 IS NULL OR status = $3) \
             AND ($4 IS NULL OR tenant = $5) ORDER BY rowid DESC LIMIT $6"
        ))
        .bind(before_rowid)
        .bind(status.map(|status| status.name()))
        .bind(status.map(|status| status.name()))
        .bind(tenant)
        .bind(tenant)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot list jobs", err))?;
        let has_more = rows.len() as i64 > limit;
        let jobs = rows
            .iter()
            .take(limit as usize)
            .map(job_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok((jobs, has_more))
    }

    /// A tenant's use of jobs at `now`: how many are queued or running; the milliseconds its jobs ran within
    /// the last `window_ms` (running ones up to now); and how long until the oldest of that time leaves the
    /// window.
    pub async fn tenant_job_use(&self, tenant: &str, now: i64, window_ms: i64) -> Result<(u64, i64, i64)> {
        let since = now - window_ms;
        let rows = sqlx::query(
            "SELECT status, started_at, finished_at FROM fine_tunes WHERE tenant = $1 \
             AND (status IN ('queued', 'running') OR finished_at > $2)",
        )
        .bind(tenant)
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot read the tenant's jobs", err))?;
        let (mut active, mut used, mut oldest) = (0u64, 0i64, i64::MAX);
        for row in &rows {
            let status: String = row.get("status");
            if status == "queued" || status == "running" {
                active += 1;
            }
            let Some(started) = row.get::<Option<i64>, _>("started_at") else {
                continue;
            };
            let ended = row.get::<Option<i64>, _>("finished_at").unwrap_or(now).min(now);
            let from = started.max(since);
            if ended > from {
                used += ended - from;
                oldest = oldest.min(from);
            }
        }
        let frees_in = if oldest == i64::MAX {
            0
        } else {
            oldest + window_ms - now
        };
        Ok((active, used, frees_in))
    }

    /// How many jobs have each status.
    pub async fn job_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS count FROM fine_tunes GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot count jobs", err))?;
        Ok(rows.iter().map(|row| (row.get("status"), row.get("count"))).collect())
    }

    /// Moves a job to `status` if it is still queued or running; returns whether it moved. A final status
    /// records the error (if any) and the finish time.
    pub async fn set_job_status(&self, id: &str, status: JobStatus, error: Option<&str>) -> Result<bool> {
        let now = now_millis();
        let result = sqlx::query(
            "UPDATE fine_tunes SET status = $1, updated_at = $2, error = COALESCE($3, error), \
             started_at = CASE WHEN $4 = 'running' THEN $5 ELSE started_at END, \
             finished_at = CASE WHEN $6 IN ('succeeded', 'failed', 'cancelled') THEN $7 ELSE finished_at END \
             WHERE id = $8 AND status IN ('queued', 'running')",
        )
        .bind(status.name())
        .bind(now)
        .bind(error)
        .bind(status.name())
        .bind(now)
        .bind(status.name())
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot update the job", err))?;
        Ok(result.rows_affected() == 1)
    }

    /// Records an event of a job that is not running here (queued, cancelled, failed by another worker); a
    /// running attempt records its own through `insert_job_event`, fenced by its lease.
    pub async fn insert_event(
        &self,
        job_id: &str,
        level: &str,
        kind: &str,
        message: &str,
        data: Option<&Value>,
    ) -> Result<JobEvent> {
        self.insert_event_if(job_id, ANY_ATTEMPT, level, kind, message, data)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no fine-tune job `{job_id}`")))
    }

    /// Records an event of the job, if it exists and (unless `attempt` is `ANY_ATTEMPT`) that attempt is
    /// running; None otherwise.
    pub(super) async fn insert_event_if(
        &self,
        job_id: &str,
        attempt: i64,
        level: &str,
        kind: &str,
        message: &str,
        data: Option<&Value>,
    ) -> Result<Option<JobEvent>> {
        let event = JobEvent {
            id: format!("ftevent_{}", uuid::Uuid::new_v4().simple()),
            job_id: job_id.to_string(),
            created_at: now_millis(),
            level: level.to_string(),
            kind: kind.to_string(),
            message: message.to_string(),
            data: data.cloned(),
        };
        let result = sqlx::query(
            "INSERT INTO fine_tune_events (id, job_id, created_at, level, kind, message, data) \
             SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM fine_tunes \
             WHERE id = $8 AND ($9 < 0 OR (attempt = $10 AND status = 'running')))",
        )
        .bind(&event.id)
        .bind(&event.job_id)
        .bind(event.created_at)
        .bind(&event.level)
        .bind(&event.kind)
        .bind(&event.message)
        .bind(data.map(Value::to_string))
        .bind(job_id)
        .bind(attempt)
        .bind(attempt)
        .execute(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot record the job's event", err))?;
        Ok((result.rows_affected() == 1).then_some(event))
    }

    /// A page of a job's events, oldest first, after the event `after`.
    pub async fn list_events(&self, job_id: &str, after: Option<&str>, limit: u32) -> Result<(Vec<JobEvent>, bool)> {
        let after_rowid = self.cursor("fine_tune_events", after, "an event's", None).await?;
        let limit = i64::from(limit.max(1));
        let rows = sqlx::query(
            "SELECT id, job_id, created_at, level, kind, message, data FROM fine_tune_events \
             WHERE job_id = $1 AND rowid > $2 ORDER BY rowid LIMIT $3",
        )
        .bind(job_id)
        .bind(after_rowid)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot list the job's events", err))?;
        let has_more = rows.len() as i64 > limit;
        let events = rows
            .iter()
            .take(limit as usize)
            .map(|row| JobEvent {
                id: row.get("id"),
                job_id: row.get("job_id"),
                created_at: row.get("created_at"),
                level: row.get("level"),
                kind: row.get("kind"),
                message: row.get("message"),
                data: json_column(row, "data"),
            })
            .collect();
        Ok((events, has_more))
    }

    /// Records (or refreshes the path of) a version served from a folder as it is.
    pub async fn upsert_folder_version(&self, id: &str, kind: VersionKind, path: &str) -> Result<VersionRecord> {
        sqlx::query(
            "INSERT INTO model_versions (id, created_at, kind, source, path) VALUES ($1, $2, $3, 'folder', $4) \
             ON CONFLICT (id) DO UPDATE SET path = excluded.path WHERE model_versions.source = 'folder'",
        )
        .bind(id)
        .bind(now_millis())
        .bind(kind.name())
        .bind(path)
        .execute(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot record the model version", err))?;
        self.version(id)
            .await?
            .ok_or_else(|| Error::Internal(format!("storage: version `{id}` vanished after its insert")))
    }

    /// Records a fine-tuned version; its files are in place already. A job's registration goes through
    /// `insert_version_fenced` instead.
    pub async fn insert_version(&self, version: &VersionRecord) -> Result<()> {
        insert_version_query(version)
            .execute(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot record the model version", err))?;
        Ok(())
    }

    pub async fn version(&self, id: &str) -> Result<Option<VersionRecord>> {
        let row = sqlx::query(&format!("SELECT {VERSION_COLUMNS} FROM model_versions WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|err| self.database_error("cannot read the model version", err))?;
        Ok(row.as_ref().map(version_from_row))
    }

    /// Every version of a kind, oldest first.
    pub async fn versions(&self, kind: VersionKind) -> Result<Vec<VersionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM model_versions WHERE kind = $1 ORDER BY created_at, rowid"
        ))
        .bind(kind.name())
        .fetch_all(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot list model versions", err))?;
        Ok(rows.iter().map(version_from_row).collect())
    }

    /// Every version, diffusion and reward, oldest first.
    pub async fn versions_of_all_kinds(&self) -> Result<Vec<VersionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM model_versions ORDER BY created_at, rowid"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|err| self.database_error("cannot list model versions", err))?;
        Ok(rows.iter().map(version_from_row).collect())
    }
}
