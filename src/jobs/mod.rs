//! Fine-tune jobs (#5): the stage list and `execute`, which runs a job's stages in order. Each stage's work has
//! its own module: `manager` (the queue and runner), `sampling` (prompts, samples, ratings), `reward` (retraining
//! the reward model), `trainer` (the trainer child and its typed spec), `evaluate` (evaluation and the gate);
//! `context` holds what every stage shares, `child` follows child processes, `metrics` types the figures, and
//! `spec` validates the request.
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
pub mod context;
pub mod evaluate;
pub mod gate;
pub mod graphs;
pub mod launch;
pub mod manager;
pub mod metrics;
pub mod pretrain_filter;
pub mod relabel;
pub mod reward;
pub mod sampling;
pub mod spec;
pub mod trainer;

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::registry::Candidate;
use context::{fmt, mean, JobContext};
use metrics::{EvaluationPair, SampleFigures, TrainingSetFigures};
use sampling::rescale_rewards;

pub use gate::GateRule;
pub use manager::JobManager;
pub use spec::{FineTuneRequest, JobLimits, JobSpec, PromptSource};

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
    /// One process, or torchrun on one or several nodes (ignored with `trainer_command`).
    pub launch: launch::TrainerLaunch,
    /// Whether this replica claims and runs jobs (`--roles worker`); an API-only one only queues them.
    pub worker: bool,
    /// How long a worker's lease on a running job lasts; renewed every third of it (#25).
    pub lease: std::time::Duration,
    /// Attempts a job gets before a stopped worker's job fails.
    pub max_attempts: u32,
    /// The trainer writes a checkpoint every this many steps (0: none), kept in the object store so that a
    /// reclaimed job goes on from it.
    pub checkpoint_every: u32,
    /// What one tenant may queue and use (#28).
    pub quota: JobQuota,
    pub limits: JobLimits,
    pub gate: GateRule,
}

/// Per-tenant limits on fine-tune jobs (`--tenant-max-jobs`, `--tenant-job-minutes-per-day`); 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobQuota {
    /// Jobs queued or running at once.
    pub max_jobs: u32,
    /// Minutes of jobs run in any 24 hours.
    pub minutes_per_day: u32,
}

impl Default for JobQuota {
    fn default() -> Self {
        JobQuota {
            max_jobs: 2,
            minutes_per_day: 240,
        }
    }
}

impl JobQuota {
    /// Refuses a new job of `tenant` with a 429 naming the limit when it has `active` jobs queued or running
    /// and has used `used_ms` of job time in the last 24 hours, of which the oldest stretch leaves the window
    /// after `frees_in_ms`.
    pub fn check(&self, tenant: &str, active: u64, used_ms: i64, frees_in_ms: i64) -> crate::error::Result<()> {
        if self.max_jobs > 0 && active >= u64::from(self.max_jobs) {
            return Err(Error::Quota {
                message: format!(
                    "tenant `{tenant}` has {active} fine-tune jobs queued or running, its limit \
                     (--tenant-max-jobs {}); retry when one ends, or cancel one",
                    self.max_jobs
                ),
                limit: "--tenant-max-jobs",
                retry_after_secs: 60,
            });
        }
        let budget_ms = i64::from(self.minutes_per_day) * 60_000;
        if self.minutes_per_day > 0 && used_ms >= budget_ms {
            return Err(Error::Quota {
                message: format!(
                    "tenant `{tenant}` has used {:.1} minutes of fine-tune jobs in the last 24 hours, its limit \
                     (--tenant-job-minutes-per-day {})",
                    used_ms as f64 / 60_000.0,
                    self.minutes_per_day
                ),
                limit: "--tenant-job-minutes-per-day",
                retry_after_secs: (frees_in_ms.max(1000) as u64).div_ceil(1000),
            });
        }
        Ok(())
    }
}

