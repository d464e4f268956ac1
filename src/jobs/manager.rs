//! The job queue and its worker: jobs persist in the database, and each replica with the worker role claims
//! them one at a time, oldest first, holding a lease it renews by heartbeat (#25; `storage::leases`).
//! Creating validates a request into a `JobSpec`; cancelling stops a queued job at once and a running one at
//! its next step (its children's process group is killed), on whichever replica runs it. A lost lease stops
//! the attempt the same way, and it writes nothing more. A shutdown gives the running job back to the queue
//! for its next attempt, or fails it on its last.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::error::{Error, Result};
use crate::jobs::context::{JobContext, JobServices};
use crate::jobs::metrics::JobMetrics;
use crate::jobs::spec::{FineTuneRequest, JobLimits, JobSpec};
use crate::jobs::{JobConfig, JOBS_DIR};
use crate::metrics::Metrics;
use crate::reward::RewardSet;
use crate::serving::ModelPool;
use crate::storage::{JobRecord, JobStatus, Lease, Storage};

/// The error and event of a job stopped by a server shutdown.
const INTERRUPTED_BY_SHUTDOWN: &str = "interrupted: the server shut down (SIGTERM) while the job ran";

struct RunningJob {
    id: String,
    cancel: Arc<watch::Sender<bool>>,
}

/// This replica's name in the job records: host, process id and a random suffix (a restarted process is a new
/// worker).
fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &suffix[..6])
}

/// The job queue and its runner: one job at a time, on a tokio task.
pub struct JobManager {
    services: JobServices,
    jobs_dir: PathBuf,
    wake: Notify,
    running: Mutex<Option<RunningJob>>,
    /// Set on SIGTERM: no job starts, and the running one is stopped and given back to the queue.
    shutting_down: std::sync::atomic::AtomicBool,
    /// This replica's name on the leases it holds.
    worker: String,
}

/// Whether `program` names a file: a path as given, or a bare name found on `PATH` as a child process would.
fn program_exists(program: &Path) -> bool {
    if program.components().count() > 1 {
        return program.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|folder| folder.join(program).is_file()))
}

impl JobManager {
    pub fn new(
        storage: Arc<Storage>,
        pool: Arc<ModelPool>,
        rewards: Arc<RewardSet>,
        metrics: Arc<Metrics>,
        config: JobConfig,
        data_dir: &Path,
    ) -> Result<Arc<Self>> {
        let jobs_dir = data_dir.join(JOBS_DIR);
        std::fs::create_dir_all(&jobs_dir)
            .map_err(|err| Error::Config(format!("cannot create {}: {err}", jobs_dir.display())))?;
        // No job runs yet: a candidate left in a job folder is from a job that was interrupted.
        for entry in std::fs::read_dir(&jobs_dir).into_iter().flatten().flatten() {
            for leftover in ["candidate", "candidate.partial"] {
                let path = entry.path().join(leftover);
                if path.is_dir() {
                    tracing::warn!(folder = %path.display(), "removing an interrupted job's candidate");
                    let _ = std::fs::remove_dir_all(path);
                }
            }
        }
        Ok(Arc::new(JobManager {
            services: JobServices {
                storage,
                pool,
                rewards,
                metrics,
                config,
                kept_pretrain: Default::default(),
            },
            jobs_dir,
            wake: Notify::new(),
            running: Mutex::new(None),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            worker: worker_name(),
        }))
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.services.storage
    }

