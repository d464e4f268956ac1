//! One reward model: its ONNX session, tokenizer and preprocessor, scoring a batch of (image, prompt) pairs in
//! one `run` call. Owned by one scorer thread (`Session::run` takes `&mut self`); see `reward::scorer`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;

use crate::error::{Error, Result};
use crate::pipeline::tokenizer::ClipTokenizer;
use crate::reward::manifest::{Manifest, RewardKind};
use crate::reward::preprocess::Preprocessor;
use crate::runtime::contract::{ElementType, SessionContract};
use crate::runtime::{ExecutionProvider, Runtime};

const PIXEL_VALUES: &str = "pixel_values";
const INPUT_IDS: &str = "input_ids";
const ATTENTION_MASK: &str = "attention_mask";

pub struct RewardModel {
    pub manifest: Manifest,
    session: Session,
    /// `None` for the image_head kind, which reads no text.
    tokenizer: Option<ClipTokenizer>,
    preprocessor: Preprocessor,
    ids_int32: bool,
    /// Whether the graph takes an attention mask (clip_similarity exports do).
    feeds_mask: bool,
    provider: ExecutionProvider,
}

impl RewardModel {
    /// Opens `<folder>/manifest.json`, its tokenizer and its graph, and checks that they agree.
    pub fn load(runtime: &mut Runtime, folder: &Path) -> Result<Self> {
        let manifest = Manifest::read(folder)?;
        let tokenizer = match &manifest.text {
            None => None,
            Some(text) => {
                let tokenizer = ClipTokenizer::from_folder(&text.tokenizer)?;
                if tokenizer.max_length() != text.max_length {
                    return Err(Error::model(
                        folder,
                        format!(
                            "manifest.json says `text.max_length` {}, but the tokenizer's model_max_length is {}",
                            text.max_length,
                            tokenizer.max_length()
                        ),
                    ));
                }
                Some(tokenizer)
            }
        };
        let session = runtime.session("reward", &manifest.model)?;
        let contract = SessionContract::read("reward", &session)?;
        let mismatch = |reason: String| Error::model(folder, reason);

        let pixels = contract.input(PIXEL_VALUES)?;
        if pixels.element != ElementType::Float32 || pixels.rank() != 4 {
            return Err(mismatch(format!(
                "the graph's {} must be float32 [B, 3, H, W]",
                pixels.describe()
            )));
        }
        let (height, width) = (manifest.image.crop_height as i64, manifest.image.crop_width as i64);
        for (axis, expected) in [(2, height), (3, width)] {
            let actual = pixels.shape[axis];
            if actual > 0 && actual != expected {
                return Err(mismatch(format!(
                    "the graph's {} does not fit the manifest's {height}x{width} crop",
                    pixels.describe()
                )));
            }
        }
        let (ids_int32, has_mask) = match &manifest.text {
            None => {
                contract.reject_unknown_inputs(&[PIXEL_VALUES])?;
                (false, false)
            }
            Some(text) => {
                let ids = contract.input(INPUT_IDS)?;
                let ids_int32 = match ids.element {
                    ElementType::Int64 => false,
                    ElementType::Int32 => true,
                    _ => {
                        return Err(mismatch(format!(
                            "the graph's {} must be int64 or int32",
                            ids.describe()
                        )))
                    }
                };
                let has_mask = contract.inputs.iter().any(|spec| spec.name == ATTENTION_MASK);
                if text.attention_mask && !has_mask {
                    return Err(mismatch(
                        "manifest.json sets `text.attention_mask`, but the graph has no `attention_mask` input".into(),
                    ));
                }
                contract.reject_unknown_inputs(&[PIXEL_VALUES, INPUT_IDS, ATTENTION_MASK])?;
                (ids_int32, has_mask)
            }
        };
        let outputs: Vec<&str> = match &manifest.kind {
            RewardKind::RewardHead { output } | RewardKind::ImageHead { output } => vec![output.as_str()],
            RewardKind::ClipSimilarity {
                image_embeds,
                text_embeds,
                ..
            } => vec![image_embeds.as_str(), text_embeds.as_str()],
        };
        for name in outputs {
            if !contract.outputs.iter().any(|spec| spec.name == name) {
                return Err(mismatch(format!(
                    "manifest.json names the output `{name}`, but the graph's outputs are: {}",
                    contract
                        .outputs
                        .iter()
                        .map(|spec| spec.describe())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(RewardModel {
            preprocessor: Preprocessor::new(manifest.image.clone()),
            feeds_mask: has_mask,
            manifest,
            session,
            tokenizer,
            ids_int32,
            provider: runtime.provider(),
        })
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        let (height, width) = self.preprocessor.output_size();
        let text = match &self.tokenizer {
            Some(tokenizer) => format!("tokenizer max length {}", tokenizer.max_length()),
            None => "no text".to_string(),
        };
        format!(
            "reward model `{}` ({}): {}x{} pixels, resize {:?}, {text}",
            self.manifest.name,
            self.manifest.kind_name(),
            height,
            width,
            self.manifest.image.filter,
        )
    }

    /// Scores image `i` (`pixel_values` holds `[B, 3, H, W]` from this model's preprocessor) against
    /// `prompts[i]`, in one ONNX Runtime call, then applies the manifest's output transform, if any.
    pub fn score(&mut self, pixel_values: &[f32], prompts: &[&str]) -> Result<Vec<f32>> {
        let mut scores = self.raw_scores(pixel_values, prompts)?;
        if let Some(normalize) = self.manifest.normalize {
            scores.iter_mut().for_each(|score| *score = normalize.apply(*score));
        }
        Ok(scores)
    }

    /// The kind's scores, before the output transform.
    fn raw_scores(&mut self, pixel_values: &[f32], prompts: &[&str]) -> Result<Vec<f32>> {
        let batch = prompts.len();
        let per_image = self.preprocessor.values_per_image();
        if pixel_values.len() != batch * per_image {
            return Err(Error::Internal(format!(
                "reward batch has {} pixel values for {batch} prompts; expected {}",
                pixel_values.len(),
                batch * per_image
            )));
        }
        if batch == 0 {
            return Ok(Vec::new());
        }
        let (height, width) = self.preprocessor.output_size();
        let to_error = |err: ort::Error| Error::Inference {
            component: "reward",
            message: err.to_string(),
        };
        let pixels = (
            Cow::from(PIXEL_VALUES),
            TensorRef::from_array_view(([batch, 3, height, width], pixel_values))
                .map_err(to_error)?
                .into(),
        );
        let Some(tokenizer) = &self.tokenizer else {
            let RewardKind::ImageHead { output } = &self.manifest.kind else {
                return Err(Error::Internal(
                    "a reward model that reads text has no tokenizer".into(),
                ));
            };
            let outputs = self.session.run(vec![pixels]).map_err(to_error)?;
            return one_per_image(&outputs[output.as_str()], batch);
        };
        // clip_similarity encodes each distinct prompt once; reward_head needs one text row per image.
        let (texts, rows): (Vec<&str>, Vec<usize>) = match self.manifest.kind {
            RewardKind::RewardHead { .. } | RewardKind::ImageHead { .. } => (prompts.to_vec(), (0..batch).collect()),
            RewardKind::ClipSimilarity { .. } => {
                let mut unique: Vec<&str> = Vec::new();
                let mut index: HashMap<&str, usize> = HashMap::new();
                let rows = prompts
                    .iter()
                    .map(|&prompt| {
                        *index.entry(prompt).or_insert_with(|| {
                            unique.push(prompt);
                            unique.len() - 1
                        })
                    })
                    .collect();
                (unique, rows)
            }
        };
        let seq_len = tokenizer.max_length();
        let mut ids: Vec<i64> = Vec::with_capacity(texts.len() * seq_len);
        let mut mask: Vec<i64> = Vec::with_capacity(texts.len() * seq_len);
        for text in &texts {
            let tokens = tokenizer.encode(text)?;
            let real = tokens.untruncated_len.min(seq_len);
            ids.extend(tokens.ids.iter().map(|&id| i64::from(id)));
            mask.extend((0..seq_len).map(|position| i64::from(position < real)));
        }
        let text_shape = [texts.len(), seq_len];
        let ids32: Vec<i32>;
        let mask32: Vec<i32>;
        let (ids_value, mask_value): (SessionInputValue<'_>, SessionInputValue<'_>) = if self.ids_int32 {
            ids32 = ids.iter().map(|&id| id as i32).collect();
            mask32 = mask.iter().map(|&bit| bit as i32).collect();
            (
                TensorRef::from_array_view((text_shape, ids32.as_slice()))
                    .map_err(to_error)?
                    .into(),
                TensorRef::from_array_view((text_shape, mask32.as_slice()))
                    .map_err(to_error)?
                    .into(),
            )
        } else {
            (
                TensorRef::from_array_view((text_shape, ids.as_slice()))
                    .map_err(to_error)?
                    .into(),
                TensorRef::from_array_view((text_shape, mask.as_slice()))
                    .map_err(to_error)?
                    .into(),
            )
        };
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![pixels, (Cow::from(INPUT_IDS), ids_value)];
        if self.feeds_mask {
            inputs.push((Cow::from(ATTENTION_MASK), mask_value));
        }
        let outputs = self.session.run(inputs).map_err(to_error)?;
        match &self.manifest.kind {
            RewardKind::RewardHead { output } | RewardKind::ImageHead { output } => {
                one_per_image(&outputs[output.as_str()], batch)
            }
            RewardKind::ClipSimilarity {
                image_embeds,
                text_embeds,
                logit_scale,
            } => {
                let (_, images) = outputs[image_embeds.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(to_error)?;
                let (_, text) = outputs[text_embeds.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(to_error)?;
                let dim = images.len() / batch;
                if dim == 0 || images.len() != batch * dim || text.len() != texts.len() * dim {
                    return Err(Error::Inference {
                        component: "reward",
                        message: format!(
                            "embeddings of {} and {} values do not fit {batch} images and {} prompts",
                            images.len(),
                            text.len(),
                            texts.len()
                        ),
                    });
                }
                Ok(rows
                    .iter()
                    .enumerate()
                    .map(|(image, &row)| {
                        logit_scale
                            * cosine(
                                &images[image * dim..(image + 1) * dim],
                                &text[row * dim..(row + 1) * dim],
                            )
                    })
                    .collect())
            }
        }
    }
}

/// A `[B]` (or `[B, 1]`) float32 output as one score per image.
fn one_per_image(value: &ort::value::DynValue, batch: usize) -> Result<Vec<f32>> {
    let (_, values) = value.try_extract_tensor::<f32>().map_err(|err| Error::Inference {
        component: "reward",
        message: err.to_string(),
    })?;
    if values.len() != batch {
        return Err(Error::Inference {
            component: "reward",
            message: format!("returned {} rewards for a batch of {batch}", values.len()),
        });
    }
    Ok(values.to_vec())
}

/// cos(a, b), computed in f64 as the reference's float32 numerics allow.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut norm_a, mut norm_b) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += f64::from(x) * f64::from(y);
        norm_a += f64::from(x) * f64::from(x);
        norm_b += f64::from(y) * f64::from(y);
    }
    let denominator = (norm_a.sqrt() * norm_b.sqrt()).max(1e-12);
    (dot / denominator) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_ignores_length() {
        assert!((cosine(&[1.0, 0.0], &[3.0, 0.0]) - 1.0).abs() < 1e-7);
        assert!(cosine(&[1.0, 0.0], &[0.0, 2.0]).abs() < 1e-7);
        assert!((cosine(&[1.0, 1.0], &[-1.0, -1.0]) + 1.0).abs() < 1e-7);
    }
}
