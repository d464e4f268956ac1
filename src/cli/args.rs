//! The argument groups several commands share (the runtime and its sessions, request limits, reward models) and
//! the configs they become.

use std::path::PathBuf;

use clap::Args;

use crate::http::ScoreLimits;
use crate::pipeline::RequestLimits;
use crate::reward::SelectionLimits;
use crate::runtime::{Device, OptimizationLevel, ResidentLoop, SessionSettings};
use crate::serving::graphs::GraphMode;
use crate::serving::RewardSettings;

/// Where the model and ONNX Runtime come from, and how sessions run.
#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// A diffusers/Optimum ONNX export folder (model_index.json, unet/model.onnx, ...).
    #[arg(long, env = "T2I_MODEL", default_value = "models/shapes-sd")]
    pub model: PathBuf,
    /// ONNX Runtime shared library (libonnxruntime.so.1.31.1 from the onnxruntime wheel). Default: $ORT_DYLIB_PATH.
    #[arg(long = "ort-dylib", env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,
    /// Execution device: cpu, cuda, cuda:N (fails if CUDA cannot be used) or auto (CUDA, else CPU with a warning).
    #[arg(long, env = "T2I_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// Threads inside one ONNX operator; 0 lets ONNX Runtime use one per core.
    #[arg(long, env = "T2I_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,
    /// Threads across independent ONNX operators.
    #[arg(long, env = "T2I_INTER_THREADS", default_value_t = 1)]
    pub inter_threads: usize,
    /// One ONNX Runtime thread pool shared by all sessions (true), or one pool per session (false).
    #[arg(long, env = "T2I_SHARED_THREAD_POOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub shared_thread_pool: bool,
    /// ONNX Runtime graph optimisation level.
    #[arg(long, env = "T2I_GRAPH_OPTIMIZATION", value_enum, default_value_t = OptimizationLevel::All)]
    pub graph_optimization: OptimizationLevel,
    /// Let ONNX Runtime plan each run's memory from the last run with the same input shapes.
    #[arg(long, env = "T2I_MEMORY_PATTERN", default_value_t = true, action = clap::ArgAction::Set)]
    pub memory_pattern: bool,
    /// Share pre-packed weight buffers between sessions of the same model (the copies --workers loads).
    #[arg(long, env = "T2I_SHARE_PREPACKED_WEIGHTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub share_prepacked_weights: bool,
    /// Let the shared thread pool spin between operators (faster under load; burns CPU briefly when idle).
    #[arg(long, env = "T2I_SPIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub spin: bool,
    /// Where the denoising loop keeps latents, text embeddings and the schedulers' history between UNet calls:
    /// `on` keeps them on the execution device (only per-step scalars and noise go up, only the decoded image
    /// comes back), `off` on the host, `auto` on the device for CUDA and on the host for the CPU. Requests whose
    /// scheduler clamps (`clip_sample`) or that ask for `guidance_rescale` run on the host either way.
    #[arg(long, env = "T2I_RESIDENT_LOOP", value_enum, default_value_t = ResidentLoop::Auto)]
    pub resident_loop: ResidentLoop,
    /// Graphs fused by ONNX Runtime's transformer optimiser (`<model>/optimized/`, docs/serving.md): `cached`
    /// loads them where a folder has them and they match its graphs; `on` also makes them at load (with
    /// `serve`'s --trainer-python), checked against the originals; `off` loads the export's own.
    #[arg(long, env = "T2I_OPTIMIZE_GRAPHS", value_enum, default_value_t = GraphMode::Cached)]
    pub optimize_graphs: GraphMode,
}

impl RuntimeArgs {
    pub(super) fn sessions(&self) -> SessionSettings {
        SessionSettings {
            intra_threads: self.intra_threads,
            inter_threads: self.inter_threads,
            optimization_level: self.graph_optimization,
            shared_thread_pool: self.shared_thread_pool,
            memory_pattern: self.memory_pattern,
            share_prepacked_weights: self.share_prepacked_weights,
            spin: self.spin,
            resident_loop: self.resident_loop,
        }
    }
}

