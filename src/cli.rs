//! The command line. Every flag is also an environment variable, and its doc comment is its `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Error, Result};
use crate::http::HttpConfig;
use crate::pipeline::generate::Progress;
use crate::pipeline::request::validate;
use crate::pipeline::{GenerateInput, ModelFolder, Pipeline, RequestLimits};
use crate::runtime::{Device, OptimizationLevel, Runtime, SessionSettings};
use crate::server::ServeConfig;

#[derive(Debug, Parser)]
#[command(
    name = "t2i-align",
    version,
    about = "Serve text-to-image diffusion models through ONNX Runtime"
)]
pub struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "T2I_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (POST /generate, /health, /ready, /metrics, /openapi.json, /docs).
    Serve(ServeArgs),
    /// Generate images from a prompt and write PNG files.
    Generate(GenerateArgs),
    /// Print the OpenAPI spec (JSON) to stdout.
    Openapi,
}

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
}

impl RuntimeArgs {
    fn sessions(&self) -> SessionSettings {
        SessionSettings {
            intra_threads: self.intra_threads,
            inter_threads: self.inter_threads,
            optimization_level: self.graph_optimization,
            shared_thread_pool: self.shared_thread_pool,
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
}

impl LimitArgs {
    fn limits(&self) -> RequestLimits {
        RequestLimits {
            max_images: self.max_images,
            max_steps: self.max_steps,
            max_image_size: self.max_image_size,
            max_prompt_bytes: self.max_prompt_bytes,
            default_steps: self.default_steps,
            default_guidance_scale: self.default_guidance_scale,
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Address to listen on.
    #[arg(long, env = "T2I_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one and logs it).
    #[arg(long, env = "T2I_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Worker threads, each owning its own copy of the ONNX sessions (memory grows with each).
    #[arg(long, env = "T2I_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// HTTP threads (they only parse, validate and wait; ONNX work happens on the workers).
    #[arg(long, env = "T2I_HTTP_WORKERS", default_value_t = 2)]
    pub http_workers: usize,
    /// Generation requests that may wait for a worker; more are refused with 429 and Retry-After.
    #[arg(long, env = "T2I_QUEUE_CAPACITY", default_value_t = 32)]
    pub queue_capacity: usize,
    /// Largest request body in bytes.
    #[arg(long, env = "T2I_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Run a short generation on each worker before /ready answers 200.
    #[arg(long, env = "T2I_WARMUP", default_value_t = true, action = clap::ArgAction::Set)]
    pub warmup: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to draw.
    pub prompt: String,
    /// Output PNG path; with -n above 1, `-0`, `-1`, ... go before the extension.
    #[arg(short, long, default_value = "out.png")]
    pub output: PathBuf,
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Number of images.
    #[arg(short = 'n', long, default_value_t = 1)]
    pub n: i64,
    /// Denoising steps (default: --default-steps).
    #[arg(long)]
    pub steps: Option<i64>,
    /// Classifier-free guidance scale (default: --default-guidance-scale).
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    /// ddim, euler, euler_a, dpm++2m or pndm (default: the model's own).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Seed of the first image (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub width: Option<i64>,
    #[arg(long)]
    pub height: Option<i64>,
    /// DDIM eta in [0, 1].
    #[arg(long)]
    pub eta: Option<f64>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

impl ServeArgs {
    pub fn into_config(self) -> ServeConfig {
        ServeConfig {
            sessions: self.runtime.sessions(),
            limits: self.limits.limits(),
            model: self.runtime.model,
            ort_library: self.runtime.ort_dylib,
            device: self.runtime.device,
            workers: self.workers,
            queue_capacity: self.queue_capacity,
            warmup: self.warmup,
            http: HttpConfig {
                host: self.host,
                port: self.port,
                http_workers: self.http_workers,
                max_body_bytes: self.max_body_bytes,
            },
        }
    }
}

struct BarProgress(ProgressBar);

impl Progress for BarProgress {
    fn on_step(&mut self, done: usize, total: usize) {
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
    }
}

/// `t2i-align generate`: one generation on this thread, with a progress bar over the denoising steps.
pub fn run_generate(args: GenerateArgs) -> Result<Vec<PathBuf>> {
    let mut runtime = Runtime::init(
        args.runtime.ort_dylib.as_deref(),
        args.runtime.device,
        args.runtime.sessions(),
    )?;
    let model = std::sync::Arc::new(ModelFolder::open(&args.runtime.model)?);
    let mut pipeline = Pipeline::load(&mut runtime, model)?;
    let input = GenerateInput {
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        n: Some(args.n),
        steps: args.steps,
        guidance_scale: args.guidance_scale,
        scheduler: args.scheduler,
        seed: args.seed,
        width: args.width,
        height: args.height,
        eta: args.eta,
    };
    let params = validate(input, &pipeline.limits(), &args.limits.limits())?;
    let bar = ProgressBar::new(params.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} steps ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("denoising on {}", pipeline.provider()));
    let mut progress = BarProgress(bar);
    let output = pipeline.generate(&params, &mut progress)?;
    progress.0.finish();
    for warning in &output.warnings {
        tracing::warn!("{warning}");
    }
    let mut written = Vec::new();
    for image in &output.images {
        let path = if output.images.len() == 1 {
            args.output.clone()
        } else {
            numbered(&args.output, image.index)
        };
        std::fs::write(&path, &image.png)
            .map_err(|err| Error::Config(format!("cannot write {}: {err}", path.display())))?;
        eprintln!("wrote {} (seed {})", path.display(), image.seed);
        written.push(path);
    }
    Ok(written)
}

fn numbered(path: &std::path::Path, index: usize) -> PathBuf {
    let stem = path.file_stem().and_then(|stem| stem.to_str()).unwrap_or("out");
    let extension = path.extension().and_then(|ext| ext.to_str()).unwrap_or("png");
    path.with_file_name(format!("{stem}-{index}.{extension}"))
}
