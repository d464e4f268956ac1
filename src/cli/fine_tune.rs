//! `t2i-align fine-tune create|list|show|cancel`: a thin client of a running server's `/fine-tunes` API, with a
//! progress bar that follows a job's events until it ends.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::error::{Error, Result};

#[derive(Debug, Subcommand)]
pub enum FineTuneCommand {
    /// Create a job (from --file and/or flags) and follow it until it ends.
    Create(Box<CreateArgs>),
    /// List jobs, newest first.
    List(ListArgs),
    /// Show one job; --follow tracks it with a progress bar until it ends.
    Show(ShowArgs),
    /// Cancel a queued or running job.
    Cancel(IdArgs),
}

#[derive(Debug, Args)]
pub struct Server {
    /// The server's base URL. The API key, when the server needs one, comes from the T2I_API_KEY variable.
    #[arg(long, env = "T2I_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub server: Server,
    /// A JSON request body (POST /fine-tunes); the flags below override its fields.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The version to start from (default: the active one).
    #[arg(long)]
    pub base_model: Option<String>,
    /// Draw this many of the shapes world's training prompts.
    #[arg(long)]
    pub prompt_count: Option<u32>,
    /// Samples per prompt, scored by the reward model (`images_per_prompt`; default 8, 0 trains on feedback
    /// alone).
    #[arg(long)]
    pub images_per_prompt: Option<u32>,
    /// Optimiser steps (`hyperparameters.steps`; default 500, at most the server's --max-job-steps).
    #[arg(long)]
    pub steps: Option<i64>,
    /// Weight of the pre-training term, in [0, 1e6] (`hyperparameters.beta`; default 1.0).
    #[arg(long)]
    pub beta: Option<f64>,
    /// AdamW peak learning rate, in [1e-12, 1] (`hyperparameters.learning_rate`; default 1e-4).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Rows per optimiser step, samples and pre-training data together (`hyperparameters.batch_size`;
    /// default 32).
    #[arg(long)]
    pub batch_size: Option<i64>,
    /// What the samples train: rwr (reward-weighted, the default), dpo or kto (`hyperparameters.objective`).
    #[arg(long, value_parser = ["rwr", "dpo", "kto"])]
    pub objective: Option<String>,
    /// β of dpo or kto, in [1, 1e6] (`hyperparameters.objective_beta`).
    #[arg(long)]
    pub objective_beta: Option<f64>,
    /// The pre-training term's target: data (the added noise, the default) or base (the frozen base UNet's
    /// prediction) (`hyperparameters.pretrain_target`).
    #[arg(long, value_parser = ["data", "base"])]
    pub pretrain_target: Option<String>,
    /// Relabel images by the reward model among prompts that differ in one of these words, comma-separated
    /// (`relabel.words`), e.g. one,two,three,four.
    #[arg(long, value_delimiter = ',')]
    pub relabel_words: Option<Vec<String>>,
    /// The least reward model score, in (0, 1], that relabels an image (`relabel.threshold`; default 0.5).
    /// Needs --relabel-words or a `relabel` in --file.
    #[arg(long)]
    pub relabel_threshold: Option<f64>,
    /// Keep only the pre-training images whose caption the reward model prefers to its variant for each other
    /// of these words (the data's variants, or else the word swapped), comma-separated
    /// (`pretrain_data.filter.words`), e.g. one,two,three,four.
    #[arg(long, value_delimiter = ',')]
    pub pretrain_filter_words: Option<Vec<String>>,
    /// Keep the same share of every word's captions (`pretrain_data.filter.balance`; default true). Needs
    /// --pretrain-filter-words or a `pretrain_data.filter` in --file.
    #[arg(long, action = clap::ArgAction::Set)]
    pub pretrain_filter_balance: Option<bool>,
    /// Seeds the prompts, the samples and the trainer (`seed`; default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Train only on ratings of images this version generated (`feedback_filter.model`); for an on-policy
    /// round, the same as --base-model.
    #[arg(long)]
    pub feedback_model: Option<String>,
    /// Train only on this rater's ratings (`feedback_filter.rater`).
    #[arg(long)]
    pub feedback_rater: Option<String>,
    /// Make the new version active if it passes the gate.
    #[arg(long)]
    pub activate: bool,
    /// Print the created job and return at once instead of following it.
    #[arg(long)]
    pub no_follow: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub server: Server,
    /// Only jobs with this status.
    #[arg(long)]
    pub status: Option<String>,
    /// How many jobs to list, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Print the JSON page instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub server: Server,
    /// The job's id, as `fine-tune list` prints it.
    pub id: String,
    /// Follow the job with a progress bar until it ends.
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    #[command(flatten)]
    pub server: Server,
    /// The job's id, as `fine-tune list` prints it.
    pub id: String,
}

