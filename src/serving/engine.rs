//! Building one version's engine: `workers` pipelines over the version's ONNX sessions, each warmed up at the
//! configured sizes and image counts before the engine takes requests.

use std::sync::Arc;
use std::time::Instant;

use crate::batching::{BackgroundRows, BatchSettings, Engine};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::pipeline::request::InitImage;
use crate::pipeline::{GenerateParams, ModelFolder, ModelLimits, Pipeline};
use crate::runtime::{ExecutionProvider, Runtime};

/// How each loaded version's engine is built.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub workers: usize,
    pub queue_capacity: usize,
    pub batch_images: usize,
    /// Most UNet rows in one call of the continuous batcher.
    pub max_batch_rows: usize,
    pub warmup: bool,
    /// Image counts the warm-up generates at each warm-up size (each image is two UNet rows with guidance).
    pub warmup_images: Vec<usize>,
    /// Image sizes in pixels the warm-up covers; empty: the model's default size.
    pub warmup_sizes: Vec<usize>,
    /// Most versions kept loaded at once, the active one included.
    pub max_loaded: usize,
    /// Rows of a fine-tune job's samples a UNet call may carry beside users' requests; `None`: 0 on the CPU
    /// (its calls are compute-bound: every row lengthens the users' wait), `max_batch_rows` on CUDA.
    pub job_spare_rows: Option<usize>,
    /// Rows of a UNet call that carries only a job's samples; `None`: `max_batch_rows`.
    pub job_call_rows: Option<usize>,
}

impl EngineSettings {
    /// The background limits on `provider`, with the defaults filled in.
    pub fn background_rows(&self, provider: ExecutionProvider) -> BackgroundRows {
        let auto_spare = match provider {
            ExecutionProvider::Cpu => 0,
            ExecutionProvider::Cuda(_) => self.max_batch_rows,
        };
        BackgroundRows {
            beside_online: self.job_spare_rows.unwrap_or(auto_spare),
            alone: self.job_call_rows.unwrap_or(self.max_batch_rows).max(1),
        }
    }
}

/// A version with its engine.
pub struct LoadedModel {
    pub version: String,
    pub engine: Engine,
    pub limits: ModelLimits,
    pub folder: Arc<ModelFolder>,
}

/// A short generation at the model's default size that touches every session with guidance on (a refiner's
/// starting image is added per size by `warm_up`).
pub fn warmup_params(pipeline: &Pipeline) -> GenerateParams {
    let limits = pipeline.limits();
    GenerateParams {
        prompt: "warm-up".into(),
        negative_prompt: String::new(),
        num_images: 1,
        steps: 2,
        guidance_scale: 7.5,
        scheduler: limits.default_scheduler,
        seed: 0,
        width: limits.default_width,
        height: limits.default_height,
        eta: 0.0,
        guidance_rescale: 0.0,
        aesthetic_score: Default::default(),
        init: None,
    }
}

/// One short generation for each warm-up size and image count, so that ONNX Runtime has planned those shapes
/// before the first request. A size the model cannot make is a configuration error.
fn warm_up(pipeline: &mut Pipeline, worker: usize, settings: &EngineSettings) -> Result<()> {
    let base = warmup_params(pipeline);
    let limits = pipeline.limits();
    // (height, width): the model's default size, or each `--warmup-sizes` square.
    let sizes: Vec<(usize, usize)> = if settings.warmup_sizes.is_empty() {
        vec![(limits.default_height, limits.default_width)]
    } else {
        settings.warmup_sizes.iter().map(|&size| (size, size)).collect()
    };
    let images = if settings.warmup_images.is_empty() {
        vec![1]
    } else {
        settings.warmup_images.clone()
    };
    for &(height, width) in &sizes {
        for size in [height, width] {
            if size == 0 || size % limits.size_multiple != 0 {
                return Err(Error::Config(format!(
                    "--warmup-sizes: {size} is not a multiple of this model's {} pixels",
                    limits.size_multiple
                )));
            }
        }
        for &count in &images {
            let started = Instant::now();
            // A refiner refines an image: a flat gray one, half noised away, touches its VAE encoder too.
            let init = limits.requires_init_image.then(|| {
                let gray = image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb([128, 128, 128]));
                Arc::new(InitImage::new(&gray, width, height, 0.5))
            });
            let params = GenerateParams {
                num_images: count.max(1),
                width,
                height,
                init,
                ..base.clone()
            };
            if let Err(err) = pipeline.generate(&params, &mut crate::pipeline::output::NoProgress) {
                // `--resident-loop auto` chose the device-resident loop: a worker whose warm-up fails on it
                // serves on the host loop, and says so; with `on`, or on the host loop, the failure stands.
                if !pipeline.resident_loop_by_auto() {
                    return Err(err);
                }
                tracing::warn!(
                    worker,
                    error = %err,
                    "the warm-up failed on the device-resident loop; this worker keeps the denoising loop's \
                     tensors on the host (as --resident-loop off)"
                );
                pipeline.leave_resident_loop();
                pipeline.generate(&params, &mut crate::pipeline::output::NoProgress)?;
            }
            tracing::info!(
                worker,
                height,
                width,
                images = count,
                ms = started.elapsed().as_millis() as u64,
                "warmed up"
            );
        }
    }
    Ok(())
}

/// Builds the engine of one version: `settings.workers` pipelines, each warmed up when asked.
pub fn build_engine(
    runtime: &mut Runtime,
    version: String,
    folder: Arc<ModelFolder>,
    settings: &EngineSettings,
    metrics: Arc<Metrics>,
) -> Result<LoadedModel> {
    let mut pipelines = Vec::with_capacity(settings.workers.max(1));
    for index in 0..settings.workers.max(1) {
        let mut pipeline = Pipeline::load(runtime, folder.clone())?;
        if index == 0 {
            for line in pipeline.describe_contract() {
                tracing::debug!("{line}");
            }
            let limits = pipeline.limits();
            tracing::info!(
                version = %version,
                size_multiple = limits.size_multiple,
                default_height = limits.default_height,
                default_width = limits.default_width,
                "sizes: widths and heights are multiples of size_multiple pixels"
            );
            if pipeline.per_row_timesteps() {
                tracing::info!(
                    version = %version,
                    max_batch_rows = settings.max_batch_rows,
                    "continuous batching: the UNet takes a timestep per row, so requests at any step share calls"
                );
            } else {
                tracing::warn!(
                    version = %version,
                    max_batch_rows = settings.max_batch_rows,
                    "continuous batching: the UNet takes one scalar timestep per call, so only requests at the \
                     same timestep share a call; export it with a [batch] timestep to batch requests at any step"
                );
            }
        }
        if settings.warmup {
            warm_up(&mut pipeline, index, settings)?;
        }
        pipelines.push(pipeline);
    }
    let limits = pipelines[0].limits();
    let background = settings.background_rows(pipelines[0].provider());
    let engine = Engine::start(
        pipelines,
        settings.queue_capacity,
        BatchSettings {
            max_rows: settings.max_batch_rows,
            batch_images: settings.batch_images,
            background,
        },
        metrics,
    )?;
    Ok(LoadedModel {
        version,
        engine,
        limits,
        folder,
    })
}
