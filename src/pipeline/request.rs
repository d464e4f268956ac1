//! Validating a generation request against the model and the server's limits. Every message quotes the limit and
//! the value given, and names the field, so a caller can fix the request without reading our code.

use std::sync::Arc;

use image::RgbImage;

use crate::error::{Error, Result};
use crate::pipeline::resample::{resize, ResizeFilter};
use crate::pipeline::scheduler::SchedulerKind;

/// What the caller asked for, before validation. Absent fields take the server's defaults.
#[derive(Debug, Clone, Default)]
pub struct GenerateInput {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub n: Option<i64>,
    pub steps: Option<i64>,
    pub guidance_scale: Option<f64>,
    pub scheduler: Option<String>,
    pub seed: Option<u64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub eta: Option<f64>,
    pub guidance_rescale: Option<f64>,
    /// img2img: the decoded image to start from, and how much of it to noise away.
    pub init_image: Option<RgbImage>,
    pub strength: Option<f64>,
    /// SDXL refiner's aesthetic conditioning: the score the image should have, and the one its negative rows
    /// get (diffusers' `aesthetic_score` and `negative_aesthetic_score`).
    pub aesthetic_score: Option<f64>,
    pub negative_aesthetic_score: Option<f64>,
}

/// The server's limits and defaults for requests (configured on the command line). A default set here beats the
/// model's own (`ModelLimits`).
#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub max_images: u32,
    pub max_steps: u32,
    pub max_image_size: u32,
    pub max_prompt_bytes: usize,
    pub default_steps: Option<u32>,
    pub default_guidance_scale: Option<f64>,
    /// Most work one request may ask for, in pixel-steps: candidates × steps × width × height.
    pub max_work: u64,
}

/// The default `--max-work`: 2^30 pixel-steps, e.g. 128 candidates × 150 steps at 64×64, or 8 images × 50
/// steps at 512×512; 8 images × 150 steps at 1024×1024 is over it.
pub const DEFAULT_MAX_WORK: u64 = 1 << 30;

/// A request's whole work in pixel-steps: `candidates` generated images × steps × width × height.
pub fn work(params: &GenerateParams, candidates: usize) -> u64 {
    (candidates as u64)
        .saturating_mul(params.steps as u64)
        .saturating_mul(params.width as u64)
        .saturating_mul(params.height as u64)
}

/// Checks a request's whole work (`candidates` generated images of `params`' size and steps) against the limit.
pub fn check_work(params: &GenerateParams, candidates: usize, limits: &RequestLimits) -> Result<()> {
    let work = work(params, candidates);
    if work > limits.max_work {
        return Err(Error::validation(
            "steps",
            format!(
                "the request asks for {candidates} images × {} steps × {}×{} pixels = {work} pixel-steps; the limit \
                 is {} (--max-work): ask for fewer images, candidates or steps, or a smaller size",
                params.steps, params.width, params.height, limits.max_work
            ),
        ));
    }
    Ok(())
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_images: 8,
            max_steps: 150,
            max_image_size: 1024,
            max_prompt_bytes: 4096,
            default_steps: None,
            default_guidance_scale: None,
            max_work: DEFAULT_MAX_WORK,
        }
    }
}

/// What the model itself allows and recommends: facts from its config files and its UNet.
#[derive(Debug, Clone, Copy)]
pub struct ModelLimits {
    /// Widths and heights must be multiples of this many pixels.
    pub size_multiple: usize,
    /// The size requests get when they name none: the model's own (see `ModelFolder::default_height`).
    pub default_height: usize,
    pub default_width: usize,
    pub default_scheduler: SchedulerKind,
    pub default_steps: u32,
    pub default_guidance_scale: f64,
    /// Whether the export has a VAE encoder, which img2img needs.
    pub img2img: bool,
    /// Whether the model only refines images (SDXL's refiner): every request must send `init_image`.
    pub requires_init_image: bool,
}

