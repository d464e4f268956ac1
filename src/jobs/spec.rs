//! The fine-tune job's request body (`POST /fine-tunes`), its defaults and its validation. Every refusal is a
//! 422 that names the field and the limit.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::jobs::gate::GateRule;
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
    /// How many distinct prompts, drawn at random from the split, 1 to `--max-job-prompts`. Give this,
    /// `per_category`, or neither for every prompt of the split.
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

/// Hindsight relabelling (#26): an image the job would not train on under its own prompt (rated bad, or scored
/// below `threshold`) is scored by the reward model against the job's other prompts that differ from its own
/// in exactly one word, both words in `words` (say the number words: "three red circles" and "two red
/// circles"). Where the best of those scores reaches `threshold` and beats the image's own prompt's score, the
/// image is also trained on under that prompt, with that score as its reward.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Relabel {
    /// The interchangeable words, 2 to 64 of them, distinct, each one word of 1 to 32 characters (compared as
    /// the prompts' whitespace-separated words are, case-sensitively).
    #[schema(min_items = 2, max_items = 64)]
    pub words: Vec<String>,
    /// The least reward model score, in (0, 1], that relabels an image. Default 0.5. Needs a reward model
    /// whose scores are bounded in [0, 1].
    #[serde(default = "default_relabel_threshold")]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub threshold: f64,
}

fn default_relabel_threshold() -> f64 {
    0.5
}

/// The most words a `relabel` may name.
pub const MAX_RELABEL_WORDS: usize = 64;
/// The longest word a `relabel` may name, in characters.
pub const MAX_RELABEL_WORD: usize = 32;
/// The characters a `relabel` word may not hold: Rust's whitespace (what splits a prompt into words) and
/// U+FEFF, which JSON Schema's `\s` also counts, spelled out so that the document's pattern means the same
/// to every regex engine.
const WORD_SEPARATORS: [char; 26] = [
    '\t', '\n', '\u{b}', '\u{c}', '\r', ' ', '\u{85}', '\u{a0}', '\u{1680}', '\u{2000}', '\u{2001}', '\u{2002}',
    '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}', '\u{2009}', '\u{200a}', '\u{2028}',
    '\u{2029}', '\u{202f}', '\u{205f}', '\u{3000}', '\u{feff}',
];

