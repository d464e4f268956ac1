//! The command line. Every flag is also an environment variable, and its doc comment is its `--help`.

pub mod fine_tune;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::batching::request::Candidates;
use crate::error::{Error, Result};
use crate::http::{HttpConfig, ScoreLimits};
use crate::jobs::{GateDefaults, JobConfig, JobLimits};
use crate::metrics::Metrics;
use crate::pipeline::output::Progress;
use crate::pipeline::{GenerateInput, GenerateOutput, ModelFolder, Pipeline, RequestLimits};
use crate::reward::preprocess::decode_image;
use crate::reward::{GeneratePlan, PlanInput, Scorer, SelectionInput, SelectionLimits};
use crate::runtime::{Device, OptimizationLevel, Runtime, SessionSettings};
use crate::server::{RewardConfig, ServeConfig};
use crate::serving::load_rewards;

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
    /// Generate images from a prompt and write PNG files (with --best-of, the reward model picks them).
    Generate(GenerateArgs),
    /// Score images against a prompt with a reward model and print one score per image.
    Score(ScoreArgs),
    /// Fine-tune jobs on a running server: create, list, show, cancel (a thin client of /fine-tunes).
    #[command(subcommand, name = "fine-tune")]
    FineTune(fine_tune::FineTuneCommand),
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
    /// Let ONNX Runtime plan each run's memory from the last run with the same input shapes.
    #[arg(long, env = "T2I_MEMORY_PATTERN", default_value_t = true, action = clap::ArgAction::Set)]
    pub memory_pattern: bool,
    /// Share pre-packed weight buffers between sessions of the same model (the copies --workers loads).
    #[arg(long, env = "T2I_SHARE_PREPACKED_WEIGHTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub share_prepacked_weights: bool,
    /// Let the shared thread pool spin between operators (faster under load; burns CPU briefly when idle).
    #[arg(long, env = "T2I_SPIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub spin: bool,
}