impl ModelLimits {
    /// The largest width or height a request may ask for: `--max-image-size`, or the model's own default size
    /// where that is larger, rounded down to the size multiple.
    pub fn max_size(&self, limits: &RequestLimits) -> usize {
        let multiple = self.size_multiple.max(1);
        let max = (limits.max_image_size as usize)
            .max(self.default_height)
            .max(self.default_width);
        max - max % multiple
    }
}

/// The largest guidance scale we accept; far beyond any useful value, it only catches typos.
pub const MAX_GUIDANCE_SCALE: f64 = 100.0;

/// A request that passed validation: every field is set and within limits.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub num_images: usize,
    pub steps: usize,
    pub guidance_scale: f32,
    pub scheduler: SchedulerKind,
    /// Image `i` uses seed `seed + i` (wrapping); see `pipeline::noise`.
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    /// DDIM's eta; ignored by other schedulers.
    pub eta: f32,
    /// diffusers' `guidance_rescale` in [0, 1]: how much of the guided prediction is rescaled to the text
    /// prediction's standard deviation. 0 is off; used only with guidance.
    pub guidance_rescale: f64,
    /// img2img's starting image and strength; `None` for text-to-image.
    pub init: Option<Arc<InitImage>>,
    /// The aesthetic scores an SDXL refiner is conditioned on, where the request gives either (the other
    /// takes its default); `None` runs a refiner at the defaults. Other models ignore them, with a warning.
    pub aesthetic_score: Option<AestheticScores>,
}

/// SDXL's refiner takes an aesthetic score in its time ids (it was trained on LAION aesthetic scores): the
/// prompt's rows get `score`, classifier-free guidance's negative rows `negative`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AestheticScores {
    pub score: f32,
    pub negative: f32,
}

/// diffusers' defaults for `StableDiffusionXLImg2ImgPipeline`.
impl Default for AestheticScores {
    fn default() -> Self {
        AestheticScores {
            score: 6.0,
            negative: 2.5,
        }
    }
}

/// The scale aesthetic scores are on (LAION's aesthetic predictor rates 1 to 10); we accept [0, 10].
pub const MAX_AESTHETIC_SCORE: f64 = 10.0;

/// An img2img request's starting image, at the request's size, as diffusers' `VaeImageProcessor` prepares it.
#[derive(Debug, PartialEq)]
pub struct InitImage {
    /// `[3, height, width]`, row-major, in [-1, 1].
    pub pixels: Vec<f32>,
    /// How much of the schedule runs: the first `steps − floor(steps · strength)` steps are skipped, and the
    /// image is noised to the level of the first step that runs.
    pub strength: f32,
}

/// diffusers' img2img default.
pub const DEFAULT_STRENGTH: f64 = 0.8;

impl InitImage {
    /// `image` resized to `width` × `height` (Lanczos, as diffusers' image processor resizes with Pillow; not at
    /// all when it has that size), scaled to [-1, 1] and laid out channel first.
    pub fn new(image: &RgbImage, width: usize, height: usize, strength: f32) -> Self {
        let resized;
        let image = if (image.width() as usize, image.height() as usize) == (width, height) {
            image
        } else {
            resized = resize(image, width, height, ResizeFilter::Lanczos);
            &resized
        };
        let plane = width * height;
        let mut pixels = vec![0.0f32; 3 * plane];
        for (index, pixel) in image.pixels().enumerate() {
            for channel in 0..3 {
                pixels[channel * plane + index] = f32::from(pixel[channel]) / 255.0 * 2.0 - 1.0;
            }
        }
        InitImage { pixels, strength }
    }

    /// The step img2img starts at, of `steps`, as diffusers' `get_timesteps`: `steps − floor(steps · strength)`;
    /// at least one step runs, where diffusers would refuse a strength that runs none.
    pub fn first_step(&self, steps: usize) -> usize {
        let run = ((steps as f64 * f64::from(self.strength)) as usize).clamp(1, steps.max(1));
        steps.saturating_sub(run)
    }
}

impl GenerateParams {
    pub fn latent_size(&self, vae_scale_factor: usize) -> (usize, usize) {
        (self.height / vae_scale_factor, self.width / vae_scale_factor)
    }
}

