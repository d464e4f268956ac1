//! `t2i-align generate`: one generation on this thread, with a progress bar over the denoising steps, written to
//! PNG files; with `--best-of`/`--min-reward`, the reward model chooses among candidates.

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::args::{LimitArgs, RewardArgs, RuntimeArgs};
use crate::batching::request::Candidates;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::pipeline::output::Progress;
use crate::pipeline::{GenerateInput, GenerateOutput, Pipeline};
use crate::reward::preprocess::decode_image;
use crate::reward::{GeneratePlan, PlanInput, Scorer, SelectionInput};
use crate::runtime::Runtime;
use crate::serving::graphs::{self, GraphMode, GraphSettings};
use crate::serving::load_rewards;

/// The largest --init-image, in pixels: as the server's default `--max-image-pixels`.
const INIT_IMAGE_MAX_PIXELS: u64 = 4096 * 4096;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to draw.
    pub prompt: String,
    /// Output PNG path; with -n above 1, `-0`, `-1`, ... go before the extension.
    #[arg(short, long, default_value = "out.png")]
    pub output: PathBuf,
    /// What to steer away from (classifier-free guidance's negative rows; default empty).
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
    /// ddim, euler, euler_a, dpm++2m, pndm or lcm (default: the model's own).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Seed of the first image (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Image width in pixels, a multiple of the model's size multiple (default: the model's, or --init-image's).
    #[arg(long)]
    pub width: Option<i64>,
    /// Image height in pixels, as --width.
    #[arg(long)]
    pub height: Option<i64>,
    /// DDIM eta in [0, 1].
    #[arg(long)]
    pub eta: Option<f64>,
    /// Guidance rescale in [0, 1] (diffusers' guidance_rescale; 0, the default, is off).
    #[arg(long)]
    pub guidance_rescale: Option<f64>,
    /// img2img: start from this PNG or JPEG instead of noise (its size, rounded down to the model's multiple,
    /// unless --width/--height say otherwise).
    #[arg(long)]
    pub init_image: Option<std::path::PathBuf>,
    /// img2img: how much of --init-image is noised away, in (0, 1] (default 0.8).
    #[arg(long)]
    pub strength: Option<f64>,
    /// SDXL refiner: the aesthetic score in [0, 10] the image is conditioned on (default 6.0).
    #[arg(long)]
    pub aesthetic_score: Option<f64>,
    /// SDXL refiner: the aesthetic score of the negative rows in [0, 10] (default 2.5).
    #[arg(long)]
    pub negative_aesthetic_score: Option<f64>,
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
    let cached = GraphSettings {
        // `generate` never runs the optimiser (it has no trainer flags): `on` reads as `cached`.
        mode: match args.runtime.optimize_graphs {
            GraphMode::Off => GraphMode::Off,
            GraphMode::Cached | GraphMode::On => GraphMode::Cached,
        },
        optimizer: None,
    };
    let model = std::sync::Arc::new(graphs::open_model(&args.runtime.model, &cached)?);
    let mut pipeline = Pipeline::load(&mut runtime, model)?;
    eprintln!("running on {}", pipeline.provider().label());
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
        guidance_rescale: args.guidance_rescale,
        aesthetic_score: args.aesthetic_score,
        negative_aesthetic_score: args.negative_aesthetic_score,
        init_image: match &args.init_image {
            None => None,
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|err| Error::Config(format!("--init-image {}: cannot read it: {err}", path.display())))?;
                Some(decode_image(&bytes, INIT_IMAGE_MAX_PIXELS, "--init-image")?)
            }
        },
        strength: args.strength,
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
    // Held to every request limit the server holds a request to, --max-work included: the flags are the same.
    let limits = args.limits.limits();
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

fn numbered(path: &std::path::Path, index: usize) -> PathBuf {
    let stem = path.file_stem().and_then(|stem| stem.to_str()).unwrap_or("out");
    let extension = path.extension().and_then(|ext| ext.to_str()).unwrap_or("png");
    path.with_file_name(format!("{stem}-{index}.{extension}"))
}
