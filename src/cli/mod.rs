//! The command line. Every flag is also an environment variable, and its doc comment is its `--help`.
//!
//! One file per command: `serve` (its flags, start-up and shutdown), `generate`, `score`, `fine_tune` and `keys`; `args`
//! holds the argument groups several commands share.

pub mod args;
pub mod fine_tune;
pub mod generate;
pub mod keys;
pub mod score;
pub mod serve;

use clap::{Parser, Subcommand, ValueEnum};

pub use args::{LimitArgs, RewardArgs, RewardConfig, RuntimeArgs};
pub use generate::{run_generate, GenerateArgs};
pub use score::{run_score, ScoreArgs};
pub use serve::{AuthConfig, JobArgs, ServeArgs, ServeConfig};

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

// Parsed once at start-up and consumed at once: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// API keys in the database, without a server: create (prints the secret once), list, revoke.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Print the OpenAPI spec (JSON) to stdout.
    Openapi,
}