pub fn validate(input: GenerateInput, model: &ModelLimits, limits: &RequestLimits) -> Result<GenerateParams> {
    if input.prompt.trim().is_empty() {
        return Err(Error::validation("prompt", "`prompt` must not be empty"));
    }
    check_prompt_bytes("prompt", &input.prompt, limits)?;
    let negative_prompt = input.negative_prompt.unwrap_or_default();
    check_prompt_bytes("negative_prompt", &negative_prompt, limits)?;

    let n = input.n.unwrap_or(1);
    check_range("n", n, 1, limits.max_images.into())?;
    let steps = input
        .steps
        .unwrap_or(limits.default_steps.unwrap_or(model.default_steps).into());
    check_range("steps", steps, 1, limits.max_steps.into())?;

    let guidance_scale = input
        .guidance_scale
        .unwrap_or(limits.default_guidance_scale.unwrap_or(model.default_guidance_scale));
    if !guidance_scale.is_finite() {
        return Err(Error::validation(
            "guidance_scale",
            format!("`guidance_scale` must be a finite number. Given: {guidance_scale}"),
        ));
    }
    if !(0.0..=MAX_GUIDANCE_SCALE).contains(&guidance_scale) {
        return Err(Error::validation(
            "guidance_scale",
            format!("`guidance_scale` must be between 0 and {MAX_GUIDANCE_SCALE}. Given: {guidance_scale}"),
        ));
    }
    let eta = check_unit_interval("eta", input.eta.unwrap_or(0.0))?;
    let guidance_rescale = check_unit_interval("guidance_rescale", input.guidance_rescale.unwrap_or(0.0))?;

    let scheduler = match input.scheduler.as_deref() {
        None => model.default_scheduler,
        Some(name) => SchedulerKind::from_name(name).map_err(|err| Error::validation("scheduler", err.to_string()))?,
    };

    let (default_width, default_height) = match &input.init_image {
        Some(image) => img2img_size(image, model, limits),
        None => (model.default_width, model.default_height),
    };
    let width = check_size("width", input.width, default_width, model, limits)?;
    let height = check_size("height", input.height, default_height, model, limits)?;
    if model.requires_init_image && input.init_image.is_none() {
        return Err(Error::validation(
            "init_image",
            "this model refines images (its pipeline is StableDiffusionXLImg2ImgPipeline, as SDXL's refiner): send \
             `init_image`, the image to refine",
        ));
    }
    let defaults = AestheticScores::default();
    let aesthetic_score = match (input.aesthetic_score, input.negative_aesthetic_score) {
        (None, None) => None,
        (score, negative) => Some(AestheticScores {
            score: check_aesthetic_score("aesthetic_score", score, defaults.score)?,
            negative: check_aesthetic_score("negative_aesthetic_score", negative, defaults.negative)?,
        }),
    };
    let init = match (input.init_image, input.strength) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(Error::validation(
                "strength",
                "`strength` applies to img2img only: send `init_image` with it",
            ))
        }
        (Some(image), strength) => {
            if !model.img2img {
                return Err(Error::validation(
                    "init_image",
                    "this model's export has no vae_encoder/model.onnx, which img2img needs to encode the image",
                ));
            }
            let strength = strength.unwrap_or(DEFAULT_STRENGTH);
            if !(strength > 0.0 && strength <= 1.0) {
                return Err(Error::validation(
                    "strength",
                    format!("`strength` must be above 0 and at most 1. Given: {strength}"),
                ));
            }
            Some(Arc::new(InitImage::new(&image, width, height, strength as f32)))
        }
    };

    Ok(GenerateParams {
        prompt: input.prompt,
        negative_prompt,
        num_images: n as usize,
        steps: steps as usize,
        guidance_scale: guidance_scale as f32,
        scheduler,
        seed: input.seed.unwrap_or_else(random_seed),
        width,
        height,
        eta: eta as f32,
        guidance_rescale,
        init,
        aesthetic_score,
    })
}

