//! The fine-tune job's request body (`POST /fine-tunes`), its defaults and its validation. Every refusal is a
//! 422 that names the field and the limit.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::storage::check_rater;

/// The job's prompts: a list, or the shapes world's generator.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PromptSource {
    List(Vec<String>),
    Generator(PromptGenerator),
}

/// Prompts drawn by `t2i_trainer.build.shapes_world prompts`: `count` distinct prompts of a split at random, or
/// `per_category` of each category.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptGenerator {
    /// `shapes_world`, the only generator.
    pub generator: String,
    /// `train` (default for the job's prompts), `heldout` (default for `eval_prompts`) or `all`.
    #[serde(default)]
    pub split: Option<String>,
    /// How many distinct prompts, drawn at random from the split, 1 to `--max-job-prompts`. Give this or
    /// `per_category`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub count: Option<u32>,
    /// Or this many of each category (colour, count, background, combination), 1 to `--max-job-prompts`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub per_category: Option<u32>,
    /// Seed of the draw. Default: the job's seed.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// Which stored ratings a job trains on (with `use_feedback`). Absent fields match every rating.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackFilter {
    /// Only ratings of images this version generated (a `GET /models` id): with `base_model`, the round's
    /// own samples, as in an on-policy round of feedback.
    #[serde(default)]
    #[schema(format = "model-version")]
    pub model: Option<String>,
    /// Only ratings from this rater (at most 128 characters, as stored).
    #[serde(default)]
    #[schema(pattern = r"\S", min_length = 1, max_length = 128)]
    pub rater: Option<String>,
}

/// The trainer's hyperparameters. The objective is the model's samples' term (`objective`; by default the
/// paper's E_model[r · L]) + beta · E_pretrain[L].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Hyperparameters {
    /// Weight of the pre-training term, in [0, 1e6]. Default 1.0; 0 is the ablation without it.
    #[serde(default = "default_beta")]
    #[schema(minimum = 0.0, maximum = 1e6)]
    pub beta: f64,
    /// AdamW peak learning rate, in [1e-12, 1], reached after a linear warm-up over the first 5% of the steps.
    /// Default 1e-4.
    #[serde(default = "default_learning_rate")]
    #[schema(minimum = 1e-12, maximum = 1.0)]
    pub learning_rate: f64,
    /// How the learning rate moves after the warm-up. Default `cosine`.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Optimiser steps, 1 to `--max-job-steps`. Default 500.
    #[serde(default = "default_steps")]
    #[schema(minimum = 1, maximum = 100000)]
    pub steps: i64,
    /// Rows per step, the model's samples and pre-training data together, 1 to `--max-job-batch-size`; 1 only
    /// with `pretrain_fraction` 0. Default 32.
    #[serde(default = "default_batch_size")]
    #[schema(minimum = 1, maximum = 4096)]
    pub batch_size: i64,
    /// Share of every batch from the pre-training data, in [0, 0.999999]. Default 0.5, as in the paper. The rows are
    /// `batch_size × pretrain_fraction` rounded, and at least one of each part (`pretrain_rows`).
    #[serde(default = "default_pretrain_fraction")]
    #[schema(minimum = 0.0, maximum = 0.999999)]
    pub pretrain_fraction: f64,
    /// Train the text encoder too (the paper keeps it frozen). Default false.
    #[serde(default)]
    pub train_text_encoder: bool,
    /// Save an exponential moving average of the weights with this decay, in [0, 0.999999]; 0 saves the last
    /// step's. Default 0.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 0.999999)]
    pub ema_decay: f64,
    /// Share of rows trained with the empty caption, in [0, 1], as the pretraining did, so that the
    /// unconditional prediction classifier-free guidance subtracts keeps being trained. Default 0.1.
    #[serde(default = "default_caption_dropout")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub caption_dropout: f64,
    /// What the model's samples train. Default `rwr`; the pre-training term stays with each.
    #[serde(default)]
    pub objective: Objective,
    /// β of `dpo` or `kto` (only with those), in [1, 1e6]: how far the model may move from the base before the
    /// term saturates; a larger β holds it closer. Default: 500 for `dpo` and 100 for `kto`, a tenth of the
    /// reference implementations' values for Stable Diffusion (shapes-sd moves further per step).
    #[serde(default)]
    #[schema(minimum = 1.0, maximum = 1e6)]
    pub objective_beta: Option<f64>,
}

