//! Reading a diffusers/Optimum ONNX export folder (`optimum-cli export onnx --task text-to-image`):
//! the configs that fix latent channels, VAE factor and default size, the tokenizer and the scheduler config.
//! Sessions are created elsewhere (`runtime`); this module only reads files and checks they are all there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::pipeline::request::MAX_GUIDANCE_SCALE;
use crate::pipeline::scheduler::{SchedulerConfig, SchedulerKind};
use crate::pipeline::tokenizer::ClipTokenizer;

/// The ONNX components `/generate` needs, relative to the model folder: one or two text encoders, the UNet and
/// the VAE decoder.
pub const UNET_ONNX: &str = "unet/model.onnx";
pub const VAE_DECODER_ONNX: &str = "vae_decoder/model.onnx";
/// Optional: img2img encodes its starting image with it.
pub const VAE_ENCODER_ONNX: &str = "vae_encoder/model.onnx";

/// The SDXL pipeline classes this server renders; other classes without "XL" load as Stable Diffusion 1.x/2.x.
pub const SDXL_PIPELINES: [&str; 2] = ["StableDiffusionXLPipeline", SDXL_IMG2IMG_PIPELINE];
/// SDXL's image-to-image pipeline, the class the refiner ships as: it refines an image, so requests must send
/// one (`init_image`).
pub const SDXL_IMG2IMG_PIPELINE: &str = "StableDiffusionXLImg2ImgPipeline";

/// How a family conditions its UNet on text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Stable Diffusion 1.x/2.x: one CLIP text encoder, its last hidden state.
    StableDiffusion,
    /// Stable Diffusion XL (base, Turbo and refiner): the penultimate hidden states of its CLIP text encoders
    /// side by side (two; the refiner has only the second), the second's pooled `text_embeds`, and `time_ids`
    /// (original size, crop corner, then the target size or, for the refiner, an aesthetic score).
    StableDiffusionXl {
        /// With classifier-free guidance and no negative prompt, the negative rows are zeros instead of the
        /// empty prompt's embeddings (`force_zeros_for_empty_prompt` in `model_index.json`).
        force_zeros_for_empty_prompt: bool,
        /// The refiner's time ids end with an aesthetic score instead of the target size
        /// (`requires_aesthetics_score` in `model_index.json`).
        requires_aesthetics_score: bool,
        /// The pipeline class is SDXL's img2img one: every request starts from an image.
        refines_images: bool,
    },
}

impl Family {
    pub fn is_xl(self) -> bool {
        matches!(self, Family::StableDiffusionXl { .. })
    }

    /// Whether the UNet's time ids take an aesthetic score (SDXL's refiner).
    pub fn aesthetic_scores(self) -> bool {
        matches!(
            self,
            Family::StableDiffusionXl {
                requires_aesthetics_score: true,
                ..
            }
        )
    }

    /// Whether the model only refines images, so that requests must send `init_image`.
    pub fn refines_images(self) -> bool {
        matches!(
            self,
            Family::StableDiffusionXl {
                refines_images: true,
                ..
            }
        )
    }
}

/// One text encoder of the export: its component name, ONNX file and tokenizer.
pub struct TextEncoderFiles {
    pub name: &'static str,
    pub onnx: &'static str,
    pub tokenizer: ClipTokenizer,
}

/// Everything about a model that is known before any session exists, and the one fact only a session can
/// tell (`any_latent_size`), found once for all the pipelines that load the folder.
pub struct ModelFolder {
    pub root: PathBuf,
    /// The folder's name, used as the model id in responses.
    pub name: String,
    pub pipeline_class: String,
    pub family: Family,
    /// In the order the pipeline concatenates their hidden states: `text_encoder`, then `text_encoder_2`.
    pub text_encoders: Vec<TextEncoderFiles>,
    pub scheduler_config: SchedulerConfig,
    /// The scheduler named by `scheduler_config.json`, used when a request names none.
    pub default_scheduler: SchedulerKind,
    pub latent_channels: usize,
    /// Pixels per latent cell: 2^(VAE blocks - 1), 8 for Stable Diffusion.
    pub vae_scale_factor: usize,
    /// Pixels per latent cell times the UNet's total downsampling: every export renders multiples of this.
    /// Exports traced with explicit upsample sizes render any multiple of `vae_scale_factor`; the pipeline
    /// finds out which kind it has when it loads (`Pipeline::size_multiple`).
    pub size_multiple: usize,
    pub scaling_factor: f32,
    pub shift_factor: f32,
    /// The size the model was trained at, from the UNet's `sample_size` (an int, or `[height, width]`) times
    /// the VAE factor, as diffusers' pipelines default to it.
    pub default_height: usize,
    pub default_width: usize,
    /// Steps and guidance for requests that name none, from the optional `t2i-align.json`.
    pub defaults: ModelDefaults,
    /// Whether the export's UNet renders latents that are not multiples of its downsampling: probed by the
    /// first `Pipeline::load` of this folder, and read by the others (one per worker).
    pub any_latent_size: OnceLock<bool>,
    /// Whether the export has `vae_encoder/model.onnx` (Optimum writes it), which img2img needs.
    pub has_vae_encoder: bool,
    /// Graphs loaded instead of the export's own, by their path inside the folder (`unet/model.onnx`): the
    /// transformer optimiser's output, kept where it matched the original (`serving::graphs`).
    pub replacements: BTreeMap<String, PathBuf>,
}