    /// This replica's worker name, as job records show it.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Starts the worker: it claims jobs oldest first, one at a time, until the process exits. It polls the
    /// queue (a job created on another replica, or a lease that expired) every half lease, at most every 5 s.
    pub fn start(self: &Arc<Self>) {
        if let Some(reason) = self.unavailable() {
            tracing::warn!("{reason}");
        }
        let manager = self.clone();
        let config = &self.services.config;
        let (lease, max_attempts) = (config.lease, config.max_attempts);
        let poll = (lease / 2).min(Duration::from_secs(5));
        tracing::info!(worker = %self.worker, lease_s = lease.as_secs(), max_attempts, "the job worker started");
        tokio::spawn(async move {
            manager.refresh_job_metrics().await;
            loop {
                let notified = manager.wake.notified();
                if manager.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                match manager.services.storage.fail_expired_jobs(max_attempts).await {
                    Ok(failed) if !failed.is_empty() => {
                        for job in failed {
                            tracing::warn!(job = %job, "failed: its worker stopped on its last attempt");
                            crate::jobs::trainer::remove_checkpoint(&manager.services.storage, &job).await;
                        }
                        manager.refresh_job_metrics().await;
                    }
                    Ok(_) => {}
                    Err(err) => tracing::error!(error = %err, "the job worker cannot check expired leases"),
                }
                match manager
                    .services
                    .storage
                    .claim_job(&manager.worker, lease, max_attempts)
                    .await
                {
                    Ok(Some((job, lease))) => manager.run(job, lease).await,
                    Ok(None) => {
                        let _ = tokio::time::timeout(poll, notified).await;
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "the job worker cannot read the queue");
                        tokio::time::sleep(poll).await;
                    }
                }
            }
        });
    }

    /// Whether this replica claims and runs jobs (`--roles worker`).
    pub fn runs_jobs(&self) -> bool {
        self.services.config.worker
    }

    /// Why jobs cannot run on this server, if they cannot: the trainer's Python (which also runs the prompt
    /// generator and the evaluator) does not exist. An API-only replica does not run them, so it does not
    /// need the trainer.
    pub fn unavailable(&self) -> Option<String> {
        if !self.runs_jobs() {
            return None;
        }
        let python = &self.services.config.python;
        (!program_exists(python)).then(|| {
            format!(
                "fine-tune jobs cannot run here: the trainer's Python `{}` does not exist (run `make trainer-venv`, \
                 or point --trainer-python at a Python with trainer/requirements.txt)",
                python.display()
            )
        })
    }

    /// The limits on a job's size that `create` applies.
    pub fn limits(&self) -> JobLimits {
        self.services.config.limits
    }

    /// Validates a request and queues the job, owned by `tenant`. The base and the feedback filter's model must
    /// be versions a caller who sees `visible`'s records (`None`: every tenant's) may use.
    pub async fn create(&self, request: FineTuneRequest, tenant: &str, visible: Option<&str>) -> Result<JobRecord> {
        if let Some(reason) = self.unavailable() {
            return Err(Error::Unavailable(reason));
        }
        let base = match request.base_model.as_deref() {
            Some(id) => {
                self.services
                    .pool
                    .registry()
                    .version_for(id, "base_model", visible)
                    .await?
            }
            None => {
                let active = self.services.pool.active().version.clone();
                self.services.pool.registry().version(&active, "base_model").await?
            }
        };
        let folder = self.services.pool.registry().fetch(&base).await?;
        trainable_base(&base.id, &folder)?;
        if let Some(name) = request.reward_model.as_deref() {
            self.services.rewards.get(Some(name), "reward_model")?;
        } else if self.services.rewards.is_empty() {
            return Err(Error::validation(
                "reward_model",
                "this server has no reward model loaded (start it with --reward-model); a job needs one",
            ));
        }
        let spec = request.validate(
            base.id.clone(),
            &self.services.config.limits,
            &self.services.config.gate,
        )?;
        if let Some(model) = &spec.feedback_filter.model {
            // A typo would otherwise match no rating and train on the reward model's scores alone.
            self.services
                .pool
                .registry()
                .version_for(model, "feedback_filter.model", visible)
                .await?;
        }
        let (active, used_ms, frees_in_ms) = self
            .services
            .storage
            .tenant_job_use(tenant, crate::storage::now_millis(), 86_400_000)
            .await?;
        self.services.config.quota.check(tenant, active, used_ms, frees_in_ms)?;
        let id = format!("ft_{}", uuid::Uuid::new_v4().simple());
        let spec_json = serde_json::to_value(&spec).map_err(|err| Error::Internal(err.to_string()))?;
        let job = self
            .services
            .storage
            .insert_job(&id, &base.id, &spec_json, tenant)
            .await?;
        self.services
            .storage
            .insert_event(&id, "info", "status", &format!("queued (base model {})", base.id), None)
            .await?;
        self.refresh_job_metrics().await;
        self.wake.notify_one();
        Ok(job)
    }

    /// Stops the runner for a shutdown: no queued job starts, and the running one (if any) has its trainer killed
    /// and is recorded as failed (interrupted), with an event. Waits at most `grace` for that record.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutting_down.store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake.notify_waiters();
        let signalled = self
            .running
            .lock()
            .ok()
            .and_then(|running| running.as_ref().map(|running| running.cancel.send(true).is_ok()));
        if signalled.is_none() {
            return;
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.running.lock().map(|running| running.is_none()).unwrap_or(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!("the running fine-tune job did not record its end within the shutdown grace period");
    }

    /// Cancels a queued or running job. A running one stops at once: its trainer's process group is killed.
    pub async fn cancel(&self, id: &str) -> Result<JobRecord> {
        let job = self
            .services
            .storage
            .job(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no fine-tune job `{id}`")))?;
        if job.status.is_final() {
            return Err(Error::Conflict(format!(
                "job `{id}` is {} already; only queued or running jobs can be cancelled",
                job.status.name()
            )));
        }
        let signalled = self.running.lock().ok().and_then(|running| {
            running
                .as_ref()
                .filter(|running| running.id == id)
                .map(|running| running.cancel.send(true).is_ok())
        });
        if signalled.is_none()
            && self
                .services
                .storage
                .set_job_status(id, JobStatus::Cancelled, None)
                .await?
        {
            // Running on another replica: its worker finds its lease gone at its next heartbeat and stops.
            let message = match (job.status, job.worker.as_deref()) {
                (JobStatus::Running, Some(worker)) => {
                    format!(
                        "cancelled while attempt {} ran on {worker}, which stops it",
                        job.attempt
                    )
                }
                _ => "cancelled before it started".to_string(),
            };
            self.services
                .storage
                .insert_event(id, "info", "status", &message, None)
                .await?;
            crate::jobs::trainer::remove_checkpoint(&self.services.storage, id).await;
            self.refresh_job_metrics().await;
        }
        // A running job records its own cancellation once its stage has stopped.
        self.services
            .storage
            .job(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no fine-tune job `{id}`")))
    }

    async fn refresh_job_metrics(&self) {
        if let Ok(counts) = self.services.storage.job_counts().await {
            for status in ["queued", "running", "succeeded", "failed", "cancelled"] {
                let count = counts
                    .iter()
                    .find(|(name, _)| name == status)
                    .map_or(0, |(_, count)| *count);
                self.services
                    .metrics
                    .fine_tune_jobs
                    .with_label_values(&[status])
                    .set(count);
            }
        }
    }

    /// Renews `lease` every third of its length until aborted. When the lease is gone (taken over, or the job
    /// cancelled on another replica), or cannot be renewed before it runs out, it sets `lost` and cancels the
    /// attempt, which kills its children.
    fn heartbeat(
        &self,
        lease: &Lease,
        cancel: Arc<watch::Sender<bool>>,
        lost: Arc<std::sync::atomic::AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        let storage = self.services.storage.clone();
        let duration = self.services.config.lease;
        let lease = lease.clone();
        tokio::spawn(async move {
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(duration / 3).await;
                let gone = match storage.renew_lease(&lease, duration).await {
                    Ok(true) => {
                        renewed = Instant::now();
                        false
                    }
                    Ok(false) => true,
                    Err(err) => {
                        tracing::warn!(job = %lease.job_id, error = %err, "cannot renew the job's lease");
                        renewed.elapsed() >= duration
                    }
                };
                if gone {
                    tracing::warn!(job = %lease.job_id, attempt = lease.attempt, "the job's lease is lost: stopping the attempt");
                    lost.store(true, std::sync::atomic::Ordering::Relaxed);
                    let _ = cancel.send(true);
                    return;
                }
            }
        })
    }

    async fn run(&self, job: JobRecord, lease: Lease) {
        let (cancel, cancelled) = watch::channel(false);
        let cancel = Arc::new(cancel);
        if let Ok(mut running) = self.running.lock() {
            *running = Some(RunningJob {
                id: job.id.clone(),
                cancel: cancel.clone(),
            });
        }
        if self.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = cancel.send(true);
        }
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let heartbeat = self.heartbeat(&lease, cancel.clone(), lost.clone());
        let max_attempts = self.services.config.max_attempts;
        let folder = self.jobs_dir.join(&job.id);
        if folder.exists() {
            // An earlier attempt's working files on this machine: this attempt starts from the first stage.
            let _ = std::fs::remove_dir_all(&folder);
        }
        self.refresh_job_metrics().await;
        let _ = self
            .services
            .storage
            .insert_job_event(
                &lease,
                "info",
                "status",
                &format!(
                    "running: attempt {} of {max_attempts}, on {}",
                    lease.attempt, lease.worker
                ),
                Some(&serde_json::json!({"attempt": lease.attempt, "worker": lease.worker})),
            )
            .await;
        tracing::info!(job = %job.id, attempt = lease.attempt, "fine-tune job started");
        let started = Instant::now();
        let result = match serde_json::from_value::<JobSpec>(job.spec.clone()) {
            Ok(spec) => {
                let mut context = JobContext {
                    services: &self.services,
                    job: &job,
                    lease: lease.clone(),
                    spec,
                    folder,
                    cancelled,
                    metrics: JobMetrics::default(),
                };
                context.execute().await
            }
            Err(err) => Err(Error::Internal(format!("the stored spec does not parse: {err}"))),
        };
        heartbeat.abort();
        let seconds = started.elapsed().as_secs_f64();
        let shutting_down = self.shutting_down.load(std::sync::atomic::Ordering::Relaxed);
        let lease_lost =
            lost.load(std::sync::atomic::Ordering::Relaxed) || matches!(result, Err(Error::LeaseLost { .. }));
        let storage = &self.services.storage;
        let outcome = if lease_lost {
            Ok(None)
        } else {
            match &result {
                Ok(model) => storage
                    .finish_job(&lease, JobStatus::Succeeded, None)
                    .await
                    .map(|held| held.then(|| ("info", format!("succeeded in {seconds:.0} s: version {model}")))),
                Err(Error::Cancelled) if shutting_down && lease.attempt < i64::from(max_attempts) => {
                    storage.requeue_job(&lease).await.map(|held| {
                        held.then(|| {
                            (
                                "warning",
                                format!(
                                    "interrupted: the server shut down during attempt {} of {max_attempts}; queued \
                                     again, to run from its first stage",
                                    lease.attempt
                                ),
                            )
                        })
                    })
                }
                Err(Error::Cancelled) if shutting_down => storage
                    .finish_job(&lease, JobStatus::Failed, Some(INTERRUPTED_BY_SHUTDOWN))
                    .await
                    .map(|held| held.then(|| ("error", INTERRUPTED_BY_SHUTDOWN.to_string()))),
                Err(Error::Cancelled) => storage
                    .finish_job(&lease, JobStatus::Cancelled, None)
                    .await
                    .map(|held| held.then(|| ("info", "cancelled".to_string()))),
                Err(err) => storage
                    .finish_job(&lease, JobStatus::Failed, Some(&err.to_string()))
                    .await
                    .map(|held| held.then(|| ("error", format!("failed: {err}")))),
            }
        };
        let requeued =
            matches!(&result, Err(Error::Cancelled)) && shutting_down && lease.attempt < i64::from(max_attempts);
        if matches!(outcome, Ok(Some(_))) && !requeued {
            // The job has ended: its checkpoint is of no more use.
            crate::jobs::trainer::remove_checkpoint(storage, &job.id).await;
        }
        match outcome {
            Ok(Some((level, message))) => {
                let _ = storage.insert_event(&job.id, level, "status", &message, None).await;
                tracing::info!(job = %job.id, attempt = lease.attempt, "{message}");
            }
            Ok(None) => tracing::warn!(
                job = %job.id,
                attempt = lease.attempt,
                "the attempt lost its lease; it recorded nothing more (another replica owns the job, or it was cancelled)"
            ),
            Err(err) => tracing::error!(job = %job.id, error = %err, "cannot record the job's end"),
        }
        self.refresh_job_metrics().await;
        // Only now: a shutdown waits for this, so the job's end (status and event) is recorded before exit.
        if let Ok(mut running) = self.running.lock() {
            *running = None;
        }
    }
}