/// The term the model's samples train (issue #26). `dpo` and `kto` measure the trained UNet against a frozen
/// copy of the base's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Reward-weighted regression, the paper's E_model[r · L]: each sample weighted by its reward.
    #[default]
    Rwr,
    /// Diffusion-DPO (Wallace et al. 2023) on pairs of images of one prompt whose rewards differ by at least
    /// 0.25: a good and a bad rating of a prompt always pair. A job that forms no pair fails.
    Dpo,
    /// Diffusion-KTO (Li et al. 2024) on images labelled desirable (reward at least 0.5: good ratings, and
    /// scores at or above 0.5) or undesirable. A job with no desirable image fails.
    Kto,
}

/// The learning rate after its warm-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Decayed along a cosine to a tenth of `learning_rate` by the last step, as the pretraining's was. On
    /// shapes-sd this kept colour accuracy within 5 points where a constant rate lost 9 at the same count
    /// gain (models/REPORT.md, trials u and r0).
    #[default]
    Cosine,
    /// Held at `learning_rate`.
    Constant,
}

fn default_caption_dropout() -> f64 {
    0.1
}

impl Hyperparameters {
    /// Rows of each batch from the pre-training data: `batch_size × pretrain_fraction` rounded, then at least 1
    /// when the fraction is above 0 and at most `batch_size − 1`, so each part keeps a row whenever the batch
    /// has two. The trainer computes the same (`TrainSpec.pretrain_rows` in finetune.py).
    pub fn pretrain_rows(&self) -> i64 {
        let rows = (self.batch_size as f64 * self.pretrain_fraction).round() as i64;
        let rows = if self.pretrain_fraction > 0.0 {
            rows.max(1)
        } else {
            rows
        };
        rows.min(self.batch_size - 1).max(0)
    }
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Hyperparameters {
            beta: default_beta(),
            learning_rate: default_learning_rate(),
            lr_schedule: LrSchedule::default(),
            steps: default_steps(),
            batch_size: default_batch_size(),
            pretrain_fraction: default_pretrain_fraction(),
            train_text_encoder: false,
            ema_decay: 0.0,
            caption_dropout: default_caption_dropout(),
            objective: Objective::default(),
            objective_beta: None,
        }
    }
}

fn default_beta() -> f64 {
    1.0
}
fn default_learning_rate() -> f64 {
    1e-4
}
fn default_steps() -> i64 {
    500
}
fn default_batch_size() -> i64 {
    32
}
fn default_pretrain_fraction() -> f64 {
    0.5
}

/// Where the pre-training term's data comes from.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PretrainData {
    /// `shapes_world` (captioned renders, with the pretraining's noisy counts) or `folder` (image files each
    /// with a same-named `.txt` caption, or a `metadata.jsonl` of `{file_name, text}`: for a real SD model).
    pub kind: String,
    /// Renders to draw for `shapes_world`, 1 to 1,000,000. Default 8192.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000)]
    pub images: Option<u32>,
    /// The folder for `folder` (and only for it), which the server can read.
    #[serde(default)]
    #[schema(format = "server-folder")]
    pub path: Option<String>,
}

impl Default for PretrainData {
    fn default() -> Self {
        PretrainData {
            kind: "shapes_world".into(),
            images: Some(8192),
            path: None,
        }
    }
}

/// When a finished job's version replaces the active one.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// The candidate's mean reward on the evaluation prompts must beat the base's by at least this much.
    /// In [-1, 1]. Default: the server's `--gate-min-reward-gain`.
    #[serde(default)]
    #[schema(minimum = -1.0, maximum = 1.0)]
    pub min_reward_gain: Option<f64>,
    /// The quality proxy (share of images whose every object the rater can name) may drop by at most this
    /// much, as a fraction in [0, 1] (0.03 is 3 points). Default: the server's `--gate-max-quality-drop`.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub max_quality_drop: Option<f64>,
}