/// The file in a model folder where its builder recommends request defaults. Optional: without it, a model gets
/// Stable Diffusion's usual 25 steps at guidance 7.5.
pub const DEFAULTS_FILE: &str = "t2i-align.json";

/// What a model's builder recommends for requests that do not say (`t2i-align.json`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDefaults {
    #[serde(default = "default_steps")]
    pub default_steps: u32,
    #[serde(default = "default_guidance_scale")]
    pub default_guidance_scale: f64,
}

fn default_steps() -> u32 {
    25
}

fn default_guidance_scale() -> f64 {
    7.5
}

impl Default for ModelDefaults {
    fn default() -> Self {
        ModelDefaults {
            default_steps: default_steps(),
            default_guidance_scale: default_guidance_scale(),
        }
    }
}

impl ModelDefaults {
    fn read(root: &Path) -> Result<Self> {
        if !root.join(DEFAULTS_FILE).is_file() {
            return Ok(ModelDefaults::default());
        }
        let defaults: ModelDefaults = read_json(root, DEFAULTS_FILE)?;
        if defaults.default_steps == 0 || defaults.default_steps > 1000 {
            return Err(Error::model(
                root,
                format!(
                    "{DEFAULTS_FILE}: default_steps must be between 1 and 1000. Given: {}",
                    defaults.default_steps
                ),
            ));
        }
        let guidance = defaults.default_guidance_scale;
        if !guidance.is_finite() || !(0.0..=MAX_GUIDANCE_SCALE).contains(&guidance) {
            return Err(Error::model(
                root,
                format!("{DEFAULTS_FILE}: default_guidance_scale must be between 0 and {MAX_GUIDANCE_SCALE}. Given: {guidance}"),
            ));
        }
        Ok(defaults)
    }
}