/// Request limits and defaults.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Most images one request may ask for (`n`).
    #[arg(long, env = "T2I_MAX_IMAGES", default_value_t = 8)]
    pub max_images: u32,
    /// Most denoising steps one request may ask for.
    #[arg(long, env = "T2I_MAX_STEPS", default_value_t = 150)]
    pub max_steps: u32,
    /// Largest width or height in pixels (never below the model's native size).
    #[arg(long, env = "T2I_MAX_IMAGE_SIZE", default_value_t = 1024)]
    pub max_image_size: u32,
    /// Longest prompt or negative prompt, in bytes (longer token lists are cut to 77 with a warning).
    #[arg(long, env = "T2I_MAX_PROMPT_BYTES", default_value_t = 4096)]
    pub max_prompt_bytes: usize,
    /// Denoising steps when a request names none. Default: the model's t2i-align.json, else 25.
    #[arg(long, env = "T2I_DEFAULT_STEPS")]
    pub default_steps: Option<u32>,
    /// Guidance scale when a request names none. Default: the model's t2i-align.json, else 7.5.
    #[arg(long, env = "T2I_DEFAULT_GUIDANCE_SCALE")]
    pub default_guidance_scale: Option<f64>,
    /// Most work one generation may ask for, in pixel-steps: images generated (n × best_of, or max_candidates)
    /// × steps × width × height. Holds for `/generate`, `generate` and each prompt a fine-tune job samples.
    #[arg(long, env = "T2I_MAX_WORK", default_value_t = crate::pipeline::request::DEFAULT_MAX_WORK)]
    pub max_work: u64,
}

impl LimitArgs {
    pub(super) fn limits(&self) -> RequestLimits {
        RequestLimits {
            max_images: self.max_images,
            max_steps: self.max_steps,
            max_image_size: self.max_image_size,
            max_prompt_bytes: self.max_prompt_bytes,
            default_steps: self.default_steps,
            default_guidance_scale: self.default_guidance_scale,
            max_work: self.max_work,
        }
    }
}

/// Reward models: which to load, and how they batch and limit scoring and rejection sampling.
#[derive(Debug, Args)]
pub struct RewardArgs {
    /// Reward model folder with a manifest.json; repeat (or separate with commas) to load several. The first is
    /// the default for /score, /rerank and /generate.
    #[arg(
        long = "reward-model",
        env = "T2I_REWARD_MODEL",
        value_delimiter = ',',
        default_value = "models/shapes-reward"
    )]
    pub reward_models: Vec<PathBuf>,
    /// Load no reward model: images come back unscored, and /score, /rerank and best_of answer 422.
    #[arg(long, env = "T2I_NO_REWARD_MODEL")]
    pub no_reward_model: bool,
    /// Most images in one reward-model ONNX call; requests waiting together share calls up to this.
    #[arg(long, env = "T2I_REWARD_BATCH_SIZE", default_value_t = 64)]
    pub reward_batch_size: usize,
    /// Most candidates denoised in one batch for best_of and min_reward (each is two UNet rows with guidance).
    #[arg(long, env = "T2I_CANDIDATE_BATCH_SIZE", default_value_t = 16)]
    pub candidate_batch_size: usize,
    /// Largest `best_of` a request may ask for.
    #[arg(long, env = "T2I_MAX_BEST_OF", default_value_t = 16)]
    pub max_best_of: u32,
    /// Most candidates one request may generate (`best_of` × `n`, or `max_candidates`).
    #[arg(long, env = "T2I_MAX_CANDIDATES", default_value_t = 128)]
    pub max_candidates: u32,
    /// Most images in one /score or /rerank request.
    #[arg(long, env = "T2I_MAX_SCORE_IMAGES", default_value_t = 64)]
    pub max_score_images: usize,
    /// Most pixels (width × height) an image to score may announce in its header; checked before decoding.
    #[arg(long, env = "T2I_MAX_IMAGE_PIXELS", default_value_t = 4096 * 4096)]
    pub max_image_pixels: u64,
}

impl RewardArgs {
    pub(super) fn config(&self) -> RewardConfig {
        RewardConfig {
            models: if self.no_reward_model {
                Vec::new()
            } else {
                self.reward_models.clone()
            },
            max_batch: self.reward_batch_size.max(1),
            batch_images: self.candidate_batch_size.max(1),
            selection: SelectionLimits {
                max_best_of: self.max_best_of,
                max_candidates: self.max_candidates,
            },
            score: ScoreLimits {
                max_images: self.max_score_images,
                max_image_pixels: self.max_image_pixels,
            },
        }
    }
}

/// Reward models to load and how they batch.
#[derive(Debug, Clone)]
pub struct RewardConfig {
    /// Folders with a manifest.json; the first is the default. Empty: no scoring.
    pub models: Vec<std::path::PathBuf>,
    /// Most images in one reward-model ONNX call.
    pub max_batch: usize,
    /// Most candidates in one denoising batch for best_of and min_reward.
    pub batch_images: usize,
    pub selection: SelectionLimits,
    pub score: ScoreLimits,
}

impl RewardConfig {
    /// The command line's one-shot runs (`generate`, `score`): a short queue and no warm-up.
    pub fn cli_settings(&self) -> RewardSettings {
        RewardSettings {
            max_batch: self.max_batch,
            capacity: 4,
            warmup: false,
        }
    }
}
