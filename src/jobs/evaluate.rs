//! The `evaluate` stage: base and candidate sample the evaluation prompts with the same seeds, the reward model
//! and the shapes world's rater (`t2i_trainer.jobs.evaluate`) judge both, and the gate (`jobs::gate`) decides
//! whether the candidate may become active.
//!
//! The base's evaluation is cached in the object store under `eval-cache/<base>/<key>.json`, where the key
//! hashes everything its figures depend on: the base version, the reward model, the prompts, the images per
//! prompt, the seed, the sampler's defaults, and the rater's and evaluator's sources. Jobs that start from the
//! same version and evaluate the same way sample it once.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::jobs::context::{fmt, mean, JobContext};
use crate::jobs::gate::{prompt_figures, PromptFigures};
use crate::jobs::metrics::Evaluation;
use crate::reward::Scorer;
use crate::serving::LoadedModel;

/// A base version's cached evaluation.
#[derive(Serialize, Deserialize)]
struct CachedEvaluation {
    key: Value,
    evaluation: Evaluation,
    prompts: Vec<PromptFigures>,
}

/// The rater's and evaluator's sources, whose change makes cached figures stale.
const JUDGE_SOURCES: [&str; 3] = [
    "t2i_trainer/build/rater.py",
    "t2i_trainer/jobs/evaluate.py",
    "t2i_trainer/build/shapes_world.py",
];

impl JobContext<'_> {
    /// The base's evaluation, from the cache when an earlier job evaluated it the same way; otherwise
    /// sampled, judged and cached. Returns whether it came from the cache.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn evaluate_base(
        &self,
        model: &LoadedModel,
        scorer: &Arc<Scorer>,
        prompts: &[String],
        per_prompt: u32,
        seed: u64,
        share: (f64, f64),
    ) -> Result<(Evaluation, Vec<PromptFigures>, bool)> {
        let mut sources = Sha256::new();
        for source in JUDGE_SOURCES {
            // A missing source hashes as empty: the evaluation itself will then say what is wrong.
            sources.update(std::fs::read(self.services.config.trainer_dir.join(source)).unwrap_or_default());
            sources.update([0]);
        }
        let key = json!({
            "base": model.version,
            "reward_model": scorer.name(),
            "prompts": prompts,
            "images_per_prompt": per_prompt,
            "seed": seed,
            "steps": model.limits.default_steps,
            "guidance_scale": model.limits.default_guidance_scale,
            "scheduler": format!("{:?}", model.limits.default_scheduler),
            "size": [model.limits.default_height, model.limits.default_width],
            "judge": crate::storage::hex(&sources.finalize()),
        });
        let digest = crate::storage::hex(&Sha256::digest(key.to_string().as_bytes()));
        let blob = format!("eval-cache/{}/{}.json", model.version, &digest[..32]);
        let blobs = self.services.storage.blobs();
        if let Ok(bytes) = blobs.get(&blob).await {
            match serde_json::from_slice::<CachedEvaluation>(&bytes) {
                Ok(cached) if cached.key == key => {
                    self.stage_progress("evaluate", share.1).await?;
                    return Ok((cached.evaluation, cached.prompts, true));
                }
                _ => {
                    tracing::warn!(job = %self.job.id, blob, "a cached base evaluation did not match; evaluating again")
                }
            }
        }
        let (evaluation, figures) = self
            .evaluate(model, scorer, prompts, per_prompt, seed, "base", share)
            .await?;
        let cached = CachedEvaluation {
            key,
            evaluation,
            prompts: figures,
        };
        match serde_json::to_vec(&cached) {
            Ok(bytes) => {
                if let Err(err) = blobs.put(&blob, bytes).await {
                    tracing::warn!(job = %self.job.id, "cannot cache the base's evaluation: {err}");
                }
            }
            Err(err) => tracing::warn!(job = %self.job.id, "cannot cache the base's evaluation: {err}"),
        }
        Ok((cached.evaluation, cached.prompts, false))
    }

    /// Samples the evaluation prompts from `model` and judges them: the mean reward, and the rater's figures
    /// (`t2i_trainer.jobs.evaluate`) when the prompts are the shapes world's; and the same per prompt, for the
    /// gate. `share` is its part of the stage.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn evaluate(
        &self,
        model: &LoadedModel,
        scorer: &Arc<Scorer>,
        prompts: &[String],
        per_prompt: u32,
        seed: u64,
        name: &str,
        share: (f64, f64),
    ) -> Result<(Evaluation, Vec<PromptFigures>)> {
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
        let mut result = Evaluation {
            images: samples.len(),
            mean_reward: mean(samples.iter().map(|sample| sample.reward)),
            rater: Map::new(),
        };
        let rewards: Vec<(String, f64)> = samples
            .iter()
            .map(|sample| (sample.prompt.clone(), sample.reward))
            .collect();
        let mut rater_rows = Vec::new();
        let mut command = self.python("jobs.evaluate");
        command.extend(["--images".into(), folder.to_string_lossy().into_owned()]);
        match self.run_to_end(&command).await {
            Ok(output) => match serde_json::from_str::<Value>(output.trim()) {
                Ok(Value::Object(mut figures)) => {
                    if let Some(Value::Array(rows)) = figures.remove("rows") {
                        rater_rows = rows;
                    }
                    result.rater = figures.into_iter().filter(|(key, _)| key != "images").collect();
                }
                _ => tracing::warn!(job = %self.job.id, "t2i_trainer.jobs.evaluate printed no JSON object"),
            },
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(err) => {
                let _ = self
                    .services
                    .storage
                    .insert_job_event(
                        &self.lease,
                        "warning",
                        "evaluate",
                        &format!("the rater could not judge the {name} images: {err}"),
                        None,
                    )
                    .await;
            }
        }
        let _ = self
            .services
            .storage
            .insert_job_event(
                &self.lease,
                "info",
                "metrics",
                &format!("{name}: mean reward {}", fmt(result.mean_reward)),
                serde_json::to_value(&result).ok().as_ref(),
            )
            .await;
        Ok((result, prompt_figures(&rewards, &rater_rows)))
    }
}