/// The diffusers pipeline classes the trainer (trainer/t2i_trainer/jobs) fine-tunes: Stable Diffusion 1.x/2.x.
pub const TRAINABLE_PIPELINES: &[&str] = &["StableDiffusionPipeline"];

/// Refuses, before anything is queued, a base without diffusers weights to fine-tune from, or whose weights
/// are of a family the trainer cannot train (SDXL, say), so that no job fails deep inside the trainer.
fn trainable_base(base: &str, folder: &std::path::Path) -> Result<()> {
    let index = folder.join("diffusers/model_index.json");
    let Ok(text) = std::fs::read_to_string(&index) else {
        return Err(Error::validation(
            "base_model",
            format!(
                "`base_model` `{base}` has no diffusers weights to fine-tune from ({})",
                index.display()
            ),
        ));
    };
    let class = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|index| {
            index
                .get("_class_name")
                .and_then(|name| name.as_str())
                .map(str::to_string)
        })
        .ok_or_else(|| {
            Error::validation(
                "base_model",
                format!(
                    "`base_model` `{base}` has an unreadable {}: it names no `_class_name`",
                    index.display()
                ),
            )
        })?;
    if TRAINABLE_PIPELINES.contains(&class.as_str()) {
        return Ok(());
    }
    Err(Error::validation(
        "base_model",
        format!(
            "`base_model` `{base}` is a {class}; fine-tune jobs train {} models only (Stable Diffusion 1.x/2.x)",
            TRAINABLE_PIPELINES.join(", ")
        ),
    ))
}
