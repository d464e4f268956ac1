//! The `reward` stage (`retrain_reward_model`, paper §3.2): the reward model retrained on the job's ratings by
//! `t2i_trainer.jobs.retrain_reward`, loaded through the server's loader, registered as a reward version, and the
//! reward-scored samples re-scored with it.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::jobs::context::{fmt, mean, JobContext};
use crate::jobs::metrics::RewardModelFigures;
use crate::jobs::sampling::{sample_pixels, Sample};
use crate::registry::Candidate;
use crate::reward::Scorer;

impl JobContext<'_> {
    /// Retrains the reward model on the ratings among `samples`, registers it as a reward version, and
    /// re-scores the reward-scored samples with it. Returns its scorer for the rest of the job.
    pub(super) async fn retrain_reward(
        &mut self,
        data: &Path,
        samples: &mut [Sample],
        current: &Arc<Scorer>,
    ) -> Result<(Arc<Scorer>, String)> {
        let registry = self.services.pool.registry().clone();
        let version_id = self.version_id(current.name());
        let base = registry.version(&self.spec.base_model, "base_model").await?;
        let base_folder = registry.fetch(&base).await?;
        let folder = self.folder.join("reward");
        if folder.exists() {
            let _ = std::fs::remove_dir_all(&folder);
        }
        let mut command = self.python("jobs.retrain_reward");
        for (flag, value) in [
            ("--samples", data.join("samples.jsonl").to_string_lossy().into_owned()),
            (
                "--tokenizer",
                base_folder.join("tokenizer").to_string_lossy().into_owned(),
            ),
            ("--out", folder.to_string_lossy().into_owned()),
            ("--name", version_id.clone()),
            ("--seed", self.spec.seed.to_string()),
            ("--threads", self.services.config.trainer_threads.to_string()),
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
            .services
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
        // Re-score what the old reward model scored (relabelled images too, under their new prompts); people's
        // ratings keep their labels.
        let indices: Vec<usize> = (0..samples.len())
            .filter(|&index| matches!(samples[index].source, "reward_model" | "relabelled"))
            .collect();
        for chunk in indices.chunks(64) {
            self.check_cancelled()?;
            let mut pixels = Vec::new();
            let mut prompts = Vec::new();
            for &index in chunk {
                sample_pixels(
                    data,
                    &samples[index].image,
                    scorer.preprocessor(),
                    u64::MAX,
                    &mut pixels,
                )?;
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
                lease: Some(&self.lease),
                metrics: &retrained,
                tenant: Some(&self.job.tenant),
            })
            .await?;
        let mean_reward = mean(indices.iter().map(|&index| samples[index].reward));
        self.metrics.reward_model = Some(RewardModelFigures {
            version: record.id.clone(),
            parent: current.name().to_string(),
            retrained,
            rescored_samples: indices.len(),
            mean_reward,
        });
        let note = format!(
            "reward model {} retrained on the ratings and registered; {} samples re-scored, mean reward {}",
            record.id,
            indices.len(),
            fmt(mean_reward)
        );
        Ok((scorer, note))
    }
}