pub fn run(command: FineTuneCommand) -> Result<()> {
    match command {
        FineTuneCommand::Create(args) => create(*args),
        FineTuneCommand::List(args) => list(args),
        FineTuneCommand::Show(args) => {
            let client = Client::new(&args.server.url);
            if args.follow {
                follow(&client, &args.id)
            } else {
                print_json(&client.get(&format!("/fine-tunes/{}", args.id))?);
                Ok(())
            }
        }
        FineTuneCommand::Cancel(args) => {
            let client = Client::new(&args.server.url);
            let job = client.post(&format!("/fine-tunes/{}/cancel", args.id), &json!({}))?;
            println!("{}: {}", args.id, job["status"].as_str().unwrap_or("?"));
            Ok(())
        }
    }
}

/// The variable a client command reads its API key from (never a flag: argv is visible to every user).
pub const API_KEY_ENV: &str = "T2I_API_KEY";

struct Client {
    base: String,
    agent: ureq::Agent,
    /// `Authorization: Bearer <T2I_API_KEY>`, when that variable is set.
    authorization: Option<String>,
}

impl Client {
    fn new(url: &str) -> Self {
        Client {
            base: url.trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build(),
            authorization: std::env::var(API_KEY_ENV)
                .ok()
                .map(|key| key.trim().to_string())
                .filter(|key| !key.is_empty())
                .map(|key| format!("Bearer {key}")),
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.authorization {
            Some(value) => request.set("Authorization", value),
            None => request,
        }
    }

    fn get(&self, path: &str) -> Result<Value> {
        self.answer(self.request("GET", path).call())
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.answer(self.request("POST", path).send_json(body.clone()))
    }

    /// The JSON body of a 2xx, or the server's error message (`{"error": {"message", "param"}}`).
    fn answer(&self, response: std::result::Result<ureq::Response, ureq::Error>) -> Result<Value> {
        match response {
            Ok(response) => response
                .into_json()
                .map_err(|err| Error::Internal(format!("the server's answer is not JSON: {err}"))),
            Err(ureq::Error::Status(status, response)) => {
                let body: Value = response.into_json().unwrap_or(Value::Null);
                let message = body["error"]["message"].as_str().unwrap_or("no error message");
                let param = body["error"]["param"]
                    .as_str()
                    .map_or(String::new(), |param| format!(" (field `{param}`)"));
                let hint = if status == 401 && self.authorization.is_none() {
                    format!("; set {API_KEY_ENV} to a key with the `fine-tune` scope")
                } else {
                    String::new()
                };
                Err(Error::Config(format!(
                    "the server answered {status}: {message}{param}{hint}"
                )))
            }
            Err(err) => Err(Error::Unavailable(format!(
                "cannot reach {} ({err}); is `t2i-align serve` running there? (--url, T2I_URL)",
                self.base
            ))),
        }
    }
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

fn create(args: CreateArgs) -> Result<()> {
    let mut body = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|err| Error::Config(format!("cannot read --file {}: {err}", path.display())))?;
            serde_json::from_str::<Value>(&text)
                .map_err(|err| Error::Config(format!("--file {} is not JSON: {err}", path.display())))?
        }
        None => json!({}),
    };
    if !body.is_object() {
        return Err(Error::Config("--file must hold a JSON object".into()));
    }
    if let Some(base) = &args.base_model {
        body["base_model"] = json!(base);
    }
    if let Some(count) = args.prompt_count {
        body["prompts"] = json!({"generator": "shapes_world", "split": "train", "count": count});
    }
    if let Some(images) = args.images_per_prompt {
        body["images_per_prompt"] = json!(images);
    }
    if let Some(seed) = args.seed {
        body["seed"] = json!(seed);
    }
    if args.activate {
        body["activate_on_success"] = json!(true);
    }
    if let Some(words) = &args.relabel_words {
        if !body["relabel"].is_object() {
            body["relabel"] = json!({});
        }
        body["relabel"]["words"] = json!(words);
    }
    if let Some(threshold) = args.relabel_threshold {
        if !body["relabel"].is_object() {
            return Err(Error::Config(
                "--relabel-threshold needs --relabel-words (or a `relabel` with its words in --file)".into(),
            ));
        }
        body["relabel"]["threshold"] = json!(threshold);
    }
    if let Some(words) = &args.pretrain_filter_words {
        if !body["pretrain_data"].is_object() {
            body["pretrain_data"] = json!({"kind": "shapes_world"});
        }
        if !body["pretrain_data"]["filter"].is_object() {
            body["pretrain_data"]["filter"] = json!({});
        }
        body["pretrain_data"]["filter"]["words"] = json!(words);
    }
    if let Some(balance) = args.pretrain_filter_balance {
        if !body["pretrain_data"]["filter"].is_object() {
            return Err(Error::Config(
                "--pretrain-filter-balance needs --pretrain-filter-words (or a `pretrain_data.filter` in --file)"
                    .into(),
            ));
        }
        body["pretrain_data"]["filter"]["balance"] = json!(balance);
    }
    for (name, value) in [("model", &args.feedback_model), ("rater", &args.feedback_rater)] {
        if let Some(value) = value {
            if !body["feedback_filter"].is_object() {
                body["feedback_filter"] = json!({});
            }
            body["feedback_filter"][name] = json!(value);
        }
    }
    for (name, value) in [
        ("steps", args.steps.map(|value| json!(value))),
        ("beta", args.beta.map(|value| json!(value))),
        ("learning_rate", args.learning_rate.map(|value| json!(value))),
        ("batch_size", args.batch_size.map(|value| json!(value))),
        ("objective", args.objective.as_ref().map(|value| json!(value))),
        ("objective_beta", args.objective_beta.map(|value| json!(value))),
        (
            "pretrain_target",
            args.pretrain_target.as_ref().map(|value| json!(value)),
        ),
    ] {
        if let Some(value) = value {
            if !body["hyperparameters"].is_object() {
                body["hyperparameters"] = json!({});
            }
            body["hyperparameters"][name] = value;
        }
    }
    let client = Client::new(&args.server.url);
    let job = client.post("/fine-tunes", &body)?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    if args.no_follow {
        print_json(&job);
        return Ok(());
    }
    eprintln!(
        "created {id} (base model {})",
        job["base_model"].as_str().unwrap_or("?")
    );
    follow(&client, &id)
}

