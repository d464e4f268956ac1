//! A reward model folder's `manifest.json`: what the graph takes and returns, and how images and text are
//! prepared for it. trainer/README.md documents the schema; `t2i_trainer.build.train_reward` writes the
//! `reward_head` kind, `t2i_trainer.build.export_clip_reward` the `clip_similarity` kind for a transformers CLIP
//! (PickScore) and `export_open_clip_reward` for an open_clip one (HPSv2), and
//! `t2i_trainer.build.export_aesthetic_reward` the `image_head` kind (the LAION aesthetic predictor).
//!
//! Every rule is checked when the folder is opened, and a broken manifest is refused with the field's path and
//! the rule, so a bad folder fails at start-up rather than on the first request.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
pub use crate::pipeline::resample::ResizeFilter;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const SCHEMA_VERSION: u32 = 1;

/// How the graph's output becomes a score.
#[derive(Debug, Clone, PartialEq)]
pub enum RewardKind {
    /// The graph returns the reward itself: `output.name`, float32 `[B]`.
    RewardHead { output: String },
    /// A CLIP export: score = `logit_scale` · cos(image_embeds, text_embeds); `logit_scale` is 1 for the
    /// `cos` formula (HPSv2), the learnt `exp(logit_scale)` for `logit_scale_cos` (PickScore).
    ClipSimilarity {
        image_embeds: String,
        text_embeds: String,
        logit_scale: f32,
    },
    /// The graph scores the image alone (`pixel_values` in, `output.name` float32 `[B]` out), whatever the
    /// prompt: an aesthetic predictor, an image embedding with an MLP head in one graph.
    ImageHead { output: String },
}

impl RewardKind {
    /// Histogram buckets that fit the model's score range: tenths from -0.5 to 1.5 of the score's unit, which is
    /// 1 for a reward head trained on labels and `logit_scale` for CLIP similarity, whose cosines rarely pass 0.5.
    pub fn score_buckets(&self) -> Vec<f64> {
        let (unit, count) = match self {
            RewardKind::RewardHead { .. } => (1.0, 21),
            RewardKind::ClipSimilarity { logit_scale, .. } => (f64::from(*logit_scale), 11),
            // Aesthetic scores run from about 1 to 10: half points from 0 to 10.
            RewardKind::ImageHead { .. } => return (0..=20).map(|half| f64::from(half) / 2.0).collect(),
        };
        (0..count).map(|tenth| f64::from(tenth - 5) / 10.0 * unit).collect()
    }
}

/// The output transform a manifest may state (`score.normalize`): score = (raw − mean) / std, e.g.
/// ImageReward's standardisation of its MLP's output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    pub mean: f32,
    pub std: f32,
}

impl Normalize {
    pub fn apply(&self, raw: f32) -> f32 {
        (raw - self.mean) / self.std
    }
}

/// Where a centre crop starts when the margin `d` (resized size − crop size) is odd: transformers floors
/// `d / 2`; torchvision's `CenterCrop` (ImageReward's and open_clip's transforms) rounds it half to even, one
/// pixel further when `d ≡ 3 (mod 4)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CropOffset {
    #[default]
    Floor,
    RoundHalfEven,
}

impl CropOffset {
    pub fn of(self, margin: usize) -> usize {
        let half = margin / 2;
        match self {
            CropOffset::RoundHalfEven if margin % 2 == 1 && half % 2 == 1 => half + 1,
            _ => half,
        }
    }
}

/// Image preprocessing, in order: decode to RGB, resize the shortest edge, centre-crop, rescale, normalise.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSpec {
    pub shortest_edge: usize,
    pub filter: ResizeFilter,
    pub crop_height: usize,
    pub crop_width: usize,
    pub crop_offset: CropOffset,
    pub rescale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextSpec {
    /// The tokenizer folder, resolved against the manifest's folder.
    pub tokenizer: PathBuf,
    pub max_length: usize,
    /// Whether the graph takes an `attention_mask` (1 for real tokens, 0 for padding).
    pub attention_mask: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub kind: RewardKind,
    pub model: PathBuf,
    pub image: ImageSpec,
    /// `None` for the `image_head` kind, which reads no text.
    pub text: Option<TextSpec>,
    /// Scores at or above this count as "good", when the manifest says (reward_head models trained on 0/1).
    pub good_threshold: Option<f32>,
    /// Applied to the kind's score when the manifest states it.
    pub normalize: Option<Normalize>,
}