impl RuntimeArgs {
    fn sessions(&self) -> SessionSettings {
        SessionSettings {
            intra_threads: self.intra_threads,
            inter_threads: self.inter_threads,
            optimization_level: self.graph_optimization,
            shared_thread_pool: self.shared_thread_pool,
            memory_pattern: self.memory_pattern,
            share_prepacked_weights: self.share_prepacked_weights,
            spin: self.spin,
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
    /// × steps × width × height.
    #[arg(long, env = "T2I_MAX_WORK", default_value_t = crate::pipeline::request::DEFAULT_MAX_WORK)]
    pub max_work: u64,
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
    fn config(&self) -> RewardConfig {
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

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub reward: RewardArgs,
    /// Data directory: the SQLite database and the files it points at (created if missing).
    #[arg(long, env = "T2I_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// When a database commit reaches the disk: `full` fsyncs every commit (an acknowledged rating survives
    /// power loss); `normal` only at checkpoints (faster; a killed process still loses nothing).
    #[arg(long, env = "T2I_DURABILITY", value_enum, default_value_t = crate::storage::Durability::Full)]
    pub durability: crate::storage::Durability,
    /// Most generated images kept, so /score and /rerank can take their `image_id`s; the oldest go first
    /// (0 keeps none).
    #[arg(long, env = "T2I_IMAGE_RETENTION", default_value_t = 10_000)]
    pub image_retention: u64,
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
    /// Most UNet rows in one call of the continuous batcher: every admitted request's images (two rows each
    /// with classifier-free guidance) share each denoising step up to this; more requests wait in the queue.
    #[arg(long, env = "T2I_MAX_BATCH_ROWS", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_batch_rows: u64,
    /// A file of API keys, one `scope:key` or `name:scope:key` a line (scopes: inference, admin). Keys also come
    /// from the T2I_API_KEYS variable, in the same form, comma-separated; never from the command line itself.
    #[arg(long, env = "T2I_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Refuse to start without API keys (instead of serving in open mode).
    #[arg(long, env = "T2I_REQUIRE_AUTH")]
    pub require_auth: bool,
    /// Most requests one API key may have in flight; more answer 429 (0: no limit).
    #[arg(long, env = "T2I_MAX_CONCURRENT_PER_KEY", default_value_t = 16)]
    pub max_concurrent_per_key: usize,
    /// Make /metrics need an admin key too.
    #[arg(long, env = "T2I_PROTECT_METRICS")]
    pub protect_metrics: bool,
    /// Seconds a generation may take, queue included, unless its X-Request-Timeout header asks for less; then
    /// it stops at the next denoising step and answers 504.
    #[arg(long, env = "T2I_REQUEST_TIMEOUT", default_value_t = 300.0)]
    pub request_timeout: f64,
    /// Origins browsers may call the API from, comma-separated (`*` for any). None by default: CORS is off.
    #[arg(long, env = "T2I_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Seconds in-flight requests get to finish after SIGTERM or SIGINT; the process then exits 0.
    #[arg(long, env = "T2I_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Largest request body in bytes.
    #[arg(long, env = "T2I_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Run a short generation on each worker before /ready answers 200.
    #[arg(long, env = "T2I_WARMUP", default_value_t = true, action = clap::ArgAction::Set)]
    pub warmup: bool,
    /// Image counts the warm-up generates on each worker, comma-separated (two UNet rows each with guidance):
    /// the batch sizes ONNX Runtime plans before the first request.
    #[arg(long, env = "T2I_WARMUP_IMAGES", value_delimiter = ',', default_value = "1")]
    pub warmup_images: Vec<usize>,
    /// Image sizes in pixels the warm-up covers, comma-separated (default: the model's own size).
    #[arg(long, env = "T2I_WARMUP_SIZES", value_delimiter = ',')]
    pub warmup_sizes: Vec<usize>,
    /// Most model versions loaded at once (the active one included); others load on first use.
    #[arg(long, env = "T2I_MAX_LOADED_MODELS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_loaded_models: u64,
    #[command(flatten)]
    pub jobs: JobArgs,
}

/// How fine-tune jobs run.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Python with the trainer's dependencies (trainer/requirements.txt); runs the trainer, the evaluator and
    /// the shapes world's prompt generator.
    #[arg(long, env = "T2I_TRAINER_PYTHON", default_value = ".venv-trainer/bin/python")]
    pub trainer_python: PathBuf,
    /// The trainer's sources: the folder holding the t2i_trainer package. Job children run
    /// `<trainer-python> -m t2i_trainer.<module>` with this folder first on PYTHONPATH, so the trainer's Python
    /// needs its dependencies but not the package installed.
    #[arg(long, env = "T2I_TRAINER_DIR", default_value = "trainer")]
    pub trainer_dir: PathBuf,
    /// The trainer's command line, replacing `<trainer-python> -m t2i_trainer.jobs.finetune`; `--spec FILE`
    /// is appended, and it too gets `--trainer-dir` on PYTHONPATH. For several GPUs:
    /// `torchrun --nproc_per_node 4 -m t2i_trainer.jobs.finetune`.
    #[arg(long, env = "T2I_TRAINER_COMMAND")]
    pub trainer_command: Option<String>,
    /// torch CPU threads for the trainer.
    #[arg(long, env = "T2I_TRAINER_THREADS", default_value_t = 2)]
    pub trainer_threads: usize,
    /// The gate: a new version's mean reward on the evaluation prompts must beat its base's by this much.
    #[arg(
        long,
        env = "T2I_GATE_MIN_REWARD_GAIN",
        default_value_t = 0.005,
        allow_hyphen_values = true
    )]
    pub gate_min_reward_gain: f64,
    /// The gate: the quality proxy may fall by at most this fraction (0.03 is 3 points).
    #[arg(long, env = "T2I_GATE_MAX_QUALITY_DROP", default_value_t = 0.03)]
    pub gate_max_quality_drop: f64,
    /// Most prompts in one job.
    #[arg(long, env = "T2I_MAX_JOB_PROMPTS", default_value_t = 10_000)]
    pub max_job_prompts: usize,
    /// Most samples per prompt in one job.
    #[arg(long, env = "T2I_MAX_JOB_IMAGES_PER_PROMPT", default_value_t = 64)]
    pub max_job_images_per_prompt: u32,
    /// Most trainer steps in one job.
    #[arg(long, env = "T2I_MAX_JOB_STEPS", default_value_t = 100_000)]
    pub max_job_steps: i64,
}

