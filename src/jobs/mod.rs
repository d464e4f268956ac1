//! Fine-tune jobs (#5): the queue, persisted in the database, and the runner that works through it one job at a
//! time on a tokio task.
//!
//! A job's stages, each timed and recorded as events:
//! 1. `prompts`: the job's prompts (a list, or drawn by `t2i_trainer.build.shapes_world prompts`).
//! 2. `sample`: images from the base version through its ONNX engine, each scored by the reward model.
//! 3. `label`: the training set: the stored ratings (good 1, bad 0) and the reward-scored samples, the paper's
//!    semi-supervised set, written as `samples.jsonl` in the job's folder.
//!    With `retrain_reward_model`, the `reward` stage first retrains the reward model on the ratings
//!    (`t2i_trainer.jobs.retrain_reward`, paper §3.2), registers it as a reward version, and re-scores the samples
//!    with it; the evaluation then uses it too.
//! 4. `train`: `t2i_trainer.jobs.finetune` as a child process with a JSON spec; its JSON-lines progress becomes
//!    events and metrics. It writes the candidate (diffusers weights and the ONNX export) into the job folder.
//! 5. `evaluate`: the candidate is loaded (a candidate that does not load is refused here, and nothing is
//!    registered), then base and candidate sample the evaluation prompts with the same seeds; the reward model
//!    and the shapes world's rater (`t2i_trainer.jobs.evaluate`) judge both.
//! 6. `register`: the candidate's files are checksummed and moved into the registry; then the gate decides
//!    whether it may become active, and `activate_on_success` whether it does.
//!
//! A server that stops mid-job cannot resume it: at start-up, jobs left `running` are marked `failed`.

pub mod child;
pub mod spec;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::pipeline::GenerateParams;
use crate::registry::Candidate;
use crate::reward::best_of::Selection;
use crate::reward::{RewardSet, Scorer};
use crate::serving::{LoadedModel, ModelPool};
use crate::storage::{FeedbackQuery, JobRecord, JobStatus, Label, Storage};
use child::{log_tail, run_to_end, RunningChild};
pub use spec::{FineTuneRequest, GateDefaults, JobLimits, JobSpec, PromptSource};

/// The stage names of `STAGES`, in order.
pub fn stage_names() -> Vec<String> {
    STAGES.iter().map(|(name, _)| (*name).to_string()).collect()
}

/// The data directory's folder for job working folders.
pub const JOBS_DIR: &str = "jobs";

/// The stages every job runs through, in order, and where each ends as a share of the whole job, for
/// `progress`. The API serves the names with each job (`stages`), so the console never keeps its own copy.
pub const STAGES: [(&str, f64); 7] = [
    ("prompts", 0.01),
    ("sample", 0.25),
    ("label", 0.28),
    ("reward", 0.33),
    ("train", 0.80),
    ("evaluate", 0.97),
    ("register", 1.0),
];

/// How the server runs jobs (command line).
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Python with the trainer's dependencies; runs the t2i_trainer modules jobs.finetune, jobs.evaluate,
    /// jobs.retrain_reward and build.shapes_world (`<python> -m t2i_trainer.<module>`).
    pub python: PathBuf,
    /// The trainer's sources: the folder holding the t2i_trainer package, put first on every child's PYTHONPATH.
    pub trainer_dir: PathBuf,
    /// Replaces `<python> -m t2i_trainer.jobs.finetune` (e.g. `torchrun --nproc_per_node 4 -m
    /// t2i_trainer.jobs.finetune`); `--spec <file>` is appended.
    pub trainer_command: Option<Vec<String>>,
    /// torch threads for the trainer.
    pub trainer_threads: usize,
    pub limits: JobLimits,
    pub gate: GateDefaults,
}

/// A stage in progress: its name (one of `STAGES`) and when it began.
struct Stage {
    name: &'static str,
    started: Instant,
}

/// The error and event of a job stopped by a server shutdown.
const INTERRUPTED_BY_SHUTDOWN: &str = "interrupted: the server shut down (SIGTERM) while the job ran";

struct RunningJob {
    id: String,
    cancel: watch::Sender<bool>,
}

pub struct JobManager {
    storage: Arc<Storage>,
    pool: Arc<ModelPool>,
    rewards: Arc<RewardSet>,
    metrics: Arc<Metrics>,
    config: JobConfig,
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

/// One sample of the training set.
struct Sample {
    image: String,
    prompt: String,
    reward: f64,
    source: &'static str,
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
            storage,
            pool,
            rewards,
            metrics,
            config,
            jobs_dir,
            wake: Notify::new(),
            running: Mutex::new(None),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
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
                match manager.storage.next_queued_job().await {
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
        let python = &self.config.python;
        (!program_exists(python)).then(|| {
            format!(
                "fine-tune jobs cannot run here: the trainer's Python `{}` does not exist (run `make trainer-venv`, \
                 or point --trainer-python at a Python with trainer/requirements.txt)",
                python.display()
            )
        })
    }