// The file as written; `Manifest` is what remains after the checks.
#[derive(Deserialize)]
struct RawManifest {
    schema_version: u32,
    name: String,
    kind: String,
    model: String,
    #[serde(default)]
    output: Value,
    image: RawImage,
    #[serde(default)]
    text: Option<RawText>,
    #[serde(default)]
    score: RawScore,
}

#[derive(Deserialize)]
struct RawImage {
    resize: RawResize,
    center_crop: RawCrop,
    rescale: f32,
    mean: Vec<f32>,
    std: Vec<f32>,
    #[serde(default = "rgb")]
    channel_order: String,
}

fn rgb() -> String {
    "rgb".into()
}

#[derive(Deserialize)]
struct RawResize {
    shortest_edge: usize,
    filter: String,
}

#[derive(Deserialize)]
struct RawCrop {
    height: usize,
    width: usize,
    #[serde(default)]
    offset: Option<String>,
}

#[derive(Deserialize)]
struct RawText {
    tokenizer: String,
    #[serde(default = "max_length")]
    max_length: usize,
    #[serde(default)]
    attention_mask: bool,
}

fn max_length() -> usize {
    77
}

#[derive(Deserialize, Default)]
struct RawScore {
    #[serde(default)]
    formula: Option<String>,
    #[serde(default)]
    logit_scale: Option<f32>,
    #[serde(default)]
    good_threshold: Option<f32>,
    #[serde(default)]
    normalize: Option<RawNormalize>,
}

#[derive(Deserialize)]
struct RawNormalize {
    mean: f32,
    std: f32,
}

/// The largest image side a manifest may ask for; far above any CLIP (224 or 336 px).
const MAX_SIDE: usize = 2048;