impl JobArgs {
    fn config(&self) -> Result<JobConfig> {
        let trainer_command = match &self.trainer_command {
            None => None,
            Some(text) => {
                let words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
                if words.is_empty() {
                    return Err(Error::Config("--trainer-command is empty".into()));
                }
                Some(words)
            }
        };
        for (flag, value, low, high) in [
            ("--gate-min-reward-gain", self.gate_min_reward_gain, -1.0, 1.0),
            ("--gate-max-quality-drop", self.gate_max_quality_drop, 0.0, 1.0),
        ] {
            if !(low..=high).contains(&value) {
                return Err(Error::Config(format!(
                    "{flag} must be between {low} and {high}. Given: {value}"
                )));
            }
        }
        Ok(JobConfig {
            python: self.trainer_python.clone(),
            trainer_dir: self.trainer_dir.clone(),
            trainer_command,
            trainer_threads: self.trainer_threads.max(1),
            limits: JobLimits {
                max_prompts: self.max_job_prompts.max(1),
                max_images_per_prompt: self.max_job_images_per_prompt.max(1),
                max_steps: self.max_job_steps.max(1),
                ..JobLimits::default()
            },
            gate: GateDefaults {
                min_reward_gain: self.gate_min_reward_gain,
                max_quality_drop: self.gate_max_quality_drop,
            },
        })
    }
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
    /// Generate this many candidates per image and keep the ones the reward model scores best.
    #[arg(long)]
    pub best_of: Option<i64>,
    /// Keep generating until the images score at least this (up to --max-candidates-per-request).
    #[arg(long)]
    pub min_reward: Option<f64>,
    /// The candidate budget for --min-reward (default 4 × n).
    #[arg(long = "max-candidates-per-request")]
    pub max_candidates_per_request: Option<i64>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub reward: RewardArgs,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The prompt every image is scored against.
    #[arg(long)]
    pub prompt: String,
    /// PNG or JPEG files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Print JSON ({"model", "scores": [{"path", "score"}]}) instead of one `score<TAB>path` line per image.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub reward: RewardArgs,
}

impl ServeArgs {
    pub fn into_config(self) -> Result<ServeConfig> {
        let keys = crate::http::auth::ApiKeys::load(
            std::env::var("T2I_API_KEYS").ok().as_deref(),
            self.api_keys_file.as_deref(),
        )?;
        if self.require_auth && keys.is_open() {
            return Err(Error::Config(
                "--require-auth is set but no API keys are configured: set T2I_API_KEYS or --api-keys-file".into(),
            ));
        }
        if !(self.request_timeout.is_finite() && self.request_timeout > 0.0 && self.request_timeout <= 86_400.0) {
            return Err(Error::Config(format!(
                "--request-timeout must be between 0 and 86400 seconds. Given: {}",
                self.request_timeout
            )));
        }
        Ok(ServeConfig {
            auth: crate::server::AuthConfig {
                keys,
                protect_metrics: self.protect_metrics,
                max_concurrent_per_key: self.max_concurrent_per_key,
            },
            request_timeout: std::time::Duration::from_secs_f64(self.request_timeout),
            durability: self.durability,
            jobs: self.jobs.config()?,
            max_loaded_models: self.max_loaded_models as usize,
            sessions: self.runtime.sessions(),
            limits: self.limits.limits(),
            model: self.runtime.model,
            ort_library: self.runtime.ort_dylib,
            device: self.runtime.device,
            workers: self.workers,
            queue_capacity: self.queue_capacity,
            max_batch_rows: self.max_batch_rows as usize,
            warmup: self.warmup,
            warmup_images: self.warmup_images,
            warmup_sizes: self.warmup_sizes,
            reward: self.reward.config(),
            data_dir: self.data_dir,
            image_retention: self.image_retention,
            http: HttpConfig {
                host: self.host,
                port: self.port,
                http_workers: self.http_workers,
                max_body_bytes: self.max_body_bytes,
                shutdown_grace: self.shutdown_grace,
                cors_origins: self.cors_origins,
            },
        })
    }
}