/// The rules of a list of interchangeable words (`relabel.words`, `pretrain_data.filter.words`), named `param`.
fn check_words(param: &str, words: &[String]) -> Result<()> {
    let count = words.len();
    if !(2..=MAX_RELABEL_WORDS).contains(&count) {
        return Err(Error::validation(
            param,
            format!("`{param}` must hold 2 to {MAX_RELABEL_WORDS} words. Given: {count}"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for word in words {
        let characters = word.chars().count();
        if characters == 0 || characters > MAX_RELABEL_WORD || word.chars().any(|c| WORD_SEPARATORS.contains(&c)) {
            return Err(Error::validation(
                param,
                format!(
                    "each of `{param}` must be one word of 1 to {MAX_RELABEL_WORD} characters, without spaces. \
                     Given: {word:?}"
                ),
            ));
        }
        if !seen.insert(word.as_str()) {
            return Err(Error::validation(param, format!("`{param}` names {word:?} twice")));
        }
    }
    Ok(())
}

fn check_relabel(relabel: &Relabel) -> Result<()> {
    check_words("relabel.words", &relabel.words)?;
    let threshold = relabel.threshold;
    if !(threshold.is_finite() && threshold > 0.0 && threshold <= 1.0) {
        return Err(Error::validation(
            "relabel.threshold",
            format!("`relabel.threshold` must be above 0 and at most 1. Given: {threshold}"),
        ));
    }
    Ok(())
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
    /// What the pre-training term regresses the UNet's prediction on. Default `data`, the paper's term.
    #[serde(default)]
    pub pretrain_target: PretrainTarget,
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
    /// Train the text encoder too (the paper keeps it frozen); with `lora_rank`, through LoRA adapters on its
    /// attention projections. Default false.
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
    /// Above 0, train a LoRA adapter of this rank, 0 to 256, instead of the weights: low-rank updates of the
    /// UNet's attention projections (`to_q`, `to_k`, `to_v`, `to_out.0` of self- and cross-attention, and the
    /// text encoder's with `train_text_encoder`), every other weight frozen. The adapter is merged into the
    /// weights at the end, so the version serves as any other, and is kept beside them in `adapter/`. Default
    /// 0: full fine-tuning.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 256)]
    pub lora_rank: i64,
    /// The LoRA update is scaled by `lora_alpha / lora_rank`; in [0.001, 10000], only with `lora_rank` above 0.
    /// Default: the rank (a scale of 1), which the stored job then records.
    #[serde(default)]
    #[schema(minimum = 0.001, maximum = 10000.0)]
    pub lora_alpha: Option<f64>,
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

/// The pre-training term's target, on the pre-training data's noisy images and captions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PretrainTarget {
    /// The noise added to the image, as in pretraining and the paper's β · E_pretrain[L]: its optimum is the
    /// best fit to the pre-training data, so it goes on moving the weights wherever the base had not
    /// converged.
    #[default]
    Data,
    /// The frozen base UNet's own prediction for the same noisy image, timestep and caption: the term is 0 at
    /// the base and pulls the model back towards it, with no sampling noise in its target. Costs one
    /// forward pass of the base per pre-training row.
    Base,
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
            pretrain_target: PretrainTarget::default(),
            learning_rate: default_learning_rate(),
            lr_schedule: LrSchedule::default(),
            steps: default_steps(),
            batch_size: default_batch_size(),
            pretrain_fraction: default_pretrain_fraction(),
            train_text_encoder: false,
            ema_decay: 0.0,
            caption_dropout: default_caption_dropout(),
            lora_rank: 0,
            lora_alpha: None,
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
    /// Keep only the images whose caption the reward model judges right about one word. Default: off, every
    /// image is trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<PretrainFilter>,
}

/// The pre-training images kept by the reward model (#26). Pre-training captions can be wrong (the shapes
/// world's state a wrong number half the time, as web captions do). The reward model scores each judged
/// caption and its variant for every other word; an image is kept when its own caption scores above every
/// other. The variants are the data's own where its metadata.jsonl row gives them (`"variants": {"one": "a red
/// circle", "two": "two red circles", ...}`, as `shapes_world` renders carry them); otherwise a caption
/// holding exactly one of `words` as a whitespace-separated word is compared with the same caption with each
/// other word in its place. Other captions are not kept. With `balance`, each word keeps the same share of
/// the captions it judged: the least share the comparison kept of any word.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PretrainFilter {
    /// The interchangeable words, 2 to 64 of them, distinct, each one word of 1 to 32 characters (say the
    /// number words: `["one", "two", "three", "four"]`).
    #[schema(min_items = 2, max_items = 64)]
    pub words: Vec<String>,
    /// Keep the same share of every word's captions. Default true: the comparison keeps more of the words the
    /// reward model tells apart best, which would tilt the kept set towards them.
    #[serde(default = "default_true")]
    pub balance: bool,
}

fn default_true() -> bool {
    true
}

/// The `shapes_world` renders a job draws when `pretrain_data.images` is absent.
pub const DEFAULT_PRETRAIN_IMAGES: u32 = 8192;

impl PretrainData {
    /// The `shapes_world` renders to draw: `images`, or the default.
    pub fn render_count(&self) -> u32 {
        self.images.unwrap_or(DEFAULT_PRETRAIN_IMAGES)
    }
}

impl Default for PretrainData {
    fn default() -> Self {
        PretrainData {
            kind: "shapes_world".into(),
            images: Some(DEFAULT_PRETRAIN_IMAGES),
            path: None,
            filter: None,
        }
    }
}

/// When a finished job's version replaces the active one (`jobs::gate`). The candidate passes when the lower
/// end of its mean reward gain's interval is above `min_reward_gain`, and for each guarded metric the lower end
/// of its change's interval is at or above minus its `max_drop`. Absent fields take the server's `--gate-*`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// The lower end of the mean reward gain's interval (candidate minus base, on the evaluation prompts) must
    /// be above this. In [-1, 1]. Default: the server's `--gate-min-reward-gain` (0).
    #[serde(default)]
    #[schema(minimum = -1.0, maximum = 1.0)]
    pub min_reward_gain: Option<f64>,
    /// The quality proxy's tolerance, the same as `max_drop.quality` (which wins when both are given).
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub max_quality_drop: Option<f64>,
    /// Per metric, how far the lower end of its change's interval may fall below 0.
    #[serde(default)]
    pub max_drop: Option<MaxDrop>,
    /// The intervals' coverage, in [0.5, 0.999]. Default: the server's `--gate-confidence` (0.95).
    #[serde(default)]
    #[schema(minimum = 0.5, maximum = 0.999)]
    pub confidence: Option<f64>,
    /// Bootstrap resamples, 100 to 100,000. Default: the server's `--gate-resamples` (2000).
    #[serde(default)]
    #[schema(minimum = 100, maximum = 100000)]
    pub resamples: Option<u32>,
}

/// Tolerated drops per metric, as fractions in [0, 1] (0.03 is 3 points; diversity, the mean pairwise RMS
/// distance between a prompt's images, in its own 0-1 units). 1 turns a guard off. Absent metrics take the
/// server's `--gate-max-drop` (quality, colour, background and shape 0.03, diversity 0.02; count and good
/// unguarded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaxDrop {
    /// Share of images whose every object the rater can find and name.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub quality: Option<f64>,
    /// Share of images with every stated attribute right.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub good: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub count: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub colour: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub background: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub shape: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub diversity: Option<f64>,
}

impl MaxDrop {
    /// The tolerances given, by metric name.
    pub fn given(&self) -> Vec<(&'static str, f64)> {
        [
            ("quality", self.quality),
            ("good", self.good),
            ("count", self.count),
            ("colour", self.colour),
            ("background", self.background),
            ("shape", self.shape),
            ("diversity", self.diversity),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name, value)))
        .collect()
    }
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
    /// Hindsight relabelling of the images the job would not train on. Default: off.
    #[serde(default)]
    pub relabel: Option<Relabel>,
    #[serde(default)]
    pub hyperparameters: Option<Hyperparameters>,
    #[serde(default)]
    pub pretrain_data: Option<PretrainData>,
    /// Held-out prompts to evaluate base and candidate on. Default: every prompt of the shapes world's
    /// held-out split (282).
    #[serde(default)]
    pub eval_prompts: Option<PromptSource>,
    /// Images per evaluation prompt, 1 to `--max-job-images-per-prompt`. Default 4.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub eval_images_per_prompt: Option<u32>,
    /// Seeds the prompts, the samples and the trainer. Default 0.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Seeds the evaluation's images, the same for base and candidate. Default 1000000007, the same for every
    /// job, so that a base's cached evaluation serves every job that starts from it.
    #[serde(default)]
    pub eval_seed: Option<u64>,
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
    /// Absent in jobs stored before relabelling existed, and when off.
    #[serde(default)]
    pub relabel: Option<Relabel>,
    pub hyperparameters: Hyperparameters,
    pub pretrain_data: PretrainData,
    pub eval_prompts: PromptSource,
    pub eval_images_per_prompt: u32,
    pub seed: u64,
    /// Absent in jobs stored before #26, which evaluated with `seed + 1000000007`.
    #[serde(default)]
    pub eval_seed: Option<u64>,
    pub activate_on_success: bool,
    /// Absent in jobs stored before #26: they take the default rule.
    #[serde(default)]
    pub gate: GateRule,
}