/// An aesthetic score, if given, in [0, 10]; else the default.
fn check_aesthetic_score(field: &str, value: Option<f64>, default: f32) -> Result<f32> {
    let Some(value) = value else {
        return Ok(default);
    };
    if !(0.0..=MAX_AESTHETIC_SCORE).contains(&value) {
        return Err(Error::validation(
            field,
            format!("`{field}` must be between 0 and {MAX_AESTHETIC_SCORE}. Given: {value}"),
        ));
    }
    Ok(value as f32)
}

/// The size img2img renders at when the request names none: the starting image's, rounded down to the sizes the
/// model renders (as diffusers rounds it down to the VAE factor), at least one multiple, and scaled down
/// (keeping its aspect) to fit the largest size allowed.
fn img2img_size(image: &RgbImage, model: &ModelLimits, limits: &RequestLimits) -> (usize, usize) {
    let multiple = model.size_multiple.max(1);
    let (width, height) = (image.width() as f64, image.height() as f64);
    let scale = (model.max_size(limits) as f64 / width.max(height)).min(1.0);
    let fit = |side: f64| ((side * scale) as usize / multiple * multiple).max(multiple);
    (fit(width), fit(height))
}

/// Refuses a weight outside [0, 1] (NaN included), naming `field`.
fn check_unit_interval(field: &str, value: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&value) {
        return Err(Error::validation(
            field,
            format!("`{field}` must be between 0 and 1. Given: {value}"),
        ));
    }
    Ok(value)
}

/// Refuses a prompt longer than `--max-prompt-bytes`, naming `field`.
pub fn check_prompt_bytes(field: &str, text: &str, limits: &RequestLimits) -> Result<()> {
    if text.len() > limits.max_prompt_bytes {
        return Err(Error::validation(
            field,
            format!(
                "`{field}` must be at most {} bytes. Given: {} bytes",
                limits.max_prompt_bytes,
                text.len()
            ),
        ));
    }
    Ok(())
}

fn check_range(field: &str, value: i64, min: i64, max: i64) -> Result<()> {
    if value < min || value > max {
        return Err(Error::validation(
            field,
            format!("`{field}` must be between {min} and {max}. Given: {value}"),
        ));
    }
    Ok(())
}

fn check_size(
    field: &str,
    value: Option<i64>,
    default: usize,
    model: &ModelLimits,
    limits: &RequestLimits,
) -> Result<usize> {
    let multiple = model.size_multiple.max(1);
    let max = model.max_size(limits);
    let size = value.unwrap_or(default as i64);
    if size < multiple as i64 || size > max as i64 {
        return Err(Error::validation(
            field,
            format!("`{field}` must be between {multiple} and {max} pixels. Given: {size}"),
        ));
    }
    let size = size as usize;
    if !size.is_multiple_of(multiple) {
        return Err(Error::validation(
            field,
            format!("`{field}` must be a multiple of {multiple} pixels, the sizes this model's UNet can render. Given: {size}"),
        ));
    }
    Ok(size)
}

