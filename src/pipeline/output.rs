//! What generation returns: decoded images, PNG-encoded images, how the reward model chose among candidates,
//! how long each stage took, and the progress callback the denoising loop reports to.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::pipeline::image::encode_png;

/// Told about progress, and asked whether to stop, between denoising steps.
pub trait Progress {
    fn on_step(&mut self, _done: usize, _total: usize) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// A `Progress` that reports nothing and never cancels.
pub struct NoProgress;
impl Progress for NoProgress {}

/// How long each stage took. `ort_run` sums the time inside ONNX Runtime `run` calls of all stages.
#[derive(Debug, Clone, Default)]
pub struct StageTimings {
    pub text_encode: Duration,
    pub denoise: Duration,
    pub unet_steps: Vec<Duration>,
    pub decode: Duration,
    pub png_encode: Duration,
    /// Reward scoring of the candidates (zero when no reward model scored them).
    pub score: Duration,
    pub ort_run: Duration,
}

impl StageTimings {
    /// Adds another call's stages to these (a request that ran the pipeline several times).
    pub fn add(&mut self, other: &StageTimings) {
        self.text_encode += other.text_encode;
        self.denoise += other.denoise;
        self.unet_steps.extend_from_slice(&other.unet_steps);
        self.decode += other.decode;
        self.png_encode += other.png_encode;
        self.score += other.score;
        self.ort_run += other.ort_run;
    }
}

/// A decoded image before PNG encoding, as an RGB buffer the reward preprocessor reads directly.
#[derive(Debug, Clone)]
pub struct SampledImage {
    pub index: usize,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub rgb: image::RgbImage,
}

/// What the denoising loop and the VAE produced, before PNG encoding.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub images: Vec<SampledImage>,
    pub timings: StageTimings,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub index: usize,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub png: Vec<u8>,
    /// The reward model's score, when one scored this image.
    pub reward: Option<f32>,
}

impl GeneratedImage {
    /// PNG-encodes a sampled image as output number `index`.
    pub fn encode(image: &SampledImage, index: usize, reward: Option<f32>) -> Result<Self> {
        Ok(GeneratedImage {
            index,
            seed: image.seed,
            width: image.width,
            height: image.height,
            png: encode_png(image.rgb.as_raw(), image.height, image.width)?,
            reward,
        })
    }
}

/// How a reward model chose the returned images among the candidates (`reward::best_of`).
#[derive(Debug, Clone, PartialEq)]
pub struct SelectionReport {
    pub reward_model: String,
    /// Candidates generated and scored.
    pub candidates: usize,
    /// Candidates at or above `min_reward` (with a threshold), else the number returned.
    pub accepted: usize,
    /// Every candidate's score, in candidate (seed) order.
    pub candidate_scores: Vec<f32>,
    /// Whether the reward model chose among candidates (`best_of` above 1, or `min_reward`); false when it only
    /// scored one candidate per image.
    pub rejection: bool,
}

#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub images: Vec<GeneratedImage>,
    pub timings: StageTimings,
    pub warnings: Vec<String>,
    /// Set when a reward model scored the candidates.
    pub selection: Option<SelectionReport>,
}

impl Sampled {
    /// PNG-encodes every image, in order, without scores.
    pub fn encode_all(self) -> Result<GenerateOutput> {
        let started = Instant::now();
        let images = self
            .images
            .iter()
            .map(|image| GeneratedImage::encode(image, image.index, None))
            .collect::<Result<Vec<_>>>()?;
        let mut timings = self.timings;
        timings.png_encode += started.elapsed();
        Ok(GenerateOutput {
            images,
            timings,
            warnings: self.warnings,
            selection: None,
        })
    }
}
