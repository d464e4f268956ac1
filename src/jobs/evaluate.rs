//! The `evaluate` stage: base and candidate sample the evaluation prompts with the same seeds, the reward model
//! and the shapes world's rater (`t2i_trainer.jobs.evaluate`) judge both, and the gate decides whether the
//! candidate may become active.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::jobs::context::{fmt, fmt_signed, mean, JobContext};
use crate::jobs::metrics::{Evaluation, GateDecision};
use crate::reward::Scorer;
use crate::serving::LoadedModel;

impl JobContext<'_> {
    /// Samples the evaluation prompts from `model` and judges them: the mean reward, and the rater's figures
    /// (`t2i_trainer.jobs.evaluate`) when the prompts are the shapes world's. `share` is its part of the stage.
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
    ) -> Result<Evaluation> {
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
        let mut command = self.python("jobs.evaluate");
        command.extend(["--images".into(), folder.to_string_lossy().into_owned()]);
        match self.run_to_end(&command).await {
            Ok(output) => match serde_json::from_str::<Value>(output.trim()) {
                Ok(Value::Object(figures)) => {
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
        Ok(result)
    }
}

/// The promotion gate: the mean reward must rise by `min_reward_gain`, and the quality proxy may fall by at most
/// `max_quality_drop` (when the rater could judge the images).
pub fn decide(base: &Evaluation, candidate: &Evaluation, min_reward_gain: f64, max_quality_drop: f64) -> GateDecision {
    let reward_gain = candidate.mean_reward - base.mean_reward;
    let quality_drop = match (base.quality(), candidate.quality()) {
        (Some(base), Some(candidate)) => Some(base - candidate),
        _ => None,
    };
    let mut reasons = Vec::new();
    if !reward_gain.is_finite() || reward_gain < min_reward_gain {
        reasons.push(format!(
            "the mean reward changed by {} (needs at least {:+.4})",
            fmt_signed(reward_gain),
            min_reward_gain
        ));
    }
    if let Some(drop) = quality_drop {
        if drop > max_quality_drop {
            reasons.push(format!(
                "the quality proxy fell by {:.1} points (at most {:.1} allowed)",
                drop * 100.0,
                max_quality_drop * 100.0
            ));
        }
    }
    GateDecision {
        passed: reasons.is_empty(),
        reward_gain,
        quality_drop,
        min_reward_gain,
        max_quality_drop,
        reasons,
    }
}

/// The decision in one line, for the stage's event.
pub fn gate_line(gate: &GateDecision) -> String {
    if gate.reasons.is_empty() {
        format!(
            "passed: reward {}, quality proxy {}",
            fmt_signed(gate.reward_gain),
            gate.quality_drop
                .map_or("not measured".into(), |drop| format!("{:+.1} points", -drop * 100.0))
        )
    } else {
        format!("refused: {}", gate.reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluation(mean_reward: f64, quality: Option<f64>) -> Evaluation {
        let mut rater = Map::new();
        if let Some(quality) = quality {
            rater.insert("quality".into(), serde_json::json!(quality));
        }
        Evaluation {
            images: 4,
            mean_reward,
            rater,
        }
    }

    #[test]
    fn a_reward_gain_within_the_quality_tolerance_passes() {
        let gate = decide(&evaluation(0.5, Some(0.85)), &evaluation(0.6, Some(0.84)), 0.0, 0.05);
        assert!(gate.passed, "{gate:?}");
        assert!(gate.reasons.is_empty());
        assert!(gate_line(&gate).starts_with("passed: reward +0.1000, quality proxy -1.0 points"));
    }

    #[test]
    fn a_quality_drop_beyond_the_tolerance_fails_and_says_why() {
        let gate = decide(&evaluation(0.5, Some(0.85)), &evaluation(0.7, Some(0.70)), 0.0, 0.05);
        assert!(!gate.passed);
        assert_eq!(gate.reasons.len(), 1);
        assert!(gate.reasons[0].contains("fell by 15.0 points"), "{:?}", gate.reasons);
    }

    #[test]
    fn too_small_a_gain_or_no_figure_fails() {
        assert!(!decide(&evaluation(0.5, None), &evaluation(0.51, None), 0.05, 0.05).passed);
        let unmeasured = decide(&evaluation(f64::NAN, None), &evaluation(0.5, None), -1.0, 0.05);
        assert!(!unmeasured.passed);
        assert_eq!(unmeasured.quality_drop, None);
    }
}