/// A seed below 2^53, so that JavaScript clients read it back exactly.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() >> 11
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelLimits {
        ModelLimits {
            size_multiple: 16,
            default_height: 64,
            default_width: 64,
            default_scheduler: SchedulerKind::Pndm,
            default_steps: 20,
            default_guidance_scale: 3.0,
            img2img: true,
            requires_init_image: false,
        }
    }

    fn input() -> GenerateInput {
        GenerateInput {
            prompt: "a red circle".into(),
            ..GenerateInput::default()
        }
    }

    fn error_of(input: GenerateInput) -> (String, String) {
        match validate(input, &model(), &RequestLimits::default()) {
            Err(Error::Validation { message, param }) => (param.unwrap_or_default(), message),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_every_field() {
        let params = validate(input(), &model(), &RequestLimits::default()).unwrap();
        assert_eq!(params.num_images, 1);
        // The model's recommended defaults, as no server flag overrides them.
        assert_eq!(params.steps, 20);
        assert_eq!(params.guidance_scale, 3.0);
        assert_eq!(params.scheduler, SchedulerKind::Pndm);
        assert_eq!((params.width, params.height), (64, 64));
        assert!(params.seed < 1 << 53);
    }

    #[test]
    fn server_defaults_beat_the_model_and_requests_beat_both() {
        let limits = RequestLimits {
            default_steps: Some(30),
            default_guidance_scale: Some(5.0),
            ..RequestLimits::default()
        };
        let params = validate(input(), &model(), &limits).unwrap();
        assert_eq!((params.steps, params.guidance_scale), (30, 5.0));
        let asked = GenerateInput {
            steps: Some(7),
            guidance_scale: Some(1.5),
            ..input()
        };
        let params = validate(asked, &model(), &limits).unwrap();
        assert_eq!((params.steps, params.guidance_scale), (7, 1.5));
    }

    #[test]
    fn empty_prompt_is_rejected() {
        let (param, message) = error_of(GenerateInput {
            prompt: "  ".into(),
            ..input()
        });
        assert_eq!(param, "prompt");
        assert!(message.contains("must not be empty"));
    }

    #[test]
    fn counts_out_of_bounds_quote_the_limit() {
        let (param, message) = error_of(GenerateInput { n: Some(40), ..input() });
        assert_eq!(param, "n");
        assert_eq!(message, "`n` must be between 1 and 8. Given: 40");
        let (param, message) = error_of(GenerateInput {
            steps: Some(0),
            ..input()
        });
        assert_eq!(param, "steps");
        assert!(message.contains("between 1 and 150"), "{message}");
    }

    #[test]
    fn sizes_must_fit_the_model() {
        let (param, message) = error_of(GenerateInput {
            width: Some(72),
            ..input()
        });
        assert_eq!(param, "width");
        assert!(message.contains("multiple of 16"), "{message}");
        let (param, message) = error_of(GenerateInput {
            height: Some(4096),
            ..input()
        });
        assert_eq!(param, "height");
        assert!(message.contains("between 16 and 1024"), "{message}");
    }

    #[test]
    fn guidance_must_be_finite() {
        for bad in [f64::NAN, f64::INFINITY, -1.0, 1000.0] {
            let (param, _) = error_of(GenerateInput {
                guidance_scale: Some(bad),
                ..input()
            });
            assert_eq!(param, "guidance_scale");
        }
    }

    #[test]
    fn weights_must_be_between_0_and_1() {
        let params = validate(input(), &model(), &RequestLimits::default()).unwrap();
        assert_eq!((params.eta, params.guidance_rescale), (0.0, 0.0));
        let asked = GenerateInput {
            eta: Some(1.0),
            guidance_rescale: Some(0.7),
            ..input()
        };
        let params = validate(asked, &model(), &RequestLimits::default()).unwrap();
        assert_eq!((params.eta, params.guidance_rescale), (1.0, 0.7));
        for bad in [f64::NAN, f64::INFINITY, -0.1, 1.5] {
            let (param, message) = error_of(GenerateInput {
                guidance_rescale: Some(bad),
                ..input()
            });
            assert_eq!(param, "guidance_rescale");
            assert_eq!(
                message,
                format!("`guidance_rescale` must be between 0 and 1. Given: {bad}")
            );
            let (param, message) = error_of(GenerateInput {
                eta: Some(bad),
                ..input()
            });
            assert_eq!(param, "eta");
            assert_eq!(message, format!("`eta` must be between 0 and 1. Given: {bad}"));
        }
    }

    #[test]
    fn unknown_scheduler_lists_the_names() {
        let (param, message) = error_of(GenerateInput {
            scheduler: Some("lms".into()),
            ..input()
        });
        assert_eq!(param, "scheduler");
        assert!(message.contains("ddim"), "{message}");
    }

    #[test]
    fn overlong_prompt_bytes_are_rejected() {
        let (param, message) = error_of(GenerateInput {
            prompt: "a".repeat(5000),
            ..input()
        });
        assert_eq!(param, "prompt");
        assert!(message.contains("at most 4096 bytes"), "{message}");
    }
}
