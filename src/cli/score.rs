//! `t2i-align score`: scores image files against a prompt with a reward model.

use std::path::PathBuf;

use clap::Args;

use super::args::{RewardArgs, RuntimeArgs};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::reward::preprocess::decode_image;
use crate::runtime::Runtime;
use crate::serving::load_rewards;

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