/// A progress bar over every denoising step of every candidate batch.
struct BarProgress {
    bar: ProgressBar,
    /// Steps of the batches already finished.
    done: u64,
}

impl Progress for BarProgress {
    fn on_step(&mut self, done: usize, total: usize) {
        self.bar.set_position(self.done + done as u64);
        if done == total {
            self.done += total as u64;
        }
    }
}

/// `t2i-align generate`: one generation on this thread, with a progress bar over the denoising steps. With a
/// reward model, every image is scored and `--best-of`/`--min-reward` choose among candidates.
pub fn run_generate(args: GenerateArgs) -> Result<Vec<PathBuf>> {
    let mut runtime = Runtime::init(
        args.runtime.ort_dylib.as_deref(),
        args.runtime.device,
        args.runtime.sessions(),
    )?;
    let model = std::sync::Arc::new(ModelFolder::open(&args.runtime.model)?);
    let mut pipeline = Pipeline::load(&mut runtime, model)?;
    let generate = GenerateInput {
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
    let reward = args.reward.config();
    let wants_selection = args.best_of.is_some() || args.min_reward.is_some();
    // Plain generation loads no reward model unless asked to choose: it stays as fast as before.
    let rewards = if wants_selection {
        load_rewards(
            &mut runtime,
            &reward.models,
            &reward.cli_settings(),
            &std::sync::Arc::new(Metrics::new()),
        )?
    } else {
        Default::default()
    };
    let input = PlanInput {
        generate,
        selection: SelectionInput {
            best_of: args.best_of,
            min_reward: args.min_reward,
            max_candidates: args.max_candidates_per_request,
        },
        reward_model: None,
    };
    // `generate` has never held a generation to --max-work (a server's guard against one request taking a
    // worker for too long): the plan is checked against everything else.
    let limits = RequestLimits {
        max_work: u64::MAX,
        ..args.limits.limits()
    };
    let plan =
        GeneratePlan::build(input, &pipeline.limits(), &limits, &reward.selection, &rewards).map_err(cli_flag_error)?;
    let params = &plan.params;
    let bar = ProgressBar::new((params.steps * plan.candidates.div_ceil(reward.batch_images)) as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} steps ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("denoising on {}", pipeline.provider()));
    let mut progress = BarProgress { bar, done: 0 };
    let output = if wants_selection {
        // With no reward model loaded, `--best-of 1` passes the plan unscored; choosing still needs one.
        let scorer = match &plan.scorer {
            Some(scorer) => scorer,
            None => rewards.get(None, "reward_model")?,
        };
        generate_chosen(&mut pipeline, &plan, scorer, reward.batch_images, &mut progress)?
    } else {
        pipeline.generate(params, &mut progress)?
    };
    progress.bar.finish();
    for warning in &output.warnings {
        tracing::warn!("{warning}");
    }
    if let Some(report) = &output.selection {
        eprintln!(
            "{} scored {} candidates; {} accepted",
            report.reward_model, report.candidates, report.accepted
        );
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
        match image.reward {
            Some(reward) => eprintln!("wrote {} (seed {}, reward {reward:.4})", path.display(), image.seed),
            None => eprintln!("wrote {} (seed {})", path.display(), image.seed),
        }
        written.push(path);
    }
    Ok(written)
}