/// The evaluation seed of a job that sets none.
pub const DEFAULT_EVAL_SEED: u64 = 1_000_000_007;

/// The largest `pretrain_fraction` and `ema_decay`: the trainer's bound, below 1.
const MAX_FRACTION: f64 = 0.999999;
/// The largest `lora_rank` a job may ask for (the trainer takes up to 1024).
const MAX_LORA_RANK: i64 = 256;
/// The largest `lora_alpha` a job may ask for.
const MAX_LORA_ALPHA: f64 = 10_000.0;
/// The most shapes-world renders a job's pre-training term may draw.
const MAX_PRETRAIN_IMAGES: u32 = 1_000_000;

/// Limits on a job's size, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    pub max_prompts: usize,
    pub max_images_per_prompt: u32,
    pub max_steps: i64,
    pub max_batch_size: i64,
    /// `--max-work`: the most pixel-steps one sampling request of the job (one prompt's images) may take.
    pub max_work: u64,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_prompts: 10_000,
            max_images_per_prompt: 64,
            max_steps: 100_000,
            max_batch_size: 4096,
            max_work: crate::pipeline::request::DEFAULT_MAX_WORK,
        }
    }
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

/// The job's gate: its own settings over the server's `defaults`, each checked.
fn gate_rule(spec: Option<&GateSpec>, defaults: &GateRule) -> Result<GateRule> {
    let mut rule = defaults.clone();
    let Some(spec) = spec else { return Ok(rule) };
    if let Some(gain) = spec.min_reward_gain {
        rule.min_reward_gain = finite("gate.min_reward_gain", gain, -1.0, 1.0, false)?;
    }
    if let Some(drop) = spec.max_quality_drop {
        rule.max_drop.insert(
            "quality".into(),
            finite("gate.max_quality_drop", drop, 0.0, 1.0, false)?,
        );
    }
    for (metric, drop) in spec.max_drop.unwrap_or_default().given() {
        let field = format!("gate.max_drop.{metric}");
        rule.max_drop
            .insert(metric.into(), finite(&field, drop, 0.0, 1.0, false)?);
    }
    if let Some(confidence) = spec.confidence {
        rule.confidence = finite("gate.confidence", confidence, 0.5, 0.999, false)?;
    }
    if let Some(resamples) = spec.resamples {
        if !(100..=100_000).contains(&resamples) {
            return Err(Error::validation(
                "gate.resamples",
                format!("`gate.resamples` must be between 100 and 100000. Given: {resamples}"),
            ));
        }
        rule.resamples = resamples;
    }
    Ok(rule)
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
                (Some(_), Some(_)) => {
                    return Err(Error::validation(
                        format!("{field}.count"),
                        format!("`{field}` takes at most one of `count` and `per_category` (neither: the whole split)"),
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

/// Checks `lora_rank` and `lora_alpha`; returns the alpha to train with: the given one or the rank with LoRA,
/// none without.
fn check_lora(hyper: &Hyperparameters) -> Result<Option<f64>> {
    if !(0..=MAX_LORA_RANK).contains(&hyper.lora_rank) {
        return Err(Error::validation(
            "hyperparameters.lora_rank",
            format!(
                "`hyperparameters.lora_rank` must be between 0 and {MAX_LORA_RANK}. Given: {}",
                hyper.lora_rank
            ),
        ));
    }
    let Some(alpha) = hyper.lora_alpha else {
        return Ok((hyper.lora_rank > 0).then_some(hyper.lora_rank as f64));
    };
    finite("hyperparameters.lora_alpha", alpha, 0.001, MAX_LORA_ALPHA, false)?;
    if hyper.lora_rank == 0 {
        return Err(Error::validation(
            "hyperparameters.lora_alpha",
            "`hyperparameters.lora_alpha` scales a LoRA adapter, so it needs `lora_rank` above 0",
        ));
    }
    Ok(Some(alpha))
}

impl FineTuneRequest {
    /// Fills in defaults and checks every field; `base_model` is the resolved version id (checked by the
    /// caller against the registry).
    pub fn validate(self, base_model: String, limits: &JobLimits, gate: &GateRule) -> Result<JobSpec> {
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
            per_category: None,
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
        let eval_images_per_prompt = self.eval_images_per_prompt.unwrap_or(4);
        if !(1..=limits.max_images_per_prompt).contains(&eval_images_per_prompt) {
            return Err(Error::validation(
                "eval_images_per_prompt",
                format!(
                    "`eval_images_per_prompt` must be between 1 and {}. Given: {eval_images_per_prompt}",
                    limits.max_images_per_prompt
                ),
            ));
        }
        let mut hyper = self.hyperparameters.unwrap_or_default();
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
        hyper.lora_alpha = check_lora(&hyper)?;
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
        if let Some(filter) = &pretrain_data.filter {
            check_words("pretrain_data.filter.words", &filter.words)?;
        }
        let gate = gate_rule(self.gate.as_ref(), gate)?;
        if let Some(relabel) = &self.relabel {
            check_relabel(relabel)?;
        }
        Ok(JobSpec {
            base_model,
            prompts,
            images_per_prompt,
            use_feedback,
            feedback_filter,
            retrain_reward_model,
            reward_model: self.reward_model,
            relabel: self.relabel,
            hyperparameters: hyper,
            pretrain_data,
            eval_prompts,
            eval_images_per_prompt,
            seed: self.seed.unwrap_or(0),
            eval_seed: Some(self.eval_seed.unwrap_or(DEFAULT_EVAL_SEED)),
            activate_on_success: self.activate_on_success.unwrap_or(false),
            gate,
        })
    }
}

/// The rules across a fine-tune request's fields that `validate` checks and field attributes cannot say, as
/// each schema's `allOf` (the document's `openapi::spec` writes them in):
/// - a prompt list holds 1 to `--max-job-prompts` prompts, none blank;
/// - a prompt generator is `shapes_world`, with a known split and at most one of `count` and `per_category`;
/// - a batch of 1 has no room for pre-training rows, so it needs `pretrain_fraction` 0;
/// - `lora_alpha` scales a LoRA adapter, so it needs `lora_rank` above 0;
/// - `objective_beta` goes with objective `dpo` or `kto`;
/// - `pretrain_data.path` goes with kind `folder` and only with it;
/// - without `use_feedback`, a job needs samples (`images_per_prompt` not 0) and can neither retrain the
///   reward model nor filter the ratings.
pub fn schema_rules() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let defaults = JobLimits::default();
    let null_or = |schema: serde_json::Value| json!({"oneOf": [{"type": "null"}, schema]});
    // `relabel.words` and `pretrain_data.filter.words` (`check_words`).
    let words = json!([{"properties": {"words": {
        "uniqueItems": true,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_RELABEL_WORD,
            "pattern": format!("^[^{}]+$", WORD_SEPARATORS.iter().collect::<String>())
        }
    }}}]);
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
                {"not": {
                    "required": ["count", "per_category"],
                    "properties": {"count": {"type": "integer"}, "per_category": {"type": "integer"}}
                }}
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
                    "if": {"required": ["lora_alpha"], "properties": {"lora_alpha": {"type": "number"}}},
                    "then": {"required": ["lora_rank"], "properties": {"lora_rank": {"minimum": 1}}}
                },
                {
                    "if": {"not": {"required": ["objective"], "properties": {"objective": {"enum": ["dpo", "kto"]}}}},
                    "then": {"properties": {"objective_beta": {"type": "null"}}}
                }
            ]),
        ),
        ("Relabel", words.clone()),
        ("PretrainFilter", words),
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
/// Nested fields are written with dots.
const OBJECT_FIELDS: [&str; 7] = [
    "gate",
    "gate.max_drop",
    "hyperparameters",
    "pretrain_data",
    "pretrain_data.filter",
    "feedback_filter",
    "relabel",
];

