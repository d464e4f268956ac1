//! A job's figures, gathered stage by stage and stored with the job (`GET /fine-tunes/{id}`'s `metrics`) and
//! with the version it registers. Typed here, so each stage writes its own part and the gate's decision is read
//! as a field, not looked up in JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::jobs::gate::GateDecision;
use serde_json::{Map, Value};

/// Everything a job measured so far; a stage that has not run leaves its part out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobMetrics {
    /// The base version's samples (`sample`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<SampleFigures>,
    /// The trainer's data: ratings and reward-scored samples (`label`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training_set: Option<TrainingSetFigures>,
    /// The pre-training images the reward model kept (`label`, with `pretrain_data.filter`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<PretrainFigures>,
    /// The retrained reward model (`reward`, with `retrain_reward_model`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_model: Option<RewardModelFigures>,
    /// The trainer's losses (`train`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trainer: Option<TrainerFigures>,
    /// Base and candidate on the evaluation prompts (`evaluate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationPair>,
    /// Whether the candidate may become active, and why (`evaluate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateDecision>,
    /// Whether the job made its version active (`register`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activated: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleFigures {
    pub images: usize,
    pub mean_reward: f64,
    pub reward_model: String,
    /// Set when an unbounded reward model's scores were rescaled to [0, 1]: the sentence saying so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescaled: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainingSetFigures {
    pub samples: usize,
    pub rated: usize,
    pub reward_scored: usize,
    /// Samples added by hindsight relabelling (`relabel`), of `relabel_candidates` images it scored.
    pub relabelled: usize,
    pub relabel_candidates: usize,
    pub mean_reward: f64,
}

/// What the pre-training filter did (`pretrain_data.filter`, `jobs::pretrain_filter`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PretrainFigures {
    /// Pre-training images read.
    pub images: usize,
    /// Of them, those judged: a caption with its variant for every word, its own among them (the data's
    /// variants, or else the word swap of a caption holding exactly one of the words).
    pub judged: usize,
    /// Those whose own caption the reward model preferred to every other word's.
    pub preferred: usize,
    /// Those kept (after balancing): the pre-training data the trainer gets.
    pub kept: usize,
    pub balance: bool,
    /// Per word: the captions it judged (their own word), and how many of them were kept.
    pub by_word: BTreeMap<String, WordFigures>,
    /// Set when the job linked an earlier job's kept images (same reward model, data and filter, on this
    /// worker) rather than judging again: that job's id. The figures are its.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WordFigures {
    pub captions: usize,
    pub kept: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RewardModelFigures {
    /// The registered reward version.
    pub version: String,
    pub parent: String,
    /// The reward trainer's last `retrained` event, as it printed it.
    pub retrained: Value,
    pub rescored_samples: usize,
    pub mean_reward: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LossPoint {
    pub step: f64,
    pub loss: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainerFigures {
    pub final_loss: Option<LossPoint>,
    pub losses: Vec<LossPoint>,
    /// Set for a LoRA fine-tune (`lora_rank` above 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraFigures>,
}

/// A LoRA fine-tune: the adapter that was trained, merged into the version's weights, and kept in the
/// version's folder `adapter/` (`adapter.safetensors`, `adapter.json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoraFigures {
    pub rank: i64,
    pub alpha: f64,
    /// Whether the text encoder's attention was adapted too.
    pub text_encoder: bool,
    pub adapter: String,
}

impl LoraFigures {
    /// The figures of a job's hyperparameters; none for a full fine-tune.
    pub fn of(hyper: &crate::jobs::spec::Hyperparameters) -> Option<Self> {
        (hyper.lora_rank > 0).then(|| LoraFigures {
            rank: hyper.lora_rank,
            alpha: hyper.lora_alpha.unwrap_or(hyper.lora_rank as f64),
            text_encoder: hyper.train_text_encoder,
            adapter: "adapter/".into(),
        })
    }
}

/// One version's images of the evaluation prompts, judged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    pub images: usize,
    pub mean_reward: f64,
    /// The rater's figures (`t2i_trainer.jobs.evaluate`: accuracy per category, the quality proxy, ...), when
    /// it could judge the images.
    #[serde(flatten)]
    pub rater: Map<String, Value>,
}

impl Evaluation {
    /// The rater's quality proxy, when it judged the images.
    pub fn quality(&self) -> Option<f64> {
        self.rater.get("quality").and_then(Value::as_f64)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EvaluationPair {
    pub base: Evaluation,
    pub candidate: Evaluation,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_that_have_not_run_are_left_out_and_nan_is_null() {
        let mut metrics = JobMetrics::default();
        assert_eq!(serde_json::to_value(&metrics).unwrap(), serde_json::json!({}));
        metrics.samples = Some(SampleFigures {
            images: 0,
            mean_reward: f64::NAN,
            reward_model: "shapes-reward".into(),
            rescaled: None,
        });
        assert_eq!(
            serde_json::to_value(&metrics).unwrap(),
            serde_json::json!({"samples": {"images": 0, "mean_reward": null, "reward_model": "shapes-reward"}})
        );
    }

    #[test]
    fn a_lora_fine_tune_says_so_in_its_trainer_figures() {
        let mut hyper = crate::jobs::spec::Hyperparameters::default();
        assert_eq!(LoraFigures::of(&hyper), None);
        hyper.lora_rank = 8;
        assert_eq!(LoraFigures::of(&hyper).map(|lora| lora.alpha), Some(8.0));
        hyper.lora_alpha = Some(16.0);
        let figures = TrainerFigures {
            final_loss: None,
            losses: Vec::new(),
            lora: LoraFigures::of(&hyper),
        };
        assert_eq!(
            serde_json::to_value(&figures).unwrap()["lora"],
            serde_json::json!({"rank": 8, "alpha": 16.0, "text_encoder": false, "adapter": "adapter/"})
        );
    }

    #[test]
    fn an_evaluation_carries_the_raters_figures_beside_its_own() {
        let mut rater = Map::new();
        rater.insert("quality".into(), serde_json::json!(0.84));
        rater.insert("count".into(), serde_json::json!(0.5));
        let evaluation = Evaluation {
            images: 8,
            mean_reward: 0.5,
            rater,
        };
        assert_eq!(evaluation.quality(), Some(0.84));
        assert_eq!(
            serde_json::to_value(&evaluation).unwrap(),
            serde_json::json!({"images": 8, "mean_reward": 0.5, "quality": 0.84, "count": 0.5})
        );
    }
}
