//! A running job's context: its spec, folder and figures so far, and the bookkeeping every stage shares:
//! recording a stage's start, progress and end, checking for cancellation, and running the trainer package's
//! tools as children.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::jobs::child::{run_to_end, Follower};
use crate::jobs::metrics::{JobMetrics, PretrainFigures};
use crate::jobs::spec::JobSpec;
use crate::jobs::{JobConfig, STAGES};
use crate::metrics::Metrics;
use crate::reward::RewardSet;
use crate::serving::ModelPool;
use crate::storage::{JobRecord, Lease, Storage};

/// What a job's stages use of the server: the database, the loaded models, the reward models, the metrics and
/// how jobs run. The manager owns it and lends it to each running job.
pub struct JobServices {
    pub(super) storage: Arc<Storage>,
    pub(super) pool: Arc<ModelPool>,
    pub(super) rewards: Arc<RewardSet>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) config: JobConfig,
    /// The pre-training filter's results this worker has made, by what they depend on (`jobs::pretrain_filter`).
    pub(super) kept_pretrain: std::sync::Mutex<std::collections::HashMap<u64, KeptPretrain>>,
}

/// A pre-training filter's result that a later job on this worker may link rather than judge again: the job
/// that judged, the folder it kept, and its figures.
#[derive(Debug, Clone)]
pub(super) struct KeptPretrain {
    pub(super) job: String,
    pub(super) folder: PathBuf,
    pub(super) figures: PretrainFigures,
}

/// A stage in progress: its name (one of `STAGES`) and when it began.
pub(super) struct Stage {
    name: &'static str,
    started: Instant,
}

/// One running job: its spec, folder and the figures gathered so far.
pub(super) struct JobContext<'a> {
    pub(super) services: &'a JobServices,
    pub(super) job: &'a JobRecord,
    /// The attempt's lease: every write the job makes is fenced by it.
    pub(super) lease: Lease,
    pub(super) spec: JobSpec,
    pub(super) folder: PathBuf,
    pub(super) cancelled: watch::Receiver<bool>,
    pub(super) metrics: JobMetrics,
}

/// Where a stage starts and ends, as shares of the whole job.
pub(super) fn stage_bounds(stage: &str) -> (f64, f64) {
    let index = STAGES.iter().position(|(name, _)| *name == stage).unwrap_or(0);
    let start = if index == 0 { 0.0 } else { STAGES[index - 1].1 };
    (start, STAGES[index].1)
}

impl JobContext<'_> {
    /// The id of the version this job makes from `parent`: the root of its lineage, `-ft-` and the job's id
    /// (shortened), so a fine-tune of a fine-tune does not grow a longer name.
    pub(super) fn version_id(&self, parent: &str) -> String {
        let root = parent.split("-ft-").next().unwrap_or(parent);
        let short: String = self.job.id.trim_start_matches("ft_").chars().take(8).collect();
        format!("{root}-ft-{short}")
    }

    /// Records a stage's start; `end` records its finish.
    pub(super) async fn begin(&self, stage: &'static str) -> Result<Stage> {
        self.check_cancelled()?;
        let (start, _) = stage_bounds(stage);
        self.services.storage.set_job_stage(&self.lease, stage, start).await?;
        self.services
            .storage
            .insert_job_event(&self.lease, "info", "stage", &format!("{stage}: started"), None)
            .await?;
        Ok(Stage {
            name: stage,
            started: Instant::now(),
        })
    }

    pub(super) async fn end(&self, stage: Stage, message: &str) -> Result<()> {
        let Stage { name: stage, started } = stage;
        let seconds = started.elapsed().as_secs_f64();
        self.services
            .metrics
            .fine_tune_stage_duration
            .with_label_values(&[stage])
            .observe(seconds);
        let (_, end) = stage_bounds(stage);
        self.services.storage.set_job_progress(&self.lease, end).await?;
        self.services
            .storage
            .set_job_metrics(&self.lease, &self.metrics_value())
            .await?;
        self.services
            .storage
            .insert_job_event(
                &self.lease,
                "info",
                "stage",
                &format!("{stage}: done in {seconds:.1} s; {message}"),
                Some(&json!({"stage": stage, "seconds": seconds})),
            )
            .await?;
        Ok(())
    }

    /// Progress within a stage (0..1 of it).
    pub(super) async fn stage_progress(&self, stage: &str, fraction: f64) -> Result<()> {
        let (start, end) = stage_bounds(stage);
        self.services
            .storage
            .set_job_progress(&self.lease, start + (end - start) * fraction.clamp(0.0, 1.0))
            .await
    }

    pub(super) fn check_cancelled(&self) -> Result<()> {
        if *self.cancelled.borrow() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    /// `<python> -m t2i_trainer.<module>`; the child finds the package through PYTHONPATH (`child_environment`).
    pub(super) fn python(&self, module: &str) -> Vec<String> {
        vec![
            self.services.config.python.to_string_lossy().into_owned(),
            "-m".into(),
            format!("t2i_trainer.{module}"),
        ]
    }

    /// Runs a tool to its end, cancellable; each JSON line of its stdout becomes an event of `kind`.
    pub(super) async fn run_tool(&self, command: &[String], kind: &str) -> Result<Vec<Value>> {
        let mut child = self.follow(command, "tools.log")?;
        let mut lines = Vec::new();
        while let Some(line) = child.next_line().await? {
            if let Ok(value) = serde_json::from_str::<Value>(&line) {
                let level = if value["event"] == "error" { "error" } else { "info" };
                let message = value["message"].as_str().map_or_else(
                    || format!("{kind}: {}", value["event"].as_str().unwrap_or("line")),
                    str::to_string,
                );
                let _ = self
                    .services
                    .storage
                    .insert_job_event(&self.lease, level, kind, &message, Some(&value))
                    .await;
                lines.push(value);
            }
        }
        let detail = lines
            .iter()
            .rev()
            .find(|line| line["event"] == "error")
            .and_then(|line| line["message"].as_str().map(str::to_string));
        child.finish(detail).await?;
        Ok(lines)
    }

    /// Runs a short tool to its end, cancellable, and returns its stdout.
    pub(super) async fn run_to_end(&self, command: &[String]) -> Result<String> {
        run_to_end(
            command,
            &self.folder.join("tools.log"),
            &self.services.config.trainer_dir,
            self.cancelled.clone(),
        )
        .await
    }

    /// Starts a child that the job follows, its stderr appended to `log` in the job's folder.
    pub(super) fn follow(&self, command: &[String], log: &str) -> Result<Follower> {
        Follower::spawn(
            command,
            &self.folder.join(log),
            &self.services.config.trainer_dir,
            self.cancelled.clone(),
        )
    }

    /// The figures so far as JSON, as stored with the job and its version.
    pub(super) fn metrics_value(&self) -> Value {
        serde_json::to_value(&self.metrics).unwrap_or(Value::Null)
    }
}

pub(super) fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(sum, count), value| (sum + value, count + 1));
    if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    }
}

pub(super) fn fmt(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.4}")
    } else {
        "n/a".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