impl FineTuneRequest {
    /// Refuses a body whose object fields hold anything but an object or null, naming the field; checked on
    /// the JSON before it is read into the request.
    pub fn check_object_fields(body: &serde_json::Value) -> Result<()> {
        for field in OBJECT_FIELDS {
            let value = field.split('.').try_fold(body, |value, key| value.get(key));
            match value {
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
        request(json).validate("base".into(), &JobLimits::default(), &GateRule::default())
    }

    #[test]
    fn a_relabel_word_holds_no_character_that_splits_a_prompt_or_that_the_documents_pattern_refuses() {
        let separators: Vec<char> = (0..=u32::from(char::MAX))
            .filter_map(char::from_u32)
            .filter(|c| c.is_whitespace() || *c == '\u{feff}')
            .collect();
        assert_eq!(separators, WORD_SEPARATORS.to_vec());
        let words = |words: serde_json::Value| check(serde_json::json!({"relabel": {"words": words}}));
        assert!(words(serde_json::json!(["two", "three"])).is_ok());
        for bad in ["t\u{85}wo", "t\u{feff}wo", "two three", ""] {
            let err = words(serde_json::json!(["one", bad])).unwrap_err();
            assert!(
                err.to_string().contains("relabel.words") || format!("{err:?}").contains("relabel.words"),
                "{err:?}"
            );
        }
        let long = "x".repeat(MAX_RELABEL_WORD + 1);
        assert!(words(serde_json::json!(["one", long])).is_err());
        assert!(words(serde_json::json!(["one", "x".repeat(MAX_RELABEL_WORD)])).is_ok());
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
        assert_eq!(spec.gate, GateRule::default());
        assert_eq!(spec.eval_images_per_prompt, 4);
        assert_eq!(spec.eval_seed, Some(DEFAULT_EVAL_SEED));
        // The whole held-out split: a generator with neither `count` nor `per_category`.
        let PromptSource::Generator(eval) = &spec.eval_prompts else {
            panic!("a generator")
        };
        assert_eq!(
            (eval.count, eval.per_category, eval.split.as_deref()),
            (None, None, Some("heldout"))
        );
    }

    #[test]
    fn a_jobs_gate_overrides_the_servers_per_field() {
        let spec = check(serde_json::json!({"gate": {
            "min_reward_gain": 0.01, "max_quality_drop": 0.05,
            "max_drop": {"count": 0.1, "diversity": 1.0}, "confidence": 0.9, "resamples": 500
        }}))
        .unwrap();
        let mut expected = GateRule {
            min_reward_gain: 0.01,
            confidence: 0.9,
            resamples: 500,
            ..GateRule::default()
        };
        expected.max_drop.insert("quality".into(), 0.05);
        expected.max_drop.insert("count".into(), 0.1);
        expected.max_drop.insert("diversity".into(), 1.0);
        assert_eq!(spec.gate, expected);
        // max_drop.quality wins over max_quality_drop.
        let both = check(serde_json::json!({"gate": {"max_quality_drop": 0.05, "max_drop": {"quality": 0.01}}}));
        assert_eq!(both.unwrap().gate.max_drop["quality"], 0.01);
    }

    #[test]
    fn a_job_stored_before_the_evidence_gate_still_reads() {
        let mut stored = serde_json::to_value(check(serde_json::json!({})).unwrap()).unwrap();
        let object = stored.as_object_mut().unwrap();
        object.remove("gate");
        object.remove("eval_seed");
        object.insert("min_reward_gain".into(), serde_json::json!(0.0));
        object.insert("max_quality_drop".into(), serde_json::json!(0.03));
        let spec: JobSpec = serde_json::from_value(stored).unwrap();
        assert_eq!((spec.gate, spec.eval_seed), (GateRule::default(), None));
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
                serde_json::json!({"eval_prompts": {"generator": "shapes_world", "count": 3, "per_category": 1}}),
                "eval_prompts.count",
            ),
            (
                serde_json::json!({"gate": {"max_drop": {"colour": -0.1}}}),
                "gate.max_drop.colour",
            ),
            (serde_json::json!({"gate": {"confidence": 0.9999}}), "gate.confidence"),
            (serde_json::json!({"gate": {"resamples": 10}}), "gate.resamples"),
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
            (
                serde_json::json!({"hyperparameters": {"lora_rank": 257}}),
                "hyperparameters.lora_rank",
            ),
            (
                serde_json::json!({"hyperparameters": {"lora_rank": -1}}),
                "hyperparameters.lora_rank",
            ),
            (
                serde_json::json!({"hyperparameters": {"lora_rank": 8, "lora_alpha": 0.0}}),
                "hyperparameters.lora_alpha",
            ),
            (
                serde_json::json!({"hyperparameters": {"lora_rank": 8, "lora_alpha": 10_000.5}}),
                "hyperparameters.lora_alpha",
            ),
            (
                serde_json::json!({"hyperparameters": {"lora_alpha": 8.0}}),
                "hyperparameters.lora_alpha",
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
    fn lora_is_off_by_default_and_its_alpha_defaults_to_the_rank() {
        let full = check(serde_json::json!({})).unwrap().hyperparameters;
        assert_eq!((full.lora_rank, full.lora_alpha), (0, None));
        let lora = check(serde_json::json!({"hyperparameters": {"lora_rank": 16}}))
            .unwrap()
            .hyperparameters;
        assert_eq!((lora.lora_rank, lora.lora_alpha), (16, Some(16.0)));
        let scaled = check(serde_json::json!({"hyperparameters": {"lora_rank": 256, "lora_alpha": 0.001}}))
            .unwrap()
            .hyperparameters;
        assert_eq!((scaled.lora_rank, scaled.lora_alpha), (256, Some(0.001)));
        let err = check(serde_json::json!({"hyperparameters": {"lora_rank": 300}})).unwrap_err();
        assert!(err.to_string().contains("between 0 and 256. Given: 300"), "{err}");
        // A job stored before LoRA existed reads as a full fine-tune.
        let mut stored = serde_json::to_value(check(serde_json::json!({})).unwrap()).unwrap();
        let hyper = stored["hyperparameters"].as_object_mut().unwrap();
        hyper.remove("lora_rank");
        hyper.remove("lora_alpha");
        let spec: JobSpec = serde_json::from_value(stored).unwrap();
        assert_eq!(spec.hyperparameters.lora_rank, 0);
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
        hyper.remove("pretrain_target");
        let spec: JobSpec = serde_json::from_value(stored).unwrap();
        assert_eq!(spec.hyperparameters.objective, Objective::Rwr);
        assert_eq!(spec.hyperparameters.objective_beta, None);
        assert_eq!(spec.hyperparameters.pretrain_target, PretrainTarget::Data);
    }

    #[test]
    fn the_pretraining_target_defaults_to_the_data_and_takes_the_base() {
        let spec = check(serde_json::json!({})).unwrap();
        assert_eq!(spec.hyperparameters.pretrain_target, PretrainTarget::Data);
        let spec = check(serde_json::json!({"hyperparameters": {"pretrain_target": "base"}})).unwrap();
        assert_eq!(spec.hyperparameters.pretrain_target, PretrainTarget::Base);
        let err = serde_json::from_value::<FineTuneRequest>(serde_json::json!({
            "hyperparameters": {"pretrain_target": "ema"}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("unknown variant `ema`"), "{err}");
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
        let err = spec
            .validate("base".into(), &JobLimits::default(), &GateRule::default())
            .unwrap_err();
        assert_eq!(err.param(), Some("hyperparameters.beta"));
    }

    #[test]
    fn a_nested_object_sent_as_an_array_is_refused() {
        // `{"gate": {"max_drop": value}}` for "gate.max_drop".
        let nest = |field: &str, value: serde_json::Value| {
            field
                .rsplit('.')
                .fold(value, |inner, key| serde_json::json!({ key: inner }))
        };
        for field in OBJECT_FIELDS {
            let err = FineTuneRequest::check_object_fields(&nest(field, serde_json::json!([null, null]))).unwrap_err();
            assert_eq!(err.param(), Some(field));
            assert!(err.to_string().contains("must be an object. Given: an array"), "{err}");
            assert!(FineTuneRequest::check_object_fields(&nest(field, serde_json::Value::Null)).is_ok());
            assert!(FineTuneRequest::check_object_fields(&nest(field, serde_json::json!({}))).is_ok());
        }
    }
}
