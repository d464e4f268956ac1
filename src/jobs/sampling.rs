//! The job's data: its prompts (a list, or the shapes world's generator), samples from a version through its
//! engine, each scored by the reward model, and the stored ratings; written as `samples.jsonl` for the trainer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::batching::Priority;
use crate::error::{Error, Result};
use crate::jobs::context::JobContext;
use crate::jobs::spec::PromptSource;
use crate::pipeline::request::check_work;
use crate::pipeline::{GenerateParams, RequestLimits};
use crate::reward::best_of::Selection;
use crate::reward::preprocess::{decode_image, Preprocessor};
use crate::reward::{GeneratePlan, Scorer};
use crate::serving::LoadedModel;
use crate::storage::{FeedbackQuery, Label};

/// One sample of the training set.
pub(super) struct Sample {
    pub(super) image: String,
    pub(super) prompt: String,
    pub(super) reward: f64,
    pub(super) source: &'static str,
}

impl JobContext<'_> {
    pub(super) async fn prompts(&self, source: &PromptSource, default_split: &str) -> Result<Vec<String>> {
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
        let output = self.run_to_end(&command).await?;
        let prompts: Vec<String> = output
            .lines()
            .map(str::to_string)
            .filter(|line| !line.is_empty())
            .collect();
        if prompts.is_empty() {
            return Err(Error::Internal(format!("`{}` listed no prompts", command.join(" "))));
        }
        let limit = self.services.config.limits.max_prompts;
        if prompts.len() > limit {
            return Err(Error::validation(
                "prompts",
                format!(
                    "the {} split has {} prompts, more than --max-job-prompts {limit}: give `count` or `per_category`",
                    generator.split.as_deref().unwrap_or(default_split),
                    prompts.len()
                ),
            ));
        }
        Ok(prompts)
    }

    /// `per_prompt` images of each prompt from `model`, scored; PNGs written to `folder` as `<tag><i>-<j>.png`.
    /// Progress is reported over `progress`: a stage and the share of it, from and to, that this sampling is.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn sample(
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
            width: model.limits.default_width,
            height: model.limits.default_height,
            eta: 0.0,
            guidance_rescale: 0.0,
            aesthetic_score: Default::default(),
            init: None,
        };
        // One prompt's images are one request through the batcher: held to --max-work as users' requests are,
        // before anything is sampled.
        let limits = RequestLimits {
            max_work: self.services.config.limits.max_work,
            ..RequestLimits::default()
        };
        check_work(&params(0, ""), per_prompt as usize, &limits).map_err(|err| {
            let images_field = if stage == "evaluate" {
                "eval_images_per_prompt"
            } else {
                "images_per_prompt"
            };
            Error::validation(
                images_field,
                format!("{images_field} {per_prompt} at this model's defaults: {err}"),
            )
        })?;
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
    pub(super) async fn sample_one(
        &self,
        model: &LoadedModel,
        scorer: &Arc<Scorer>,
        params: GenerateParams,
    ) -> Result<crate::batching::Completed> {
        loop {
            self.check_cancelled()?;
            // Background: users' requests on the same engine come first (#29).
            let plan = GeneratePlan::new(params.clone(), Selection::BestOf { k: 1 }, Some(scorer.clone()));
            match model.engine.generate_as(plan, None, Priority::Background).await {
                Err(Error::Overloaded { retry_after_secs, .. }) => {
                    tokio::time::sleep(Duration::from_secs(retry_after_secs.min(5))).await;
                }
                other => return other,
            }
        }
    }

    /// The job's tenant's stored ratings as samples: good 1, bad 0 (skips are left out), each image copied into
    /// `folder`. Another tenant's ratings never train this tenant's model.
    pub(super) async fn feedback_samples(&self, folder: &Path) -> Result<Vec<Sample>> {
        let storage = &self.services.storage;
        let mut samples = Vec::new();
        let filter = &self.spec.feedback_filter;
        let mut query = FeedbackQuery {
            limit: 500,
            model: filter.model.clone(),
            rater: filter.rater.clone(),
            tenant: Some(self.job.tenant.clone()),
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

    pub(super) fn write_samples(&self, folder: &Path, samples: &[Sample]) -> Result<()> {
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
}

/// Appends the reward model's pixel values of the job's image `name` (a file in `folder`) to `out`;
/// `max_pixels` bounds the decoded image.
pub(super) fn sample_pixels(
    folder: &Path,
    name: &str,
    preprocessor: &Preprocessor,
    max_pixels: u64,
    out: &mut Vec<f32>,
) -> Result<()> {
    let path = folder.join(name);
    let bytes =
        std::fs::read(&path).map_err(|err| Error::Internal(format!("cannot read {}: {err}", path.display())))?;
    let image = decode_image(&bytes, max_pixels, "image")?;
    preprocessor.pixel_values_into(&image, out);
    Ok(())
}

/// The paper weights each sample by its raw reward, "roughly in [0, 1]". A reward head trained towards 0/1
/// labels is used as it is: a score a little outside is clipped by the trainer, and one outlier must not move
/// every other weight. An unbounded reward model (a CLIP similarity, PickScore's logits) is rescaled over the
/// job's samples, min to 0 and max to 1. Returns a sentence saying so, or `None` when nothing was rescaled.
pub(super) fn rescale_rewards(samples: &mut [Sample], bounded: bool) -> Option<String> {
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
}