/// `POST /fine-tunes`. Absent fields take the defaults; unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "prompts": {"generator": "shapes_world", "split": "train", "count": 400},
    "images_per_prompt": 8,
    "use_feedback": true,
    "hyperparameters": {"beta": 1.0, "learning_rate": 1e-4, "steps": 500, "batch_size": 32},
    "activate_on_success": true
}))]
pub struct FineTuneRequest {
    /// The version to start from (a `GET /models` id with diffusers weights). Default: the active one.
    #[serde(default)]
    #[schema(format = "model-version")]
    pub base_model: Option<String>,
    /// Prompts to sample from the base model. Default: 200 of the shapes world's training prompts.
    #[serde(default)]
    pub prompts: Option<PromptSource>,
    /// Samples per prompt, scored by the reward model, at most `--max-job-images-per-prompt`. Default 8; 0
    /// trains on feedback alone.
    #[serde(default)]
    #[schema(maximum = 64)]
    pub images_per_prompt: Option<u32>,
    /// Train on the stored ratings too (good 1, bad 0; skips are left out). Default true.
    #[serde(default)]
    pub use_feedback: Option<bool>,
    /// Which stored ratings: by the model that generated the image, by rater. Default: all of them.
    #[serde(default)]
    pub feedback_filter: Option<FeedbackFilter>,
    /// Retrain the reward model on the ratings first and score with it (paper §3.2). Default false.
    #[serde(default)]
    pub retrain_reward_model: Option<bool>,
    /// Which loaded reward model scores the samples and the evaluation. Default: the first.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = "reward-model")]
    pub reward_model: Option<String>,
    #[serde(default)]
    pub hyperparameters: Option<Hyperparameters>,
    #[serde(default)]
    pub pretrain_data: Option<PretrainData>,
    /// Held-out prompts to evaluate base and candidate on. Default: 8 per category of the shapes world's
    /// held-out prompts.
    #[serde(default)]
    pub eval_prompts: Option<PromptSource>,
    /// Images per evaluation prompt, 1 to `--max-job-images-per-prompt`. Default 8.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub eval_images_per_prompt: Option<u32>,
    /// Seeds the prompts, the samples, the trainer and the evaluation. Default 0.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Make the new version active if it passes the gate. Default false.
    #[serde(default)]
    pub activate_on_success: Option<bool>,
    #[serde(default)]
    pub gate: Option<GateSpec>,
}

/// A validated job: every field set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobSpec {
    pub base_model: String,
    pub prompts: PromptSource,
    pub images_per_prompt: u32,
    pub use_feedback: bool,
    /// Absent in jobs stored before the filter existed: they trained on every rating.
    #[serde(default)]
    pub feedback_filter: FeedbackFilter,
    pub retrain_reward_model: bool,
    pub reward_model: Option<String>,
    pub hyperparameters: Hyperparameters,
    pub pretrain_data: PretrainData,
    pub eval_prompts: PromptSource,
    pub eval_images_per_prompt: u32,
    pub seed: u64,
    pub activate_on_success: bool,
    pub min_reward_gain: f64,
    pub max_quality_drop: f64,
}

/// The largest `pretrain_fraction` and `ema_decay`: the trainer's bound, below 1.
const MAX_FRACTION: f64 = 0.999999;
/// The most shapes-world renders a job's pre-training term may draw.
const MAX_PRETRAIN_IMAGES: u32 = 1_000_000;

/// Limits on a job's size, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    pub max_prompts: usize,
    pub max_images_per_prompt: u32,
    pub max_steps: i64,
    pub max_batch_size: i64,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_prompts: 10_000,
            max_images_per_prompt: 64,
            max_steps: 100_000,
            max_batch_size: 4096,
        }
    }
}

/// The server-wide gate, used where a job does not set its own.
#[derive(Debug, Clone, Copy)]
pub struct GateDefaults {
    pub min_reward_gain: f64,
    pub max_quality_drop: f64,
}

fn finite(field: &str, value: f64, low: f64, high: f64, high_open: bool) -> Result<f64> {
    let above = if high_open { value >= high } else { value > high };
    if !value.is_finite() || value < low || above {
        let bracket = if high_open { ")" } else { "]" };
        return Err(Error::validation(
            field,
            format!("`{field}` must be a finite number in [{low}, {high}{bracket}. Given: {value}"),
        ));
    }
    Ok(value)
}