fn list(args: ListArgs) -> Result<()> {
    let client = Client::new(&args.server.url);
    let mut path = format!("/fine-tunes?limit={}", args.limit);
    if let Some(status) = &args.status {
        path.push_str(&format!("&status={status}"));
    }
    let page = client.get(&path)?;
    if args.json {
        print_json(&page);
        return Ok(());
    }
    println!(
        "{:<36}  {:<10}  {:<9}  {:>8}  result",
        "id", "status", "stage", "progress"
    );
    for job in page["data"].as_array().into_iter().flatten() {
        println!(
            "{:<36}  {:<10}  {:<9}  {:>7.0}%  {}",
            job["id"].as_str().unwrap_or(""),
            job["status"].as_str().unwrap_or(""),
            job["stage"].as_str().unwrap_or("-"),
            job["progress"].as_f64().unwrap_or(0.0) * 100.0,
            job["result_model"].as_str().or(job["error"].as_str()).unwrap_or("-"),
        );
    }
    Ok(())
}

/// Polls the job and its events once a second, printing each event above a progress bar, until it ends.
/// Fails (a non-zero exit) unless it succeeded.
fn follow(client: &Client, id: &str) -> Result<()> {
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut after: Option<String> = None;
    loop {
        let job = client.get(&format!("/fine-tunes/{id}"))?;
        loop {
            let path = match &after {
                Some(last) => format!("/fine-tunes/{id}/events?limit=500&after={last}"),
                None => format!("/fine-tunes/{id}/events?limit=500"),
            };
            let page = client.get(&path)?;
            for event in page["data"].as_array().into_iter().flatten() {
                if event["kind"] != "progress" {
                    bar.println(format!(
                        "[{}] {}",
                        event["level"].as_str().unwrap_or("info"),
                        event["message"].as_str().unwrap_or("")
                    ));
                }
            }
            if let Some(last) = page["last_id"].as_str() {
                after = Some(last.to_string());
            }
            if page["has_more"] != true {
                break;
            }
        }
        bar.set_position((job["progress"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
        let status = job["status"].as_str().unwrap_or("?").to_string();
        bar.set_message(format!("{status}: {}", job["stage"].as_str().unwrap_or("-")));
        match status.as_str() {
            "queued" | "running" => std::thread::sleep(Duration::from_secs(1)),
            "succeeded" => {
                let model = job["result_model"].as_str().unwrap_or("no model");
                bar.finish_with_message(format!("succeeded: {model}"));
                // Also without a terminal, where the bar is hidden.
                eprintln!("job {id} succeeded: version {model}");
                if let Some(gate) = job["metrics"].get("gate") {
                    eprintln!("gate: {}", serde_json::to_string(gate).unwrap_or_default());
                }
                return Ok(());
            }
            _ => {
                bar.abandon_with_message(status.clone());
                eprintln!("job {id} {status}");
                return Err(Error::Config(format!(
                    "job {id} {status}{}",
                    job["error"]
                        .as_str()
                        .map_or(String::new(), |error| format!(": {error}"))
                )));
            }
        }
    }
}