    /// Validates a request and queues the job.
    pub async fn create(&self, request: FineTuneRequest) -> Result<JobRecord> {
        if let Some(reason) = self.unavailable() {
            return Err(Error::Unavailable(reason));
        }
        let base = match request.base_model.as_deref() {
            Some(id) => self.pool.registry().version(id, "base_model").await?,
            None => {
                let active = self.pool.active().version.clone();
                self.pool.registry().version(&active, "base_model").await?
            }
        };
        let folder = self.pool.registry().folder(&base);
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
            self.rewards.get(Some(name), "reward_model")?;
        } else if self.rewards.is_empty() {
            return Err(Error::validation(
                "reward_model",
                "this server has no reward model loaded (start it with --reward-model); a job needs one",
            ));
        }
        let spec = request.validate(base.id.clone(), &self.config.limits, &self.config.gate)?;
        if let Some(model) = &spec.feedback_filter.model {
            // A typo would otherwise match no rating and train on the reward model's scores alone.
            self.pool.registry().version(model, "feedback_filter.model").await?;
        }
        let id = format!("ft_{}", uuid::Uuid::new_v4().simple());
        let spec_json = serde_json::to_value(&spec).map_err(|err| Error::Internal(err.to_string()))?;
        let job = self.storage.insert_job(&id, &base.id, &spec_json).await?;
        self.storage
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
        if signalled.is_none() && self.storage.set_job_status(id, JobStatus::Cancelled, None).await? {
            self.storage
                .insert_event(id, "info", "status", "cancelled before it started", None)
                .await?;
            self.refresh_job_metrics().await;
        }
        // A running job records its own cancellation once its stage has stopped.
        self.storage
            .job(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no fine-tune job `{id}`")))
    }

    async fn refresh_job_metrics(&self) {
        if let Ok(counts) = self.storage.job_counts().await {
            for status in ["queued", "running", "succeeded", "failed", "cancelled"] {
                let count = counts
                    .iter()
                    .find(|(name, _)| name == status)
                    .map_or(0, |(_, count)| *count);
                self.metrics.fine_tune_jobs.with_label_values(&[status]).set(count);
            }
        }
    }