fn check_prompts(field: &str, source: &PromptSource, limits: &JobLimits) -> Result<()> {
    match source {
        PromptSource::List(prompts) => {
            if prompts.is_empty() || prompts.len() > limits.max_prompts {
                return Err(Error::validation(
                    field,
                    format!(
                        "`{field}` must list 1 to {} prompts (--max-job-prompts). Given: {}",
                        limits.max_prompts,
                        prompts.len()
                    ),
                ));
            }
            if let Some(index) = prompts.iter().position(|prompt| prompt.trim().is_empty()) {
                return Err(Error::validation(
                    format!("{field}[{index}]"),
                    format!("`{field}[{index}]` is empty"),
                ));
            }
        }
        PromptSource::Generator(generator) => {
            if generator.generator != "shapes_world" {
                return Err(Error::validation(
                    format!("{field}.generator"),
                    format!(
                        "`{field}.generator` must be `shapes_world`. Given: `{}`",
                        generator.generator
                    ),
                ));
            }
            if let Some(split) = &generator.split {
                if !["train", "heldout", "all"].contains(&split.as_str()) {
                    return Err(Error::validation(
                        format!("{field}.split"),
                        format!("`{field}.split` must be train, heldout or all. Given: `{split}`"),
                    ));
                }
            }
            match (generator.count, generator.per_category) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(Error::validation(
                        format!("{field}.count"),
                        format!("`{field}` needs exactly one of `count` and `per_category`"),
                    ))
                }
                (Some(count), None) if count == 0 || count as usize > limits.max_prompts => {
                    return Err(Error::validation(
                        format!("{field}.count"),
                        format!(
                            "`{field}.count` must be between 1 and {}. Given: {count}",
                            limits.max_prompts
                        ),
                    ))
                }
                (None, Some(per_category)) if per_category == 0 || per_category as usize > limits.max_prompts => {
                    return Err(Error::validation(
                        format!("{field}.per_category"),
                        format!(
                            "`{field}.per_category` must be between 1 and {} (--max-job-prompts). Given: {per_category}",
                            limits.max_prompts
                        ),
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

impl FineTuneRequest {
    /// Fills in defaults and checks every field; `base_model` is the resolved version id (checked by the
    /// caller against the registry).
    pub fn validate(self, base_model: String, limits: &JobLimits, gate: &GateDefaults) -> Result<JobSpec> {
        let prompts = self.prompts.unwrap_or(PromptSource::Generator(PromptGenerator {
            generator: "shapes_world".into(),
            split: Some("train".into()),
            count: Some(200),
            per_category: None,
            seed: None,
        }));
        check_prompts("prompts", &prompts, limits)?;
        let eval_prompts = self.eval_prompts.unwrap_or(PromptSource::Generator(PromptGenerator {
            generator: "shapes_world".into(),
            split: Some("heldout".into()),
            count: None,
            per_category: Some(8),
            seed: None,
        }));
        check_prompts("eval_prompts", &eval_prompts, limits)?;
        let images_per_prompt = self.images_per_prompt.unwrap_or(8);
        if images_per_prompt > limits.max_images_per_prompt {
            return Err(Error::validation(
                "images_per_prompt",
                format!(
                    "`images_per_prompt` must be at most {} (--max-job-images-per-prompt). Given: {images_per_prompt}",
                    limits.max_images_per_prompt
                ),
            ));
        }
        let use_feedback = self.use_feedback.unwrap_or(true);
        if images_per_prompt == 0 && !use_feedback {
            return Err(Error::validation(
                "images_per_prompt",
                "`images_per_prompt` is 0 and `use_feedback` is false: the job would have no data",
            ));
        }
        let feedback_filter = self.feedback_filter.unwrap_or_default();
        if !use_feedback && feedback_filter != FeedbackFilter::default() {
            return Err(Error::validation(
                "feedback_filter",
                "`feedback_filter` chooses among the stored ratings, so it needs `use_feedback` true",
            ));
        }
        for (field, value) in [("model", &feedback_filter.model), ("rater", &feedback_filter.rater)] {
            if value.as_deref().is_some_and(|value| value.trim().is_empty()) {
                return Err(Error::validation(
                    format!("feedback_filter.{field}"),
                    format!("`feedback_filter.{field}` must not be empty; leave it out to match every rating"),
                ));
            }
        }
        if let Some(rater) = &feedback_filter.rater {
            check_rater("feedback_filter.rater", rater)?;
        }
        let retrain_reward_model = self.retrain_reward_model.unwrap_or(false);
        if retrain_reward_model && !use_feedback {
            return Err(Error::validation(
                "retrain_reward_model",
                "`retrain_reward_model` retrains on the stored ratings, so it needs `use_feedback` true",
            ));
        }
        let eval_images_per_prompt = self.eval_images_per_prompt.unwrap_or(8);
        if !(1..=limits.max_images_per_prompt).contains(&eval_images_per_prompt) {
            return Err(Error::validation(
                "eval_images_per_prompt",
                format!(
                    "`eval_images_per_prompt` must be between 1 and {}. Given: {eval_images_per_prompt}",
                    limits.max_images_per_prompt
                ),
            ));
        }
        let hyper = self.hyperparameters.unwrap_or_default();
        finite("hyperparameters.beta", hyper.beta, 0.0, 1e6, false)?;
        finite("hyperparameters.learning_rate", hyper.learning_rate, 1e-12, 1.0, false)?;
        if hyper.learning_rate <= 0.0 {
            return Err(Error::validation(
                "hyperparameters.learning_rate",
                "`hyperparameters.learning_rate` must be above 0",
            ));
        }
        // The trainer's bounds (finetune.py): below 1, as a closed interval a document states exactly.
        finite(
            "hyperparameters.pretrain_fraction",
            hyper.pretrain_fraction,
            0.0,
            MAX_FRACTION,
            false,
        )?;
        finite("hyperparameters.ema_decay", hyper.ema_decay, 0.0, MAX_FRACTION, false)?;
        finite(
            "hyperparameters.caption_dropout",
            hyper.caption_dropout,
            0.0,
            1.0,
            false,
        )?;
        if let Some(beta) = hyper.objective_beta {
            if hyper.objective == Objective::Rwr {
                return Err(Error::validation(
                    "hyperparameters.objective_beta",
                    "`hyperparameters.objective_beta` is the β of objective dpo or kto; objective rwr has none (its \
                     pre-training weight is `beta`)",
                ));
            }
            finite("hyperparameters.objective_beta", beta, 1.0, 1e6, false)?;
        }
        if !(1..=limits.max_steps).contains(&hyper.steps) {
            return Err(Error::validation(
                "hyperparameters.steps",
                format!(
                    "`hyperparameters.steps` must be between 1 and {}. Given: {}",
                    limits.max_steps, hyper.steps
                ),
            ));
        }
        if !(1..=limits.max_batch_size).contains(&hyper.batch_size) {
            return Err(Error::validation(
                "hyperparameters.batch_size",
                format!(
                    "`hyperparameters.batch_size` must be between 1 and {}. Given: {}",
                    limits.max_batch_size, hyper.batch_size
                ),
            ));
        }
        if hyper.pretrain_fraction > 0.0 && hyper.pretrain_rows() < 1 {
            return Err(Error::validation(
                "hyperparameters.batch_size",
                format!(
                    "`hyperparameters.batch_size` {} cannot be split at pretrain_fraction {}: each part needs a \
                     row, so a batch of 1 needs pretrain_fraction 0",
                    hyper.batch_size, hyper.pretrain_fraction
                ),
            ));
        }
        let pretrain_data = self.pretrain_data.unwrap_or_default();
        if let Some(images) = pretrain_data
            .images
            .filter(|images| !(1..=MAX_PRETRAIN_IMAGES).contains(images))
        {
            return Err(Error::validation(
                "pretrain_data.images",
                format!("`pretrain_data.images` must be between 1 and {MAX_PRETRAIN_IMAGES}. Given: {images}"),
            ));
        }
        match pretrain_data.kind.as_str() {
            "shapes_world" => {
                if pretrain_data.path.is_some() {
                    return Err(Error::validation(
                        "pretrain_data.path",
                        "`pretrain_data.path` is for kind `folder`",
                    ));
                }
            }
            "folder" => {
                let Some(path) = &pretrain_data.path else {
                    return Err(Error::validation(
                        "pretrain_data.path",
                        "`pretrain_data.path` is required for kind `folder`",
                    ));
                };
                if std::fs::read_dir(PathBuf::from(path)).is_err() {
                    return Err(Error::validation(
                        "pretrain_data.path",
                        format!("`pretrain_data.path` is `{path}`, which is not a folder this server can read"),
                    ));
                }
            }
            other => {
                return Err(Error::validation(
                    "pretrain_data.kind",
                    format!("`pretrain_data.kind` must be shapes_world or folder. Given: `{other}`"),
                ))
            }
        }
        let gate_spec = self.gate.unwrap_or(GateSpec {
            min_reward_gain: None,
            max_quality_drop: None,
        });
        let min_reward_gain = finite(
            "gate.min_reward_gain",
            gate_spec.min_reward_gain.unwrap_or(gate.min_reward_gain),
            -1.0,
            1.0,
            false,
        )?;
        let max_quality_drop = finite(
            "gate.max_quality_drop",
            gate_spec.max_quality_drop.unwrap_or(gate.max_quality_drop),
            0.0,
            1.0,
            false,
        )?;
        Ok(JobSpec {
            base_model,
            prompts,
            images_per_prompt,
            use_feedback,
            feedback_filter,
            retrain_reward_model,
            reward_model: self.reward_model,
            hyperparameters: hyper,
            pretrain_data,
            eval_prompts,
            eval_images_per_prompt,
            seed: self.seed.unwrap_or(0),
            activate_on_success: self.activate_on_success.unwrap_or(false),
            min_reward_gain,
            max_quality_drop,
        })
    }
}

/// The rules across a fine-tune request's fields that `validate` checks and field attributes cannot say, as
/// each schema's `allOf` (the document's `openapi::spec` writes them in):
/// - a prompt list holds 1 to `--max-job-prompts` prompts, none blank;
/// - a prompt generator is `shapes_world`, with a known split and exactly one of `count` and `per_category`;
/// - a batch of 1 has no room for pre-training rows, so it needs `pretrain_fraction` 0;
/// - `objective_beta` goes with objective `dpo` or `kto`;
/// - `pretrain_data.path` goes with kind `folder` and only with it;
/// - without `use_feedback`, a job needs samples (`images_per_prompt` not 0) and can neither retrain the
///   reward model nor filter the ratings.
pub fn schema_rules() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let defaults = JobLimits::default();
    let null_or = |schema: serde_json::Value| json!({"oneOf": [{"type": "null"}, schema]});
    vec![
        (
            "PromptSource",
            json!([{"if": {"type": "array"}, "then": {
                "minItems": 1,
                "maxItems": defaults.max_prompts,
                "items": {"type": "string", "minLength": 1, "pattern": r"\S"}
            }}]),
        ),
        (
            "PromptGenerator",
            json!([
                {"properties": {
                    "generator": {"enum": ["shapes_world"]},
                    "split": null_or(json!({"enum": ["train", "heldout", "all"]}))
                }},
                {"oneOf": [
                    {"required": ["count"], "properties": {"count": {"type": "integer"}, "per_category": {"type": "null"}}},
                    {"required": ["per_category"], "properties": {"per_category": {"type": "integer"}, "count": {"type": "null"}}}
                ]}
            ]),
        ),
        (
            "Hyperparameters",
            json!([
                {
                    "if": {"required": ["batch_size"], "properties": {"batch_size": {"const": 1}}},
                    "then": {"required": ["pretrain_fraction"], "properties": {"pretrain_fraction": {"const": 0}}}
                },
                {
                    "if": {"not": {"required": ["objective"], "properties": {"objective": {"enum": ["dpo", "kto"]}}}},
                    "then": {"properties": {"objective_beta": {"type": "null"}}}
                }
            ]),
        ),
        (
            "PretrainData",
            json!([{"oneOf": [
                {"properties": {"kind": {"const": "shapes_world"}, "path": {"type": "null"}}},
                {"required": ["path"], "properties": {"kind": {"const": "folder"}, "path": {"type": "string"}}}
            ]}]),
        ),
        (
            "FineTuneRequest",
            json!([{
                "if": {"required": ["use_feedback"], "properties": {"use_feedback": {"const": false}}},
                "then": {"properties": {
                    "images_per_prompt": {"not": {"const": 0}},
                    "retrain_reward_model": {"not": {"const": true}},
                    "feedback_filter": null_or(json!({
                        "type": "object",
                        "properties": {"model": {"type": "null"}, "rater": {"type": "null"}}
                    }))
                }}
            }]),
        ),
    ]
}

/// The request's fields that hold an object. serde would also read a struct from an array of its fields in
/// order (`"gate": [null, null]`), which the document does not allow.
const OBJECT_FIELDS: [&str; 4] = ["gate", "hyperparameters", "pretrain_data", "feedback_filter"];

impl FineTuneRequest {
    /// Refuses a body whose object fields hold anything but an object or null, naming the field; checked on
    /// the JSON before it is read into the request.
    pub fn check_object_fields(body: &serde_json::Value) -> Result<()> {
        for field in OBJECT_FIELDS {
            match body.get(field) {
                None | Some(serde_json::Value::Null | serde_json::Value::Object(_)) => {}
                Some(other) => {
                    let found = match other {
                        serde_json::Value::Array(_) => "an array",
                        serde_json::Value::String(_) => "a string",
                        serde_json::Value::Number(_) => "a number",
                        _ => "a boolean",
                    };
                    return Err(Error::validation(
                        field,
                        format!("`{field}` must be an object. Given: {found}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> FineTuneRequest {
        serde_json::from_value(json).unwrap()
    }

    fn check(json: serde_json::Value) -> Result<JobSpec> {
        let gate = GateDefaults {
            min_reward_gain: 0.0,
            max_quality_drop: 0.03,
        };
        request(json).validate("base".into(), &JobLimits::default(), &gate)
    }

    #[test]
    fn defaults_fill_an_empty_request() {
        let spec = check(serde_json::json!({})).unwrap();
        assert_eq!(spec.hyperparameters.pretrain_fraction, 0.5);
        assert_eq!(spec.hyperparameters.lr_schedule, LrSchedule::Cosine);
        assert_eq!(spec.images_per_prompt, 8);
        assert!(spec.use_feedback);
        assert_eq!(spec.feedback_filter, FeedbackFilter::default());
        assert!(!spec.activate_on_success);
        assert_eq!(spec.max_quality_drop, 0.03);
    }

    #[test]
    fn each_bad_field_is_named() {
        for (body, field) in [
            (
                serde_json::json!({"hyperparameters": {"steps": 0}}),
                "hyperparameters.steps",
            ),
            (
                serde_json::json!({"hyperparameters": {"steps": -3}}),
                "hyperparameters.steps",
            ),
            (
                serde_json::json!({"hyperparameters": {"ema_decay": 1.0}}),
                "hyperparameters.ema_decay",
            ),
            (
                serde_json::json!({"hyperparameters": {"pretrain_fraction": 1.0}}),
                "hyperparameters.pretrain_fraction",
            ),
            (
                serde_json::json!({"hyperparameters": {"beta": -1.0}}),
                "hyperparameters.beta",
            ),
            (
                serde_json::json!({"hyperparameters": {"batch_size": 1}}),
                "hyperparameters.batch_size",
            ),
            (
                serde_json::json!({"hyperparameters": {"objective": "dpo", "objective_beta": 0.5}}),
                "hyperparameters.objective_beta",
            ),
            (
                serde_json::json!({"hyperparameters": {"objective": "kto", "objective_beta": 2e6}}),
                "hyperparameters.objective_beta",
            ),
            (
                serde_json::json!({"hyperparameters": {"objective_beta": 500.0}}),
                "hyperparameters.objective_beta",
            ),
            (
                serde_json::json!({"pretrain_data": {"kind": "folder", "path": "/no/such/folder"}}),
                "pretrain_data.path",
            ),
            (
                serde_json::json!({"pretrain_data": {"kind": "laion"}}),
                "pretrain_data.kind",
            ),
            (serde_json::json!({"prompts": []}), "prompts"),
            (serde_json::json!({"prompts": ["a red circle", " "]}), "prompts[1]"),
            (
                serde_json::json!({"prompts": {"generator": "coco", "count": 3}}),
                "prompts.generator",
            ),
            (
                serde_json::json!({"eval_prompts": {"generator": "shapes_world"}}),
                "eval_prompts.count",
            ),
            (serde_json::json!({"images_per_prompt": 1000}), "images_per_prompt"),
            (
                serde_json::json!({"images_per_prompt": 0, "use_feedback": false}),
                "images_per_prompt",
            ),
            (
                serde_json::json!({"gate": {"max_quality_drop": 2.0}}),
                "gate.max_quality_drop",
            ),
            (
                serde_json::json!({"use_feedback": false, "feedback_filter": {"model": "shapes-sd"}}),
                "feedback_filter",
            ),
            (
                serde_json::json!({"feedback_filter": {"rater": " "}}),
                "feedback_filter.rater",
            ),
            (
                serde_json::json!({"feedback_filter": {"rater": "r".repeat(129)}}),
                "feedback_filter.rater",
            ),
            (
                serde_json::json!({"hyperparameters": {"pretrain_fraction": 0.9999995}}),
                "hyperparameters.pretrain_fraction",
            ),
            (
                serde_json::json!({"prompts": {"generator": "shapes_world", "per_category": 10_001}}),
                "prompts.per_category",
            ),
            (
                serde_json::json!({"pretrain_data": {"kind": "shapes_world", "images": 1_000_001}}),
                "pretrain_data.images",
            ),
            (
                serde_json::json!({"pretrain_data": {"kind": "folder", "images": 0, "path": "."}}),
                "pretrain_data.images",
            ),
        ] {
            let err = check(body.clone()).unwrap_err();
            assert_eq!(err.param(), Some(field), "{body}: {err}");
        }
    }

    #[test]
    fn each_term_keeps_a_row_whenever_the_batch_has_two() {
        for (batch_size, fraction, rows) in [(32, 0.5, 16), (2, 0.1, 1), (2, 0.9, 1), (8, 0.99, 7), (8, 0.0, 0)] {
            let spec = check(serde_json::json!({
                "hyperparameters": {"batch_size": batch_size, "pretrain_fraction": fraction}
            }))
            .unwrap();
            assert_eq!(spec.hyperparameters.pretrain_rows(), rows, "{batch_size} × {fraction}");
        }
        let one = check(serde_json::json!({"hyperparameters": {"batch_size": 1, "pretrain_fraction": 0.0}})).unwrap();
        assert_eq!(one.hyperparameters.pretrain_rows(), 0);
    }

    #[test]
    fn the_objective_defaults_to_rwr_and_takes_its_beta_only_with_dpo_or_kto() {
        let spec = check(serde_json::json!({})).unwrap();
        assert_eq!(spec.hyperparameters.objective, Objective::Rwr);
        assert_eq!(spec.hyperparameters.objective_beta, None);
        for objective in ["dpo", "kto"] {
            let spec = check(serde_json::json!({
                "hyperparameters": {"objective": objective, "objective_beta": 1.0}
            }))
            .unwrap();
            assert_eq!(serde_json::to_value(spec.hyperparameters.objective).unwrap(), objective);
            assert_eq!(spec.hyperparameters.objective_beta, Some(1.0));
        }
        let err =
            check(serde_json::json!({"hyperparameters": {"objective": "rwr", "objective_beta": 5000.0}})).unwrap_err();
        assert!(err.to_string().contains("objective rwr has none"), "{err}");
        let err = check(serde_json::json!({"hyperparameters": {"objective": "dpo", "objective_beta": 1e6 + 1.0}}))
            .unwrap_err();
        assert!(err.to_string().contains("[1, 1000000]"), "{err}");
        assert!(serde_json::from_value::<FineTuneRequest>(serde_json::json!({
            "hyperparameters": {"objective": "ppo"}
        }))
        .is_err());
    }

    #[test]
    fn a_stored_spec_without_an_objective_still_reads() {
        let mut stored = serde_json::to_value(check(serde_json::json!({})).unwrap()).unwrap();
        let hyper = stored["hyperparameters"].as_object_mut().unwrap();
        hyper.remove("objective");
        hyper.remove("objective_beta");
        let spec: JobSpec = serde_json::from_value(stored).unwrap();
        assert_eq!(spec.hyperparameters.objective, Objective::Rwr);
        assert_eq!(spec.hyperparameters.objective_beta, None);
    }

    #[test]
    fn a_stored_spec_without_a_feedback_filter_still_reads() {
        let mut stored = serde_json::to_value(check(serde_json::json!({})).unwrap()).unwrap();
        stored.as_object_mut().unwrap().remove("feedback_filter");
        let spec: JobSpec = serde_json::from_value(stored).unwrap();
        assert_eq!(spec.feedback_filter, FeedbackFilter::default());
    }

    #[test]
    fn a_nan_beta_is_refused() {
        let mut spec = request(serde_json::json!({}));
        spec.hyperparameters = Some(Hyperparameters {
            beta: f64::NAN,
            ..Hyperparameters::default()
        });
        let gate = GateDefaults {
            min_reward_gain: 0.0,
            max_quality_drop: 0.03,
        };
        let err = spec.validate("base".into(), &JobLimits::default(), &gate).unwrap_err();
        assert_eq!(err.param(), Some("hyperparameters.beta"));
    }

    #[test]
    fn a_nested_object_sent_as_an_array_is_refused() {
        for field in OBJECT_FIELDS {
            let err = FineTuneRequest::check_object_fields(&serde_json::json!({ field: [null, null] })).unwrap_err();
            assert_eq!(err.param(), Some(field));
            assert!(err.to_string().contains("must be an object. Given: an array"), "{err}");
            assert!(FineTuneRequest::check_object_fields(&serde_json::json!({ field: null })).is_ok());
            assert!(FineTuneRequest::check_object_fields(&serde_json::json!({ field: {} })).is_ok());
        }
    }
}