/// Generates candidates for the plan in rounds of `batch_images` on this thread, scores each round with
/// `scorer` before the next, and returns the chosen images: the server's bookkeeping and selection
/// ([`Candidates`]), driven one unit at a time.
fn generate_chosen(
    pipeline: &mut Pipeline,
    plan: &GeneratePlan,
    scorer: &Scorer,
    batch_images: usize,
    progress: &mut dyn Progress,
) -> Result<GenerateOutput> {
    let preprocessor = scorer.preprocessor();
    let mut candidates = Candidates::new(plan, batch_images);
    while !candidates.enough() {
        for unit in candidates.issue() {
            let mut sampled = pipeline.sample(&unit.params(&plan.params), progress)?;
            let started = std::time::Instant::now();
            let mut pixels = Vec::with_capacity(sampled.images.len() * preprocessor.values_per_image());
            for image in &sampled.images {
                preprocessor.pixel_values_into(&image.rgb, &mut pixels);
            }
            let scored = scorer.score_blocking(vec![plan.params.prompt.clone(); sampled.images.len()], pixels)?;
            sampled.timings.score += started.elapsed();
            candidates.record(unit.first, sampled, &scored.scores);
        }
    }
    candidates.finish()
}

/// A selection field's error, retold with the command-line flag's name (other fields' errors are left as they
/// are).
fn cli_flag_error(err: Error) -> Error {
    match err {
        Error::Validation { message, param }
            if matches!(param.as_deref(), Some("best_of" | "min_reward" | "max_candidates")) =>
        {
            let flag = match param.as_deref() {
                Some("max_candidates") => "--max-candidates-per-request".to_string(),
                Some(field) => format!("--{}", field.replace('_', "-")),
                None => String::new(),
            };
            Error::Validation {
                message: format!("{flag}: {message}"),
                param,
            }
        }
        other => other,
    }
}

/// `t2i-align score`: scores each file against the prompt with the first reward model.
pub fn run_score(args: ScoreArgs) -> Result<Vec<f32>> {
    if args.prompt.trim().is_empty() {
        return Err(Error::Config("--prompt must not be empty".into()));
    }
    let reward = args.reward.config();
    if reward.models.is_empty() {
        return Err(Error::Config(
            "`score` needs a reward model; drop --no-reward-model or pass --reward-model".into(),
        ));
    }
    let mut runtime = Runtime::init(
        args.runtime.ort_dylib.as_deref(),
        args.runtime.device,
        args.runtime.sessions(),
    )?;
    let rewards = load_rewards(
        &mut runtime,
        &reward.models,
        &reward.cli_settings(),
        &std::sync::Arc::new(Metrics::new()),
    )?;
    let scorer = rewards.get(None, "reward_model")?;
    let preprocessor = scorer.preprocessor();
    let mut scores = Vec::with_capacity(args.images.len());
    for paths in args.images.chunks(reward.max_batch) {
        let mut pixels = Vec::with_capacity(paths.len() * preprocessor.values_per_image());
        for path in paths {
            let bytes =
                std::fs::read(path).map_err(|err| Error::Config(format!("cannot read {}: {err}", path.display())))?;
            let image = decode_image(&bytes, reward.score.max_image_pixels, &path.display().to_string())
                .map_err(|err| Error::Config(err.to_string()))?;
            preprocessor.pixel_values_into(&image, &mut pixels);
        }
        let scored = scorer.score_blocking(vec![args.prompt.clone(); paths.len()], pixels)?;
        scores.extend(scored.scores);
    }
    if args.json {
        let rows: Vec<serde_json::Value> = args
            .images
            .iter()
            .zip(&scores)
            .map(|(path, score)| serde_json::json!({"path": path.display().to_string(), "score": score}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"model": scorer.name(), "prompt": args.prompt, "scores": rows})
        );
    } else {
        for (path, score) in args.images.iter().zip(&scores) {
            println!("{score:.6}\t{}", path.display());
        }
    }
    Ok(scores)
}

fn numbered(path: &std::path::Path, index: usize) -> PathBuf {
    let stem = path.file_stem().and_then(|stem| stem.to_str()).unwrap_or("out");
    let extension = path.extension().and_then(|ext| ext.to_str()).unwrap_or("png");
    path.with_file_name(format!("{stem}-{index}.{extension}"))
}