impl JobContext<'_> {
    /// Runs the job's stages in order; returns the version it registered.
    pub(super) async fn execute(&mut self) -> Result<String> {
        std::fs::create_dir_all(&self.folder)
            .map_err(|err| Error::Internal(format!("cannot create {}: {err}", self.folder.display())))?;
        let scorer = self
            .services
            .rewards
            .get(self.spec.reward_model.as_deref(), "reward_model")?
            .clone();
        let base = self
            .services
            .pool
            .get(Some(&self.spec.base_model), "base_model", None)
            .await?;

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
        self.metrics.samples = Some(SampleFigures {
            images: sampled.len(),
            mean_reward: sampled_mean,
            reward_model: scorer.name().to_string(),
            rescaled: None,
        });
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
            self.services
                .storage
                .insert_job_event(&self.lease, "warning", "label", &note, None)
                .await?;
            if let Some(figures) = self.metrics.samples.as_mut() {
                figures.rescaled = Some(note);
            }
        }
        let reward_scored = sampled.len();
        samples.extend(sampled);
        let (mut relabelled, mut relabel_candidates) = (0, 0);
        if let Some(relabel) = self.spec.relabel.clone() {
            let found = self.relabel(&scorer, &relabel, &prompts, &samples, &data).await?;
            relabel_candidates = found.candidates;
            relabelled = found.samples.len();
            samples.extend(found.samples);
        }
        self.write_samples(&data, &samples)?;
        if !samples.iter().any(|sample| sample.reward > 0.0) {
            return Err(Error::Validation {
                message: "no training sample has a reward above 0: rate some images good, or sample more".into(),
                param: None,
            });
        }
        self.metrics.training_set = Some(TrainingSetFigures {
            samples: samples.len(),
            rated,
            reward_scored,
            relabelled,
            relabel_candidates,
            mean_reward: mean(samples.iter().map(|sample| sample.reward)),
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
        // The pre-training data the reward model keeps (`pretrain_data.filter`), judged by the job's reward
        // model as it is at this stage.
        let mut pretrain_folder = None;
        let mut pretrain_note = String::new();
        if let Some(filter) = self.spec.pretrain_data.filter.clone() {
            let kept = self.folder.join("pretrain");
            let figures = self.pretrain_kept(&scorer, &filter, &kept).await?;
            pretrain_note = format!(
                "; pre-training data: {} of {} images kept by the reward model ({} judged, {} preferred{}{})",
                figures.kept,
                figures.images,
                figures.judged,
                figures.preferred,
                if figures.balance { ", balanced" } else { "" },
                figures
                    .reused_from
                    .as_ref()
                    .map(|job| format!("; as judged by job {job}"))
                    .unwrap_or_default()
            );
            self.metrics.pretrain = Some(figures);
            pretrain_folder = Some(kept);
        }
        self.end(
            stage,
            &format!(
                "{} training samples: {rated} rated by people{which}, {reward_scored} scored by the reward model{}{pretrain_note}",
                samples.len(),
                if self.spec.relabel.is_some() {
                    format!(", {relabelled} relabelled (of {relabel_candidates} images below the threshold with a sibling prompt)")
                } else {
                    String::new()
                }
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
        self.train(&data, &candidate, pretrain_folder.as_deref()).await?;
        self.end(stage, "the trainer finished and exported the candidate")
            .await?;

        let stage = self.begin("evaluate").await?;
        let candidate_model = self
            .services
            .pool
            .load_folder(format!("{}-candidate", self.job.id), candidate.clone())
            .await
            .map_err(|err| Error::Internal(format!("the candidate was refused: it does not load: {err}")))?;
        // Jobs stored before #26 evaluated with the job's seed.
        let eval_seed = self
            .spec
            .eval_seed
            .unwrap_or_else(|| self.spec.seed.wrapping_add(spec::DEFAULT_EVAL_SEED));
        let per_prompt = self.spec.eval_images_per_prompt;
        let (base_eval, base_prompts, base_cached) = self
            .evaluate_base(&base, &scorer, &eval_prompts, per_prompt, eval_seed, (0.0, 0.5))
            .await?;
        let (candidate_eval, candidate_prompts) = self
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
        let mut gate = gate::decide(&base_prompts, &candidate_prompts, &self.spec.gate, eval_seed);
        gate.base_cached = base_cached;
        self.metrics.evaluation = Some(EvaluationPair {
            base: base_eval,
            candidate: candidate_eval,
        });
        self.metrics.gate = Some(gate.clone());
        self.end(stage, &format!("gate {}", gate::gate_line(&gate))).await?;

        let stage = self.begin("register").await?;
        let version_id = self.version_id(&self.spec.base_model);
        let record = self
            .services
            .pool
            .registry()
            .register_candidate(Candidate {
                kind: crate::storage::VersionKind::Diffusion,
                folder: &candidate,
                id: &version_id,
                parent: &self.spec.base_model,
                job_id: &self.job.id,
                lease: Some(&self.lease),
                metrics: &self.metrics_value(),
                tenant: Some(&self.job.tenant),
            })
            .await?;
        self.services.storage.set_job_result(&self.lease, &record.id).await?;
        let passed = gate.passed;
        let outcome = if !passed {
            format!(
                "registered {version_id}; not activated: the gate {}",
                gate::gate_line(&gate)
            )
        } else if self.spec.activate_on_success {
            self.services.pool.activate(&version_id, "base_model").await?;
            format!("registered and activated {version_id}")
        } else {
            format!("registered {version_id}; it passed the gate (activate_on_success is false)")
        };
        self.metrics.activated = Some(passed && self.spec.activate_on_success);
        self.services
            .storage
            .set_job_metrics(&self.lease, &self.metrics_value())
            .await?;
        self.end(stage, &outcome).await?;
        // The samples and evaluation images are the job's; the version keeps only what it serves.
        let _ = std::fs::remove_dir_all(self.folder.join("eval"));
        Ok(version_id)
    }
}

#[cfg(test)]
mod quota_tests {
    use super::JobQuota;

    #[test]
    fn a_tenant_at_either_limit_gets_a_429_naming_it() {
        let quota = JobQuota {
            max_jobs: 2,
            minutes_per_day: 10,
        };
        assert!(quota.check("acme", 1, 9 * 60_000, 0).is_ok());
        let busy = quota.check("acme", 2, 0, 0).unwrap_err();
        assert_eq!(busy.kind(), "quota_exceeded");
        assert!(busy.to_string().contains("--tenant-max-jobs 2"), "{busy}");
        let spent = quota.check("acme", 0, 10 * 60_000, 90_500).unwrap_err();
        assert!(spent.to_string().contains("--tenant-job-minutes-per-day 10"), "{spent}");
        let crate::error::Error::Quota {
            retry_after_secs,
            limit,
            ..
        } = spent
        else {
            unreachable!()
        };
        assert_eq!((retry_after_secs, limit), (91, "--tenant-job-minutes-per-day"));
        let unlimited = JobQuota {
            max_jobs: 0,
            minutes_per_day: 0,
        };
        assert!(unlimited.check("acme", 1000, i64::MAX, 0).is_ok());
    }
}