#[derive(Debug, Deserialize)]
struct UnetConfig {
    #[serde(default = "default_channels")]
    in_channels: usize,
    sample_size: Option<Value>,
    #[serde(default)]
    down_block_types: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct VaeConfig {
    #[serde(default)]
    block_out_channels: Vec<usize>,
    #[serde(default = "default_channels")]
    latent_channels: usize,
    scaling_factor: Option<f32>,
    shift_factor: Option<f32>,
}

fn default_channels() -> usize {
    4
}

impl ModelFolder {
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::model(
                root,
                "not a directory (pass the folder optimum-cli exported to)",
            ));
        }
        let index: Value = read_json(root, "model_index.json")?;
        let pipeline_class = index
            .get("_class_name")
            .and_then(Value::as_str)
            .unwrap_or("StableDiffusionPipeline")
            .to_string();
        let flag = |name: &str, default: bool| index.get(name).and_then(Value::as_bool).unwrap_or(default);
        let family = if SDXL_PIPELINES.contains(&pipeline_class.as_str()) {
            Family::StableDiffusionXl {
                force_zeros_for_empty_prompt: flag("force_zeros_for_empty_prompt", true),
                requires_aesthetics_score: flag("requires_aesthetics_score", false),
                refines_images: pipeline_class == SDXL_IMG2IMG_PIPELINE,
            }
        } else if pipeline_class.contains("XL") {
            return Err(Error::model(
                root,
                format!(
                    "model_index.json: _class_name {pipeline_class} is not served; of the SDXL pipelines, these are: {}",
                    SDXL_PIPELINES.join(", ")
                ),
            ));
        } else {
            // Stable Diffusion 1.x/2.x exports name their class in several ways (the ONNX pipelines of old
            // diffusers, custom subclasses); the files decide, and a wrong one is refused by its contract.
            Family::StableDiffusion
        };
        let mut encoder_parts = Vec::with_capacity(2);
        // SDXL's refiner has no first text encoder: model_index.json names it [null, null].
        if !family.is_xl() || names_component(&index, "text_encoder") {
            encoder_parts.push(("text_encoder", "text_encoder/model.onnx", "tokenizer"));
        }
        if family.is_xl() {
            encoder_parts.push(("text_encoder_2", "text_encoder_2/model.onnx", "tokenizer_2"));
        }
        let mut text_encoders = Vec::with_capacity(encoder_parts.len());
        for (name, onnx, tokenizer) in encoder_parts {
            require_file(root, onnx)?;
            let tokenizer_dir = root.join(tokenizer);
            if !tokenizer_dir.is_dir() {
                return Err(Error::model(
                    root,
                    format!("missing {tokenizer}/ (vocab.json, merges.txt, tokenizer_config.json)"),
                ));
            }
            text_encoders.push(TextEncoderFiles {
                name,
                onnx,
                tokenizer: ClipTokenizer::from_folder(&tokenizer_dir)?,
            });
        }
        for onnx in [UNET_ONNX, VAE_DECODER_ONNX] {
            require_file(root, onnx)?;
        }

        let scheduler_json = require_file(root, "scheduler/scheduler_config.json")?;
        let scheduler_text = read_text(root, &scheduler_json)?;
        let scheduler_config = SchedulerConfig::from_json_str(&scheduler_text)
            .map_err(|err| Error::model(root, format!("scheduler/scheduler_config.json: {err}")))?;
        let default_scheduler = scheduler_config
            .class_name
            .as_deref()
            .and_then(SchedulerKind::from_class_name)
            .unwrap_or_else(|| {
                tracing::warn!(
                    class = ?scheduler_config.class_name,
                    "the export's scheduler is not one this server implements; requests default to euler"
                );
                SchedulerKind::Euler
            });

        let lengths: Vec<usize> = text_encoders
            .iter()
            .map(|encoder| encoder.tokenizer.max_length())
            .collect();
        if lengths.windows(2).any(|pair| pair[0] != pair[1]) {
            return Err(Error::model(
                root,
                format!("the tokenizers' model_max_length differ ({lengths:?}); their hidden states are concatenated"),
            ));
        }

        let unet: UnetConfig = read_json(root, "unet/config.json")?;
        let vae: VaeConfig = read_json(root, "vae_decoder/config.json")?;
        if unet.in_channels != vae.latent_channels {
            return Err(Error::model(
                root,
                format!(
                    "unet/config.json in_channels={} disagrees with vae_decoder/config.json latent_channels={}",
                    unet.in_channels, vae.latent_channels
                ),
            ));
        }
        let vae_scale_factor = 1usize << vae.block_out_channels.len().saturating_sub(1);
        let unet_downsampling = 1usize << unet.down_block_types.len().saturating_sub(1);
        let (latent_height, latent_width) = sample_size(unet.sample_size.as_ref())
            .map_err(|message| Error::model(root, format!("unet/config.json: {message}")))?;
        let name = root
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("model")
            .to_string();
        Ok(ModelFolder {
            root: root.to_path_buf(),
            name,
            pipeline_class,
            family,
            text_encoders,
            scheduler_config,
            default_scheduler,
            latent_channels: vae.latent_channels,
            vae_scale_factor,
            size_multiple: vae_scale_factor * unet_downsampling,
            scaling_factor: vae.scaling_factor.unwrap_or(0.18215),
            shift_factor: vae.shift_factor.unwrap_or(0.0),
            default_height: latent_height * vae_scale_factor,
            default_width: latent_width * vae_scale_factor,
            defaults: ModelDefaults::read(root)?,
            any_latent_size: OnceLock::new(),
            has_vae_encoder: root.join(VAE_ENCODER_ONNX).is_file(),
            replacements: BTreeMap::new(),
        })
    }

    /// The graph a session loads for `relative` (`unet/model.onnx`): a replacement when one was set, else the
    /// export's file.
    pub fn onnx_path(&self, relative: &str) -> PathBuf {
        match self.replacements.get(relative) {
            Some(path) => path.clone(),
            None => self.root.join(relative),
        }
    }

    /// The first text encoder's tokenizer: every tokenizer of a model has its length, and prompts' truncation
    /// is reported by this one.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.text_encoders[0].tokenizer
    }
}

/// The UNet's `sample_size` as (height, width) latent cells: an int for square models, `[height, width]` for
/// others; 64 (Stable Diffusion 1.x's) when the config has none, as diffusers assumes.
fn sample_size(value: Option<&Value>) -> std::result::Result<(usize, usize), String> {
    let cells = |value: &Value| {
        value
            .as_u64()
            .filter(|&cells| cells > 0 && cells <= 4096)
            .map(|c| c as usize)
    };
    match value {
        None | Some(Value::Null) => Ok((64, 64)),
        Some(array @ Value::Array(sides)) if sides.len() == 2 => match (cells(&sides[0]), cells(&sides[1])) {
            (Some(height), Some(width)) => Ok((height, width)),
            _ => Err(format!(
                "sample_size must be [height, width] of positive integers. Given: {array}"
            )),
        },
        Some(value) => cells(value)
            .map(|side| (side, side))
            .ok_or_else(|| format!("sample_size must be a positive integer or [height, width]. Given: {value}")),
    }
}

fn require_file(root: &Path, relative: &str) -> Result<PathBuf> {
    let path = root.join(relative);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::model(root, format!("missing {relative}")))
    }
}

fn read_text(root: &Path, path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|err| Error::model(root, format!("cannot read {}: {err}", path.display())))
}

fn read_json<T: serde::de::DeserializeOwned>(root: &Path, relative: &str) -> Result<T> {
    let path = require_file(root, relative)?;
    let text = read_text(root, &path)?;
    serde_json::from_str(&text).map_err(|err| Error::model(root, format!("{relative} is not valid: {err}")))
}

/// Whether `model_index.json` names a class for `component` (diffusers writes `[null, null]` for one a
/// pipeline was saved without). A missing entry counts as named, so its files are required.
fn names_component(index: &Value, component: &str) -> bool {
    match index.get(component).and_then(Value::as_array) {
        Some(entry) => entry.iter().any(|part| !part.is_null()),
        None => true,
    }
}