impl Manifest {
    /// Reads and checks `<folder>/manifest.json`.
    pub fn read(folder: &Path) -> Result<Self> {
        let path = folder.join(MANIFEST_FILE);
        let bad = |reason: String| Error::model(folder, format!("{MANIFEST_FILE}: {reason}"));
        let text = std::fs::read_to_string(&path).map_err(|err| {
            Error::model(
                folder,
                format!("cannot read {MANIFEST_FILE} ({err}); a reward model folder needs one (see trainer/README.md)"),
            )
        })?;
        let mut deserializer = serde_json::Deserializer::from_str(&text);
        let raw: RawManifest = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
            let path = err.path().to_string();
            bad(format!("`{path}`: {}", err.into_inner()))
        })?;
        Self::check(raw, folder).map_err(bad)
    }

    fn check(raw: RawManifest, folder: &Path) -> std::result::Result<Self, String> {
        if raw.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "`schema_version` is {}; this server reads version {SCHEMA_VERSION}",
                raw.schema_version
            ));
        }
        if raw.name.trim().is_empty() {
            return Err("`name` must not be empty".into());
        }
        let output_field = |field: &str, default: &str| -> std::result::Result<String, String> {
            match raw.output.get(field) {
                None => Ok(default.to_string()),
                Some(Value::String(name)) if !name.is_empty() => Ok(name.clone()),
                Some(other) => Err(format!("`output.{field}` must be a tensor name. Given: {other}")),
            }
        };
        let kind = match raw.kind.as_str() {
            "reward_head" => RewardKind::RewardHead {
                output: output_field("name", "reward")?,
            },
            "image_head" => RewardKind::ImageHead {
                output: output_field("name", "score")?,
            },
            "clip_similarity" => {
                let logit_scale = match raw.score.formula.as_deref() {
                    Some("logit_scale_cos") | None => raw
                        .score
                        .logit_scale
                        .ok_or("`score.logit_scale` is required for the logit_scale_cos formula")?,
                    Some("cos") => match raw.score.logit_scale {
                        None => 1.0,
                        Some(given) => {
                            return Err(format!(
                                "`score.logit_scale` ({given}) is given, but the `cos` formula uses none; \
                                 drop it or use `logit_scale_cos`"
                            ))
                        }
                    },
                    Some(other) => {
                        return Err(format!(
                            "`score.formula` is `{other}`; the clip_similarity kind supports `logit_scale_cos` \
                             and `cos`"
                        ))
                    }
                };
                if !logit_scale.is_finite() || logit_scale <= 0.0 {
                    return Err(format!(
                        "`score.logit_scale` must be a positive number. Given: {logit_scale}"
                    ));
                }
                RewardKind::ClipSimilarity {
                    image_embeds: output_field("image_embeds", "image_embeds")?,
                    text_embeds: output_field("text_embeds", "text_embeds")?,
                    logit_scale,
                }
            }
            other => {
                return Err(format!(
                    "`kind` is `{other}`; supported kinds: reward_head, clip_similarity, image_head"
                ))
            }
        };
        let image = raw.image;
        let filter = ResizeFilter::from_name(&image.resize.filter).ok_or_else(|| {
            format!(
                "`image.resize.filter` is `{}`; supported: {}",
                image.resize.filter,
                ResizeFilter::NAMES
            )
        })?;
        for (field, value) in [
            ("image.resize.shortest_edge", image.resize.shortest_edge),
            ("image.center_crop.height", image.center_crop.height),
            ("image.center_crop.width", image.center_crop.width),
        ] {
            if !(1..=MAX_SIDE).contains(&value) {
                return Err(format!("`{field}` must be between 1 and {MAX_SIDE}. Given: {value}"));
            }
        }
        let crop_offset = match image.center_crop.offset.as_deref() {
            None | Some("floor") => CropOffset::Floor,
            Some("round_half_even") => CropOffset::RoundHalfEven,
            Some(other) => {
                return Err(format!(
                    "`image.center_crop.offset` is `{other}`; supported: floor (transformers), round_half_even \
                     (torchvision)"
                ))
            }
        };
        let crop_side = image.center_crop.height.max(image.center_crop.width);
        if crop_side > image.resize.shortest_edge {
            return Err(format!(
                "`image.center_crop` ({}x{}) must fit inside the resized image: at most `image.resize.shortest_edge` ({})",
                image.center_crop.height, image.center_crop.width, image.resize.shortest_edge
            ));
        }
        if image.channel_order != "rgb" {
            return Err(format!(
                "`image.channel_order` is `{}`; supported: rgb",
                image.channel_order
            ));
        }
        if !image.rescale.is_finite() || image.rescale <= 0.0 {
            return Err(format!(
                "`image.rescale` must be a positive number. Given: {}",
                image.rescale
            ));
        }
        let three = |field: &str, values: &[f32]| -> std::result::Result<[f32; 3], String> {
            match values {
                [r, g, b] if values.iter().all(|v| v.is_finite()) => Ok([*r, *g, *b]),
                _ => Err(format!(
                    "`{field}` must be 3 finite numbers (R, G, B). Given: {values:?}"
                )),
            }
        };
        let mean = three("image.mean", &image.mean)?;
        let std = three("image.std", &image.std)?;
        if std.iter().any(|&value| value <= 0.0) {
            return Err(format!("`image.std` must be positive. Given: {std:?}"));
        }
        let reads_text = !matches!(kind, RewardKind::ImageHead { .. });
        let raw_text = match (raw.text, reads_text) {
            (Some(text), true) => Some(text),
            (None, true) => return Err(format!("`text` is required for the {} kind", raw.kind)),
            (Some(_), false) => {
                return Err("`text` is given, but the image_head kind reads no text; drop it".into());
            }
            (None, false) => None,
        };
        if let Some(text) = &raw_text {
            if !(2..=4096).contains(&text.max_length) {
                return Err(format!(
                    "`text.max_length` must be between 2 and 4096. Given: {}",
                    text.max_length
                ));
            }
        }
        if let Some(threshold) = raw.score.good_threshold {
            if !threshold.is_finite() {
                return Err(format!("`score.good_threshold` must be finite. Given: {threshold}"));
            }
        }
        let normalize = match raw.score.normalize {
            None => None,
            Some(RawNormalize { mean, std }) => {
                if !mean.is_finite() {
                    return Err(format!("`score.normalize.mean` must be finite. Given: {mean}"));
                }
                if !(std.is_finite() && std > 0.0) {
                    return Err(format!("`score.normalize.std` must be a positive number. Given: {std}"));
                }
                Some(Normalize { mean, std })
            }
        };
        let inside = |field: &str, relative: &str| -> std::result::Result<PathBuf, String> {
            let relative_path = Path::new(relative);
            if relative.is_empty()
                || relative_path.is_absolute()
                || relative_path
                    .components()
                    .any(|part| matches!(part, std::path::Component::ParentDir))
            {
                return Err(format!(
                    "`{field}` must be a path inside the model folder. Given: `{relative}`"
                ));
            }
            Ok(folder.join(relative_path))
        };
        let model = inside("model", &raw.model)?;
        if !model.is_file() {
            return Err(format!("`model` names `{}`, which does not exist", model.display()));
        }
        let text = match raw_text {
            None => None,
            Some(text) => {
                let tokenizer = inside("text.tokenizer", &text.tokenizer)?;
                if !tokenizer.is_dir() {
                    return Err(format!(
                        "`text.tokenizer` names `{}`, which is not a folder",
                        tokenizer.display()
                    ));
                }
                Some(TextSpec {
                    tokenizer,
                    max_length: text.max_length,
                    attention_mask: text.attention_mask,
                })
            }
        };
        Ok(Manifest {
            name: raw.name,
            kind,
            model,
            image: ImageSpec {
                shortest_edge: image.resize.shortest_edge,
                filter,
                crop_height: image.center_crop.height,
                crop_width: image.center_crop.width,
                crop_offset,
                rescale: image.rescale,
                mean,
                std,
            },
            text,
            good_threshold: raw.score.good_threshold,
            normalize,
        })
    }

    /// Histogram buckets for this model's scores: the kind's, or, for standardised scores (`score.normalize`),
    /// half units from −3 to 3.
    pub fn score_buckets(&self) -> Vec<f64> {
        match self.normalize {
            Some(_) => (-6..=6).map(|half| f64::from(half) / 2.0).collect(),
            None => self.kind.score_buckets(),
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            RewardKind::RewardHead { .. } => "reward_head",
            RewardKind::ClipSimilarity { .. } => "clip_similarity",
            RewardKind::ImageHead { .. } => "image_head",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder_with(manifest: &Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"not read here").unwrap();
        std::fs::create_dir(dir.path().join("tokenizer")).unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), manifest.to_string()).unwrap();
        dir
    }

    fn reward_head() -> Value {
        serde_json::json!({
            "schema_version": 1, "name": "r", "kind": "reward_head", "model": "model.onnx",
            "output": {"name": "reward"},
            "image": {"resize": {"shortest_edge": 64, "filter": "bicubic"},
                      "center_crop": {"height": 64, "width": 64}, "rescale": 0.00392156862745098,
                      "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "channel_order": "rgb"},
            "text": {"tokenizer": "tokenizer", "max_length": 77},
            "score": {"good_threshold": 0.5}
        })
    }

    fn error_of(manifest: Value) -> String {
        let dir = folder_with(&manifest);
        Manifest::read(dir.path()).unwrap_err().to_string()
    }

    #[test]
    fn reads_the_reward_head_kind() {
        let dir = folder_with(&reward_head());
        let manifest = Manifest::read(dir.path()).unwrap();
        assert_eq!(
            manifest.kind,
            RewardKind::RewardHead {
                output: "reward".into()
            }
        );
        assert_eq!(manifest.image.filter, ResizeFilter::Bicubic);
        assert_eq!(manifest.good_threshold, Some(0.5));
        assert!(!manifest.text.unwrap().attention_mask);
        assert_eq!(manifest.normalize, None);
    }

    #[test]
    fn reads_and_checks_the_normalize_transform() {
        let mut value = reward_head();
        value["score"] = serde_json::json!({"normalize": {"mean": 0.25, "std": 2.0}});
        let dir = folder_with(&value);
        let manifest = Manifest::read(dir.path()).unwrap();
        let normalize = manifest.normalize.unwrap();
        assert_eq!(normalize.apply(4.25), 2.0);
        assert_eq!(manifest.score_buckets().first(), Some(&-3.0));
        value["score"] = serde_json::json!({"normalize": {"mean": 0.25, "std": 0.0}});
        let error = error_of(value.clone());
        assert!(
            error.contains("`score.normalize.std` must be a positive number"),
            "{error}"
        );
        value["score"] = serde_json::json!({"normalize": {"mean": 0.25}});
        let error = error_of(value);
        assert!(error.contains("score.normalize") && error.contains("std"), "{error}");
    }

    #[test]
    fn reads_the_clip_similarity_kind() {
        let mut value = reward_head();
        value["kind"] = "clip_similarity".into();
        value["output"] = serde_json::json!({"image_embeds": "image_embeds", "text_embeds": "text_embeds"});
        value["score"] = serde_json::json!({"formula": "logit_scale_cos", "logit_scale": 100.0});
        let dir = folder_with(&value);
        let manifest = Manifest::read(dir.path()).unwrap();
        assert!(matches!(manifest.kind, RewardKind::ClipSimilarity { logit_scale, .. } if logit_scale == 100.0));
        value["score"] = serde_json::json!({"formula": "cos"});
        let dir = folder_with(&value);
        let manifest = Manifest::read(dir.path()).unwrap();
        assert!(matches!(manifest.kind, RewardKind::ClipSimilarity { logit_scale, .. } if logit_scale == 1.0));
        value["score"] = serde_json::json!({"formula": "cos", "logit_scale": 100.0});
        assert!(error_of(value.clone()).contains("the `cos` formula uses none"));
        value["score"] = serde_json::json!({"formula": "logit_scale_cos"});
        assert!(error_of(value).contains("`score.logit_scale` is required"));
    }

    #[test]
    fn reads_the_image_head_kind_which_takes_no_text() {
        let mut value = reward_head();
        value["kind"] = "image_head".into();
        value["output"] = serde_json::json!({"name": "aesthetic"});
        assert!(error_of(value.clone()).contains("the image_head kind reads no text"));
        value.as_object_mut().unwrap().remove("text");
        let dir = folder_with(&value);
        let manifest = Manifest::read(dir.path()).unwrap();
        assert_eq!(
            manifest.kind,
            RewardKind::ImageHead {
                output: "aesthetic".into()
            }
        );
        assert!(manifest.text.is_none());

        let mut value = reward_head();
        value.as_object_mut().unwrap().remove("text");
        assert!(error_of(value).contains("`text` is required for the reward_head kind"));
    }

    #[test]
    fn names_the_broken_field() {
        let mut value = reward_head();
        value["image"]["resize"]["filter"] = "nearest".into();
        let message = error_of(value);
        assert!(message.contains("`image.resize.filter` is `nearest`"), "{message}");
        assert!(message.contains("bicubic"), "{message}");

        let mut value = reward_head();
        value["image"]["center_crop"]["height"] = 96.into();
        assert!(error_of(value.clone()).contains("`image.center_crop` (96x64) must fit"));
        value["image"]["center_crop"] = serde_json::json!({"height": 64, "width": 64, "offset": "ceil"});
        assert!(error_of(value).contains("`image.center_crop.offset` is `ceil`"));

        let mut value = reward_head();
        value["image"]["std"] = serde_json::json!([0.5, 0.0, 0.5]);
        assert!(error_of(value).contains("`image.std` must be positive"));

        let mut value = reward_head();
        value["kind"] = "pairwise".into();
        assert!(error_of(value).contains("supported kinds: reward_head, clip_similarity, image_head"));

        let mut value = reward_head();
        value["model"] = "../elsewhere.onnx".into();
        assert!(error_of(value).contains("must be a path inside the model folder"));

        let mut value = reward_head();
        value["image"]["mean"] = serde_json::json!([0.5, 0.5]);
        assert!(error_of(value).contains("`image.mean` must be 3 finite numbers"));

        let mut value = reward_head();
        value["image"]["rescale"] = "x".into();
        let message = error_of(value);
        assert!(message.contains("`image.rescale`"), "{message}");

        let mut value = reward_head();
        value["schema_version"] = 2.into();
        assert!(error_of(value).contains("reads version 1"));
    }

    #[test]
    fn a_missing_manifest_says_what_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let message = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(message.contains("needs one"), "{message}");
    }
}