    async fn run(&self, job: JobRecord) {
        let (cancel, cancelled) = watch::channel(false);
        match self.storage.set_job_status(&job.id, JobStatus::Running, None).await {
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
            .storage
            .insert_event(&job.id, "info", "status", "running", None)
            .await;
        tracing::info!(job = %job.id, "fine-tune job started");
        let started = Instant::now();
        let result = match serde_json::from_value::<JobSpec>(job.spec.clone()) {
            Ok(spec) => {
                let mut context = JobContext {
                    manager: self,
                    job: &job,
                    spec,
                    folder: self.jobs_dir.join(&job.id),
                    cancelled,
                    metrics: json!({}),
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
        if let Err(err) = self.storage.set_job_status(&job.id, status, error.as_deref()).await {
            tracing::error!(job = %job.id, error = %err, "cannot record the job's end");
        }
        let _ = self
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

/// One running job: its spec, folder and the figures gathered so far.
struct JobContext<'a> {
    manager: &'a JobManager,
    job: &'a JobRecord,
    spec: JobSpec,
    folder: PathBuf,
    cancelled: watch::Receiver<bool>,
    metrics: Value,
}

fn stage_bounds(stage: &str) -> (f64, f64) {
    let index = STAGES.iter().position(|(name, _)| *name == stage).unwrap_or(0);
    let start = if index == 0 { 0.0 } else { STAGES[index - 1].1 };
    (start, STAGES[index].1)
}

impl JobContext<'_> {
    async fn execute(&mut self) -> Result<String> {
        std::fs::create_dir_all(&self.folder)
            .map_err(|err| Error::Internal(format!("cannot create {}: {err}", self.folder.display())))?;
        let scorer = self
            .manager
            .rewards
            .get(self.spec.reward_model.as_deref(), "reward_model")?
            .clone();
        let base = self.manager.pool.get(Some(&self.spec.base_model), "base_model").await?;

        let stage = self.begin("prompts").await?;
        let prompts = self.prompts(&self.spec.prompts.clone(), "train").await?;
        let eval_prompts = self.prompts(&self.spec.eval_prompts.clone(), "heldout").await?;
        self.end(
            stage,
            &format!("{} prompts, {} evaluation prompts", prompts.len(), eval_prompts.len()),
        )
        .await?;

        let stage = self.begin("sample").await?;
        let data = self.folder.join("data");
        let sampled = self
            .sample(
                &base,
                &scorer,
                &prompts,
                self.spec.images_per_prompt,
                self.spec.seed,
                &data,
                "s",
                ("sample", 0.0, 1.0),
            )
            .await?;
        let sampled_mean = mean(sampled.iter().map(|sample| sample.reward));
        self.metrics["samples"] =
            json!({"images": sampled.len(), "mean_reward": sampled_mean, "reward_model": scorer.name()});
        self.end(
            stage,
            &format!("{} images sampled, mean reward {}", sampled.len(), fmt(sampled_mean)),
        )
        .await?;

        let stage = self.begin("label").await?;
        let mut samples = if self.spec.use_feedback {
            self.feedback_samples(&data).await?
        } else {
            Vec::new()
        };
        let rated = samples.len();
        let mut sampled = sampled;
        if let Some(note) = rescale_rewards(&mut sampled, scorer.bounded()) {
            self.manager
                .storage
                .insert_event(&self.job.id, "warning", "label", &note, None)
                .await?;
            self.metrics["samples"]["rescaled"] = json!(note);
        }
        samples.extend(sampled);
        self.write_samples(&data, &samples)?;
        if !samples.iter().any(|sample| sample.reward > 0.0) {
            return Err(Error::Validation {
                message: "no training sample has a reward above 0: rate some images good, or sample more".into(),
                param: None,
            });
        }
        self.metrics["training_set"] = json!({
            "samples": samples.len(),
            "rated": rated,
            "reward_scored": samples.len() - rated,
            "mean_reward": mean(samples.iter().map(|sample| sample.reward)),
        });
        let filter = &self.spec.feedback_filter;
        let chosen: Vec<String> = [("of model", &filter.model), ("by rater", &filter.rater)]
            .into_iter()
            .filter_map(|(what, value)| value.as_ref().map(|value| format!("{what} {value}")))
            .collect();
        let which = if chosen.is_empty() {
            String::new()
        } else {
            format!(" (ratings {})", chosen.join(", "))
        };
        self.end(
            stage,
            &format!(
                "{} training samples: {rated} rated by people{which}, {} scored by the reward model",
                samples.len(),
                samples.len() - rated
            ),
        )
        .await?;

        let scorer = if self.spec.retrain_reward_model {
            let stage = self.begin("reward").await?;
            let (scorer, note) = self.retrain_reward(&data, &mut samples, &scorer).await?;
            self.write_samples(&data, &samples)?;
            self.end(stage, &note).await?;
            scorer
        } else {
            scorer
        };

        let stage = self.begin("train").await?;
        let candidate = self.folder.join("candidate");
        self.train(&data, &candidate).await?;
        self.end(stage, "the trainer finished and exported the candidate")
            .await?;

        let stage = self.begin("evaluate").await?;
        let candidate_model = self
            .manager
            .pool
            .load_folder(format!("{}-candidate", self.job.id), candidate.clone())
            .await
            .map_err(|err| Error::Internal(format!("the candidate was refused: it does not load: {err}")))?;
        let eval_seed = self.spec.seed.wrapping_add(1_000_000_007);
        let per_prompt = self.spec.eval_images_per_prompt;
        let base_eval = self
            .evaluate(&base, &scorer, &eval_prompts, per_prompt, eval_seed, "base", (0.0, 0.5))
            .await?;
        let candidate_eval = self
            .evaluate(
                &candidate_model,
                &scorer,
                &eval_prompts,
                per_prompt,
                eval_seed,
                "candidate",
                (0.5, 1.0),
            )
            .await?;
        drop(candidate_model);
        let gate = self.gate(&base_eval, &candidate_eval);
        self.metrics["evaluation"] = json!({"base": base_eval, "candidate": candidate_eval});
        self.metrics["gate"] = gate.clone();
        self.end(stage, &format!("gate {}", gate_line(&gate))).await?;

        let stage = self.begin("register").await?;
        let version_id = self.version_id(&self.spec.base_model);
        let record = self
            .manager
            .pool
            .registry()
            .register_candidate(Candidate {
                kind: crate::storage::VersionKind::Diffusion,
                folder: &candidate,
                id: &version_id,
                parent: &self.spec.base_model,
                job_id: &self.job.id,
                metrics: &self.metrics,
            })
            .await?;
        self.manager.storage.set_job_result(&self.job.id, &record.id).await?;
        let passed = gate["passed"].as_bool().unwrap_or(false);
        let outcome = if !passed {
            format!(
                "registered {version_id}; not activated: the gate refused it ({})",
                gate_line(&gate)
            )
        } else if self.spec.activate_on_success {
            self.manager.pool.activate(&version_id, "base_model").await?;
            format!("registered and activated {version_id}")
        } else {
            format!("registered {version_id}; it passed the gate (activate_on_success is false)")
        };
        self.metrics["activated"] = json!(passed && self.spec.activate_on_success);
        self.manager
            .storage
            .set_job_metrics(&self.job.id, &self.metrics)
            .await?;
        self.end(stage, &outcome).await?;
        // The samples and evaluation images are the job's; the version keeps only what it serves.
        let _ = std::fs::remove_dir_all(self.folder.join("eval"));
        Ok(version_id)
    }

    /// The id of the version this job makes from `parent`: the root of its lineage, `-ft-` and the job's id
    /// (shortened), so a fine-tune of a fine-tune does not grow a longer name.
    fn version_id(&self, parent: &str) -> String {
        let root = parent.split("-ft-").next().unwrap_or(parent);
        let short: String = self.job.id.trim_start_matches("ft_").chars().take(8).collect();
        format!("{root}-ft-{short}")
    }

    /// Records a stage's start; `end` records its finish.
    async fn begin(&self, stage: &'static str) -> Result<Stage> {
        self.check_cancelled()?;
        let (start, _) = stage_bounds(stage);
        self.manager.storage.set_job_stage(&self.job.id, stage, start).await?;
        self.manager
            .storage
            .insert_event(&self.job.id, "info", "stage", &format!("{stage}: started"), None)
            .await?;
        Ok(Stage {
            name: stage,
            started: Instant::now(),
        })
    }

    async fn end(&self, stage: Stage, message: &str) -> Result<()> {
        let Stage { name: stage, started } = stage;
        let seconds = started.elapsed().as_secs_f64();
        self.manager
            .metrics
            .fine_tune_stage_duration
            .with_label_values(&[stage])
            .observe(seconds);
        let (_, end) = stage_bounds(stage);
        self.manager.storage.set_job_progress(&self.job.id, end).await?;
        self.manager
            .storage
            .set_job_metrics(&self.job.id, &self.metrics)
            .await?;
        self.manager
            .storage
            .insert_event(
                &self.job.id,
                "info",
                "stage",
                &format!("{stage}: done in {seconds:.1} s; {message}"),
                Some(&json!({"stage": stage, "seconds": seconds})),
            )
            .await?;
        Ok(())
    }

    /// Progress within a stage (0..1 of it).
    async fn stage_progress(&self, stage: &str, fraction: f64) -> Result<()> {
        let (start, end) = stage_bounds(stage);
        self.manager
            .storage
            .set_job_progress(&self.job.id, start + (end - start) * fraction.clamp(0.0, 1.0))
            .await
    }

    fn check_cancelled(&self) -> Result<()> {
        if *self.cancelled.borrow() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    /// `<python> -m t2i_trainer.<module>`; the child finds the package through PYTHONPATH (`child_environment`).
    fn python(&self, module: &str) -> Vec<String> {
        vec![
            self.manager.config.python.to_string_lossy().into_owned(),
            "-m".into(),
            format!("t2i_trainer.{module}"),
        ]
    }

    async fn prompts(&self, source: &PromptSource, default_split: &str) -> Result<Vec<String>> {
        let generator = match source {
            PromptSource::List(prompts) => return Ok(prompts.clone()),
            PromptSource::Generator(generator) => generator,
        };
        let mut command = self.python("build.shapes_world");
        command.extend(["prompts".into(), "--split".into()]);
        command.push(generator.split.clone().unwrap_or_else(|| default_split.into()));
        if let Some(count) = generator.count {
            command.extend(["--count".into(), count.to_string()]);
        }
        if let Some(per_category) = generator.per_category {
            command.extend(["--per-category".into(), per_category.to_string()]);
        }
        command.extend(["--seed".into(), generator.seed.unwrap_or(self.spec.seed).to_string()]);
        let output = run_to_end(
            &command,
            &self.folder.join("tools.log"),
            &self.manager.config.trainer_dir,
        )
        .await?;
        let prompts: Vec<String> = output
            .lines()
            .map(str::to_string)
            .filter(|line| !line.is_empty())
            .collect();
        if prompts.is_empty() {
            return Err(Error::Internal(format!("`{}` listed no prompts", command.join(" "))));
        }
        Ok(prompts)
    }

    /// `per_prompt` images of each prompt from `model`, scored; PNGs written to `folder` as `<tag><i>-<j>.png`.
    /// Progress is reported over `progress`: a stage and the share of it, from and to, that this sampling is.
    #[allow(clippy::too_many_arguments)]
    async fn sample(
        &self,
        model: &LoadedModel,
        scorer: &Arc<Scorer>,
        prompts: &[String],
        per_prompt: u32,
        seed: u64,
        folder: &Path,
        tag: &str,
        progress: (&'static str, f64, f64),
    ) -> Result<Vec<Sample>> {
        let (stage, from, to) = progress;
        std::fs::create_dir_all(folder)
            .map_err(|err| Error::Internal(format!("cannot create {}: {err}", folder.display())))?;
        let mut samples = Vec::with_capacity(prompts.len() * per_prompt as usize);
        if per_prompt == 0 {
            return Ok(samples);
        }
        let report_every = (prompts.len() / 50).max(1);
        let params = |index: usize, prompt: &str| GenerateParams {
            prompt: prompt.to_string(),
            negative_prompt: String::new(),
            num_images: per_prompt as usize,
            steps: model.limits.default_steps as usize,
            guidance_scale: model.limits.default_guidance_scale as f32,
            scheduler: model.limits.default_scheduler,
            seed: seed
                .wrapping_mul(1_000_003)
                .wrapping_add(index as u64 * per_prompt as u64),
            width: model.limits.default_size,
            height: model.limits.default_size,
            eta: 0.0,
        };
        // Several prompts in flight at once, so that the engine's continuous batcher denoises them in shared UNet
        // calls; answers come back in prompt order. At most half the queue, so users' requests still get in.
        let in_flight = (model.engine.batch_rows() / (2 * per_prompt as usize))
            .min(model.engine.capacity() / 2)
            .clamp(1, 16);
        let requests: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(index, prompt)| self.sample_one(model, scorer, params(index, prompt)))
            .collect();
        let mut answers = futures_util::stream::iter(requests).buffered(in_flight);
        let mut index = 0;
        while let Some(completed) = answers.next().await {
            let completed = completed?;
            let prompt = &prompts[index];
            for (position, image) in completed.output.images.iter().enumerate() {
                let name = format!("{tag}{index}-{position}.png");
                // Working data: a crash fails the job anyway, so no fsync per file.
                std::fs::write(folder.join(&name), &image.png)
                    .map_err(|err| Error::Internal(format!("cannot write {name}: {err}")))?;
                let reward = image
                    .reward
                    .ok_or_else(|| Error::Internal("a sampled image came back unscored".into()))?;
                samples.push(Sample {
                    image: name,
                    prompt: prompt.clone(),
                    reward: f64::from(reward),
                    source: "reward_model",
                });
            }
            index += 1;
            if index % report_every == 0 || index == prompts.len() {
                let fraction = index as f64 / prompts.len() as f64;
                self.stage_progress(stage, from + (to - from) * fraction).await?;
            }
        }
        Ok(samples)
    }

    /// One scored generation for a job, waiting and retrying while the engine's queue is full.
    async fn sample_one(
        &self,
        model: &LoadedModel,
        scorer: &Arc<Scorer>,
        params: GenerateParams,
    ) -> Result<crate::batching::Completed> {
        loop {
            self.check_cancelled()?;
            match model
                .engine
                .generate(
                    crate::reward::GeneratePlan::new(params.clone(), Selection::BestOf { k: 1 }, Some(scorer.clone())),
                    None,
                )
                .await
            {
                Err(Error::Overloaded { retry_after_secs, .. }) => {
                    tokio::time::sleep(Duration::from_secs(retry_after_secs.min(5))).await;
                }
                other => return other,
            }
        }
    }

    /// The stored ratings as samples: good 1, bad 0 (skips are left out), each image copied into `folder`.
    async fn feedback_samples(&self, folder: &Path) -> Result<Vec<Sample>> {
        let storage = &self.manager.storage;
        let mut samples = Vec::new();
        let filter = &self.spec.feedback_filter;
        let mut query = FeedbackQuery {
            limit: 500,
            model: filter.model.clone(),
            rater: filter.rater.clone(),
            ..FeedbackQuery::default()
        };
        loop {
            self.check_cancelled()?;
            let (page, has_more) = storage.list_feedback(&query).await?;
            for feedback in &page {
                let reward = match Label::from_name(&feedback.label) {
                    Some(Label::Good) => 1.0,
                    Some(Label::Bad) => 0.0,
                    _ => continue,
                };
                let bytes = storage.feedback_image(feedback).await?;
                let extension = Path::new(&feedback.file)
                    .extension()
                    .and_then(|extension| extension.to_str())
                    .unwrap_or("png");
                let name = format!("{}.{extension}", feedback.id);
                std::fs::write(folder.join(&name), &bytes)
                    .map_err(|err| Error::Internal(format!("cannot write {name}: {err}")))?;
                samples.push(Sample {
                    image: name,
                    prompt: feedback.prompt.clone(),
                    reward,
                    source: "feedback",
                });
            }
            match page.last() {
                Some(last) if has_more => query.after = Some(last.id.clone()),
                _ => break,
            }
        }
        Ok(samples)
    }

    fn write_samples(&self, folder: &Path, samples: &[Sample]) -> Result<()> {
        let mut text = String::new();
        for sample in samples {
            text.push_str(
                &json!({"image": sample.image, "prompt": sample.prompt, "reward": sample.reward, "source": sample.source})
                    .to_string(),
            );
            text.push('\n');
        }
        crate::storage::write_atomically(&folder.join("samples.jsonl"), text.as_bytes())
    }

    /// Retrains the reward model on the ratings among `samples`, registers it as a reward version, and
    /// re-scores the reward-scored samples with it. Returns its scorer for the rest of the job.
    async fn retrain_reward(
        &mut self,
        data: &Path,
        samples: &mut [Sample],
        current: &Arc<Scorer>,
    ) -> Result<(Arc<Scorer>, String)> {
        let registry = self.manager.pool.registry().clone();
        let version_id = self.version_id(current.name());
        let base = registry.version(&self.spec.base_model, "base_model").await?;
        let folder = self.folder.join("reward");
        if folder.exists() {
            let _ = std::fs::remove_dir_all(&folder);
        }
        let mut command = self.python("jobs.retrain_reward");
        for (flag, value) in [
            ("--samples", data.join("samples.jsonl").to_string_lossy().into_owned()),
            (
                "--tokenizer",
                registry.folder(&base).join("tokenizer").to_string_lossy().into_owned(),
            ),
            ("--out", folder.to_string_lossy().into_owned()),
            ("--name", version_id.clone()),
            ("--seed", self.spec.seed.to_string()),
            ("--threads", self.manager.config.trainer_threads.to_string()),
        ] {
            command.extend([flag.to_string(), value]);
        }
        let lines = self.run_tool(&command, "reward_trainer").await?;
        let retrained = lines
            .iter()
            .rev()
            .find(|line| line["event"] == "retrained")
            .cloned()
            .unwrap_or(Value::Null);
        let scorer = self
            .manager
            .pool
            .loader()
            .load_reward(folder.clone())
            .await
            .map_err(|err| {
                Error::Internal(format!(
                    "the retrained reward model was refused: it does not load: {err}"
                ))
            })?;
        let scorer = Arc::new(scorer);
        // Re-score what the old reward model scored; people's ratings keep their labels.
        let indices: Vec<usize> = (0..samples.len())
            .filter(|&index| samples[index].source == "reward_model")
            .collect();
        for chunk in indices.chunks(64) {
            self.check_cancelled()?;
            let mut pixels = Vec::new();
            let mut prompts = Vec::new();
            for &index in chunk {
                let bytes = std::fs::read(data.join(&samples[index].image))
                    .map_err(|err| Error::Internal(format!("cannot read {}: {err}", samples[index].image)))?;
                let image = crate::reward::preprocess::decode_image(&bytes, u64::MAX, "image")?;
                scorer.preprocessor().pixel_values_into(&image, &mut pixels);
                prompts.push(samples[index].prompt.clone());
            }
            let scored = scorer.score(prompts, pixels).await?;
            for (&index, value) in chunk.iter().zip(scored.scores) {
                samples[index].reward = f64::from(value);
            }
        }
        let record = registry
            .register_candidate(Candidate {
                kind: crate::storage::VersionKind::Reward,
                folder: &folder,
                id: &version_id,
                parent: current.name(),
                job_id: &self.job.id,
                metrics: &retrained,
            })
            .await?;
        let mean_reward = mean(indices.iter().map(|&index| samples[index].reward));
        self.metrics["reward_model"] = json!({
            "version": record.id,
            "parent": current.name(),
            "retrained": retrained,
            "rescored_samples": indices.len(),
            "mean_reward": mean_reward,
        });
        let note = format!(
            "reward model {} retrained on the ratings and registered; {} samples re-scored, mean reward {}",
            record.id,
            indices.len(),
            fmt(mean_reward)
        );
        Ok((scorer, note))
    }

    /// Runs a tool to its end, cancellable; each JSON line of its stdout becomes an event of `kind`.
    async fn run_tool(&self, command: &[String], kind: &str) -> Result<Vec<Value>> {
        let log = self.folder.join("tools.log");
        let mut child = RunningChild::spawn(command, &log, &self.manager.config.trainer_dir)?;
        let mut cancelled = self.cancelled.clone();
        let mut lines = Vec::new();
        loop {
            tokio::select! {
                line = child.next_line() => {
                    let Some(line) = line? else { break };
                    if let Ok(value) = serde_json::from_str::<Value>(&line) {
                        let level = if value["event"] == "error" { "error" } else { "info" };
                        let message = value["message"].as_str().map_or_else(
                            || format!("{kind}: {}", value["event"].as_str().unwrap_or("line")),
                            str::to_string,
                        );
                        let _ = self.manager.storage.insert_event(&self.job.id, level, kind, &message, Some(&value)).await;
                        lines.push(value);
                    }
                }
                changed = cancelled.changed() => {
                    if changed.is_err() || *cancelled.borrow() {
                        child.kill_group(Duration::from_secs(10)).await;
                        return Err(Error::Cancelled);
                    }
                }
            }
        }
        let status = child.wait().await?;
        if !status.success() {
            let detail = lines
                .iter()
                .rev()
                .find(|line| line["event"] == "error")
                .and_then(|line| line["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| log_tail(&log, 1500));
            return Err(Error::Internal(format!(
                "`{}` failed ({status}): {detail}",
                command.join(" ")
            )));
        }
        Ok(lines)
    }

    async fn train(&mut self, data: &Path, candidate: &Path) -> Result<()> {
        if candidate.exists() {
            std::fs::remove_dir_all(candidate)
                .map_err(|err| Error::Internal(format!("cannot clear {}: {err}", candidate.display())))?;
        }
        let base_folder = {
            let version = self
                .manager
                .pool
                .registry()
                .version(&self.spec.base_model, "base_model")
                .await?;
            self.manager.pool.registry().folder(&version)
        };
        let hyper = &self.spec.hyperparameters;
        let pretrain = match self.spec.pretrain_data.kind.as_str() {
            "folder" => json!({"kind": "folder", "path": self.spec.pretrain_data.path}),
            _ => json!({"kind": "shapes_world", "images": self.spec.pretrain_data.images.unwrap_or(8192)}),
        };
        let trainer_spec = json!({
            "base": base_folder.join("diffusers"),
            "out": candidate,
            "samples": data.join("samples.jsonl"),
            "pretrain": pretrain,
            "beta": hyper.beta,
            "learning_rate": hyper.learning_rate,
            "lr_schedule": hyper.lr_schedule,
            "steps": hyper.steps,
            "batch_size": hyper.batch_size,
            "pretrain_fraction": hyper.pretrain_fraction,
            "train_text_encoder": hyper.train_text_encoder,
            "ema_decay": hyper.ema_decay,
            "caption_dropout": hyper.caption_dropout,
            "seed": self.spec.seed,
            "threads": self.manager.config.trainer_threads,
            // About 100 progress lines, and at least one every 25 steps.
            "log_every": (hyper.steps / 100).clamp(1, 25),
        });
        let spec_path = self.folder.join("trainer-spec.json");
        crate::storage::write_atomically(&spec_path, trainer_spec.to_string().as_bytes())?;
        let mut command = match &self.manager.config.trainer_command {
            Some(command) => command.clone(),
            None => self.python("jobs.finetune"),
        };
        command.extend(["--spec".into(), spec_path.to_string_lossy().into_owned()]);
        let log = self.folder.join("trainer.log");
        let _ = self
            .manager
            .storage
            .insert_event(
                &self.job.id,
                "info",
                "trainer",
                &format!("started: {}", command.join(" ")),
                Some(&trainer_spec),
            )
            .await;
        let mut child = RunningChild::spawn(&command, &log, &self.manager.config.trainer_dir)?;
        let mut cancelled = self.cancelled.clone();
        let mut losses = Vec::new();
        let mut trainer_error = None;
        loop {
            tokio::select! {
                line = child.next_line() => {
                    let Some(line) = line? else { break };
                    self.trainer_line(&line, &mut losses, &mut trainer_error).await;
                }
                changed = cancelled.changed() => {
                    if changed.is_err() || *cancelled.borrow() {
                        child.kill_group(Duration::from_secs(10)).await;
                        return Err(Error::Cancelled);
                    }
                }
            }
        }
        let status = child.wait().await?;
        self.metrics["trainer"] = json!({
            "final_loss": losses.last(),
            "losses": losses,
        });
        if !status.success() {
            let detail = trainer_error.unwrap_or_else(|| log_tail(&log, 1500));
            return Err(Error::Internal(format!("the trainer failed ({status}): {detail}")));
        }
        if !candidate.join("model_index.json").is_file() {
            return Err(Error::Internal(format!(
                "the trainer exited cleanly but wrote no model to {}",
                candidate.display()
            )));
        }
        Ok(())
    }

    /// One line of the trainer's stdout: a progress event, or anything else, kept as a log event.
    async fn trainer_line(&self, line: &str, losses: &mut Vec<Value>, trainer_error: &mut Option<String>) {
        let storage = &self.manager.storage;
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            let _ = storage
                .insert_event(&self.job.id, "info", "trainer_log", line, None)
                .await;
            return;
        };
        let kind = event["event"].as_str().unwrap_or("trainer").to_string();
        match kind.as_str() {
            "step" => {
                let step = event["step"].as_f64().unwrap_or(0.0);
                let steps = event["steps"].as_f64().unwrap_or(1.0).max(1.0);
                if let Some(loss) = event["loss"].as_f64() {
                    self.manager.metrics.fine_tune_trainer_loss.set(loss);
                    losses.push(json!({"step": step, "loss": loss}));
                }
                let _ = self.stage_progress("train", step / steps).await;
                let message = format!(
                    "step {step}/{steps}: loss {}",
                    event["loss"].as_f64().map_or("?".into(), |loss| format!("{loss:.5}"))
                );
                let _ = storage
                    .insert_event(&self.job.id, "info", "progress", &message, Some(&event))
                    .await;
            }
            "error" => {
                let message = event["message"].as_str().unwrap_or("the trainer failed").to_string();
                *trainer_error = Some(message.clone());
                let _ = storage
                    .insert_event(&self.job.id, "error", "trainer", &message, Some(&event))
                    .await;
            }
            _ => {
                let _ = storage
                    .insert_event(
                        &self.job.id,
                        "info",
                        "trainer",
                        &format!("trainer: {kind}"),
                        Some(&event),
                    )
                    .await;
            }
        }
    }

    /// Samples the evaluation prompts from `model` and judges them: the mean reward, and the rater's figures
    /// (`t2i_trainer.jobs.evaluate`) when the prompts are the shapes world's. `share` is its part of the stage.
    #[allow(clippy::too_many_arguments)]
    async fn evaluate(
        &self,
        model: &LoadedModel,
        scorer: &Arc<Scorer>,
        prompts: &[String],
        per_prompt: u32,
        seed: u64,
        name: &str,
        share: (f64, f64),
    ) -> Result<Value> {
        let folder = self.folder.join("eval").join(name);
        let samples = self
            .sample(
                model,
                scorer,
                prompts,
                per_prompt,
                seed,
                &folder,
                "e",
                ("evaluate", share.0, share.1),
            )
            .await?;
        let mut listing = String::new();
        for sample in &samples {
            listing.push_str(&json!({"image": sample.image, "prompt": sample.prompt}).to_string());
            listing.push('\n');
        }
        crate::storage::write_atomically(&folder.join("prompts.jsonl"), listing.as_bytes())?;
        let mut result = json!({
            "images": samples.len(),
            "mean_reward": mean(samples.iter().map(|sample| sample.reward)),
        });
        let mut command = self.python("jobs.evaluate");
        command.extend(["--images".into(), folder.to_string_lossy().into_owned()]);
        match run_to_end(
            &command,
            &self.folder.join("tools.log"),
            &self.manager.config.trainer_dir,
        )
        .await
        {
            Ok(output) => match serde_json::from_str::<Value>(output.trim()) {
                Ok(Value::Object(figures)) => {
                    for (key, value) in figures {
                        if key != "images" {
                            result[key] = value;
                        }
                    }
                }
                _ => tracing::warn!(job = %self.job.id, "t2i_trainer.jobs.evaluate printed no JSON object"),
            },
            Err(err) => {
                let _ = self
                    .manager
                    .storage
                    .insert_event(
                        &self.job.id,
                        "warning",
                        "evaluate",
                        &format!("the rater could not judge the {name} images: {err}"),
                        None,
                    )
                    .await;
            }
        }
        let _ = self
            .manager
            .storage
            .insert_event(
                &self.job.id,
                "info",
                "metrics",
                &format!(
                    "{name}: mean reward {}",
                    fmt(result["mean_reward"].as_f64().unwrap_or(f64::NAN))
                ),
                Some(&result),
            )
            .await;
        Ok(result)
    }

    /// The promotion gate: the mean reward must rise by `min_reward_gain`, and the quality proxy may fall by at
    /// most `max_quality_drop` (when the rater could judge the images).
    fn gate(&self, base: &Value, candidate: &Value) -> Value {
        let reward_gain =
            candidate["mean_reward"].as_f64().unwrap_or(f64::NAN) - base["mean_reward"].as_f64().unwrap_or(f64::NAN);
        let quality_drop = match (base["quality"].as_f64(), candidate["quality"].as_f64()) {
            (Some(base), Some(candidate)) => Some(base - candidate),
            _ => None,
        };
        let mut reasons = Vec::new();
        if !reward_gain.is_finite() || reward_gain < self.spec.min_reward_gain {
            reasons.push(format!(
                "the mean reward changed by {} (needs at least {:+.4})",
                fmt_signed(reward_gain),
                self.spec.min_reward_gain
            ));
        }
        if let Some(drop) = quality_drop {
            if drop > self.spec.max_quality_drop {
                reasons.push(format!(
                    "the quality proxy fell by {:.1} points (at most {:.1} allowed)",
                    drop * 100.0,
                    self.spec.max_quality_drop * 100.0
                ));
            }
        }
        json!({
            "passed": reasons.is_empty(),
            "reward_gain": reward_gain,
            "quality_drop": quality_drop,
            "min_reward_gain": self.spec.min_reward_gain,
            "max_quality_drop": self.spec.max_quality_drop,
            "reasons": reasons,
        })
    }
}

/// The paper weights each sample by its raw reward, "roughly in [0, 1]". A reward head trained towards 0/1
/// labels is used as it is: a score a little outside is clipped by the trainer, and one outlier must not move
/// every other weight. An unbounded reward model (a CLIP similarity, PickScore's logits) is rescaled over the
/// job's samples, min to 0 and max to 1. Returns a sentence saying so, or `None` when nothing was rescaled.
fn rescale_rewards(samples: &mut [Sample], bounded: bool) -> Option<String> {
    if bounded || samples.is_empty() {
        return None;
    }
    let (low, high) = samples
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), sample| {
            (low.min(sample.reward), high.max(sample.reward))
        });
    let span = (high - low).max(1e-12);
    for sample in samples.iter_mut() {
        sample.reward = (sample.reward - low) / span;
    }
    Some(format!(
        "the reward model's scores are unbounded (span [{low:.4}, {high:.4}]); rescaled min-max to [0, 1] as the trainer's weights"
    ))
}

fn gate_line(gate: &Value) -> String {
    let reasons: Vec<&str> = gate["reasons"]
        .as_array()
        .map(|reasons| reasons.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if reasons.is_empty() {
        format!(
            "passed: reward {}, quality proxy {}",
            fmt_signed(gate["reward_gain"].as_f64().unwrap_or(f64::NAN)),
            gate["quality_drop"]
                .as_f64()
                .map_or("not measured".into(), |drop| format!("{:+.1} points", -drop * 100.0))
        )
    } else {
        format!("refused: {}", reasons.join("; "))
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(sum, count), value| (sum + value, count + 1));
    if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    }
}

fn fmt(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.4}")
    } else {
        "n/a".into()
    }
}

fn fmt_signed(value: f64) -> String {
    if value.is_finite() {
        format!("{value:+.4}")
    } else {
        "n/a".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rewards: &[f64]) -> Vec<Sample> {
        rewards
            .iter()
            .map(|&reward| Sample {
                image: "x.png".into(),
                prompt: "a red circle".into(),
                reward,
                source: "reward_model",
            })
            .collect()
    }

    #[test]
    fn a_reward_head_keeps_its_scores_and_one_outlier_moves_nothing() {
        let mut head = samples(&[-6.4, 0.1, 0.9, 1.3]);
        assert!(rescale_rewards(&mut head, true).is_none());
        let kept: Vec<f64> = head.iter().map(|sample| sample.reward).collect();
        assert_eq!(kept, vec![-6.4, 0.1, 0.9, 1.3]);
    }

    #[test]
    fn an_unbounded_similarity_is_rescaled_to_the_unit_interval() {
        let mut clip = samples(&[-8.0, -7.0, -6.0]);
        let note = rescale_rewards(&mut clip, false).unwrap();
        assert!(note.contains("unbounded"), "{note}");
        let scaled: Vec<f64> = clip.iter().map(|sample| sample.reward).collect();
        assert_eq!(scaled, vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn stages_cover_the_job_in_order() {
        let mut previous = 0.0;
        for (name, end) in STAGES {
            let (start, stop) = stage_bounds(name);
            assert_eq!(start, previous, "{name}");
            assert_eq!(stop, end);
            previous = end;
        }
        assert_eq!(previous, 1.0);
    }
}
