//! The job queue and its runner: jobs persist in the database, and one runner works through them one at a time
//! on a tokio task. Creating validates a request into a `JobSpec`; cancelling stops a queued job at once and a
//! running one at its next step (its children's process group is killed); a shutdown records the running job
//! as interrupted.

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
use crate::storage::{JobRecord, JobStatus, Storage};

/// The error and event of a job stopped by a server shutdown.
const INTERRUPTED_BY_SHUTDOWN: &str = "interrupted: the server shut down (SIGTERM) while the job ran";

struct RunningJob {
    id: String,
    cancel: watch::Sender<bool>,
}

/// The job queue and its runner: one job at a time, on a tokio task.
pub struct JobManager {
    services: JobServices,
    jobs_dir: PathBuf,
    wake: Notify,
    running: Mutex<Option<RunningJob>>,
    /// Set on SIGTERM: no job starts, and the running one is stopped and recorded as interrupted.
    shutting_down: std::sync::atomic::AtomicBool,
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
            },
            jobs_dir,
            wake: Notify::new(),
            running: Mutex::new(None),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.services.storage
    }

    /// Starts the runner: it takes queued jobs oldest first, one at a time, until the process exits.
    pub fn start(self: &Arc<Self>) {
        if let Some(reason) = self.unavailable() {
            tracing::warn!("{reason}");
        }
        let manager = self.clone();
        tokio::spawn(async move {
            manager.refresh_job_metrics().await;
            loop {
                let notified = manager.wake.notified();
                if manager.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                match manager.services.storage.next_queued_job().await {
                    Ok(Some(job)) => manager.run(job).await,
                    Ok(None) => {
                        let _ = tokio::time::timeout(Duration::from_secs(5), notified).await;
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "the job runner cannot read the queue");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        });
    }

    /// Why jobs cannot run on this server, if they cannot: the trainer's Python (which also runs the prompt
    /// generator and the evaluator) does not exist.
    pub fn unavailable(&self) -> Option<String> {
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

    /// Validates a request and queues the job.
    pub async fn create(&self, request: FineTuneRequest) -> Result<JobRecord> {
        if let Some(reason) = self.unavailable() {
            return Err(Error::Unavailable(reason));
        }
        let base = match request.base_model.as_deref() {
            Some(id) => self.services.pool.registry().version(id, "base_model").await?,
            None => {
                let active = self.services.pool.active().version.clone();
                self.services.pool.registry().version(&active, "base_model").await?
            }
        };
        let folder = self.services.pool.registry().fetch(&base).await?;
        if !folder.join("diffusers/model_index.json").is_file() {
            return Err(Error::validation(
                "base_model",
                format!(
                    "`base_model` `{}` has no diffusers weights to fine-tune from ({}/diffusers/model_index.json)",
                    base.id,
                    folder.display()
                ),
            ));
        }
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
                .version(model, "feedback_filter.model")
                .await?;
        }
        let id = format!("ft_{}", uuid::Uuid::new_v4().simple());
        let spec_json = serde_json::to_value(&spec).map_err(|err| Error::Internal(err.to_string()))?;
        let job = self.services.storage.insert_job(&id, &base.id, &spec_json).await?;
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
            self.services
                .storage
                .insert_event(id, "info", "status", "cancelled before it started", None)
                .await?;
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

    async fn run(&self, job: JobRecord) {
        let (cancel, cancelled) = watch::channel(false);
        match self
            .services
            .storage
            .set_job_status(&job.id, JobStatus::Running, None)
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                tracing::error!(job = %job.id, error = %err, "cannot start the job");
                tokio::time::sleep(Duration::from_secs(5)).await;
                return;
            }
        }
        if let Ok(mut running) = self.running.lock() {
            *running = Some(RunningJob {
                id: job.id.clone(),
                cancel,
            });
        }
        self.refresh_job_metrics().await;
        let _ = self
            .services
            .storage
            .insert_event(&job.id, "info", "status", "running", None)
            .await;
        tracing::info!(job = %job.id, "fine-tune job started");
        let started = Instant::now();
        let result = match serde_json::from_value::<JobSpec>(job.spec.clone()) {
            Ok(spec) => {
                let mut context = JobContext {
                    services: &self.services,
                    job: &job,
                    spec,
                    folder: self.jobs_dir.join(&job.id),
                    cancelled,
                    metrics: JobMetrics::default(),
                };
                context.execute().await
            }
            Err(err) => Err(Error::Internal(format!("the stored spec does not parse: {err}"))),
        };
        let seconds = started.elapsed().as_secs_f64();
        let (status, level, message) = match &result {
            Ok(model) => (
                JobStatus::Succeeded,
                "info",
                format!("succeeded in {seconds:.0} s: version {model}"),
            ),
            Err(Error::Cancelled) if self.shutting_down.load(std::sync::atomic::Ordering::Relaxed) => {
                (JobStatus::Failed, "error", INTERRUPTED_BY_SHUTDOWN.to_string())
            }
            Err(Error::Cancelled) => (JobStatus::Cancelled, "info", "cancelled".to_string()),
            Err(err) => (JobStatus::Failed, "error", format!("failed: {err}")),
        };
        let error = match &result {
            Ok(_) => None,
            Err(Error::Cancelled) if status == JobStatus::Failed => Some(INTERRUPTED_BY_SHUTDOWN.to_string()),
            Err(Error::Cancelled) => None,
            Err(err) => Some(err.to_string()),
        };
        if let Err(err) = self
            .services
            .storage
            .set_job_status(&job.id, status, error.as_deref())
            .await
        {
            tracing::error!(job = %job.id, error = %err, "cannot record the job's end");
        }
        let _ = self
            .services
            .storage
            .insert_event(&job.id, level, "status", &message, None)
            .await;
        self.refresh_job_metrics().await;
        tracing::info!(job = %job.id, status = status.name(), "{message}");
        // Only now: a shutdown waits for this, so the job's end (status and event) is recorded before exit.
        if let Ok(mut running) = self.running.lock() {
            *running = None;
        }
    }
}
