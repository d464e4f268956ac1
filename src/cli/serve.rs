//! `t2i-align serve`: its flags and the config they become, then start-up and shutdown: load the library and the
//! model folder (failing fast with a sentence), bind HTTP at once so `/health` answers, then load and warm the
//! sessions before `/ready` says 200.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix_web::web;
use clap::Args;

use super::args::{LimitArgs, RewardArgs, RewardConfig, RuntimeArgs};
use crate::error::{Error, Result};
use crate::http::{build_server, AppState, HttpConfig, Serving};
use crate::jobs::launch::TrainerLaunch;
use crate::jobs::{GateRule, JobConfig, JobLimits, JobManager};
use crate::metrics::Metrics;
use crate::pipeline::{ModelFolder, RequestLimits};
use crate::registry::Registry;
use crate::runtime::{Device, Runtime, SessionSettings};
use crate::serving::graphs::{GraphMode, GraphSettings};
use crate::serving::{rollout, EngineSettings, Loader, ModelPool, RewardSettings};
use crate::storage::{BlobConfig, Database, Storage, StorageConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub reward: RewardArgs,
    /// What this replica does, comma-separated: `api` serves the HTTP API; `worker` claims and runs fine-tune
    /// jobs. Both by default. A `worker`-only replica answers only /health, /ready and /metrics; an `api`-only
    /// one queues jobs for the workers.
    #[arg(
        long,
        env = "T2I_ROLES",
        value_enum,
        value_delimiter = ',',
        default_value = "api,worker"
    )]
    pub roles: Vec<Role>,
    /// Data directory: the files the database points at, and the SQLite database unless --database-url names
    /// another (created if missing).
    #[arg(long, env = "T2I_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// The database for ratings, jobs, images' records and model versions: `sqlite://<file>` or
    /// `postgres://user:password@host:port/database` (shared by replicas). Default: SQLite in --data-dir.
    #[arg(long, env = "T2I_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where generated images and the images behind ratings are stored: `s3://bucket/prefix` (any
    /// S3-compatible store, shared by replicas; credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)
    /// or `file:///folder`. Default: --data-dir.
    #[arg(long, env = "T2I_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// The S3-compatible server's endpoint for an s3:// --object-store, as `http://host:port` (plain HTTP is
    /// allowed only when given so). Default: AWS, or AWS_ENDPOINT_URL.
    #[arg(long, env = "T2I_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// The region of an s3:// --object-store. Default: AWS_REGION, else us-east-1.
    #[arg(long, env = "T2I_S3_REGION")]
    pub s3_region: Option<String>,
    /// Send write-once objects as conditional PUTs (If-None-Match: *). Turn off for S3 servers that ignore
    /// them; the database row alone then guards those writes.
    #[arg(long, env = "T2I_S3_CONDITIONAL_PUT", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_conditional_put: bool,
    /// When a database commit reaches the disk: `full` fsyncs every commit (an acknowledged rating survives
    /// power loss); `normal` only at checkpoints (faster; a killed process still loses nothing).
    #[arg(long, env = "T2I_DURABILITY", value_enum, default_value_t = crate::storage::Durability::Full)]
    pub durability: crate::storage::Durability,
    /// Most generated images kept, so /score and /rerank can take their `image_id`s; the oldest go first,
    /// swept after every hundredth of this many stored (0 keeps none).
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
    /// Rows of a fine-tune job's samples that may ride in a UNet call beside users' requests (its spare
    /// capacity). Users' requests always come first. Default: 0 on the CPU, whose calls are compute-bound, so
    /// that every extra row lengthens the users' wait; --max-batch-rows on CUDA.
    #[arg(long, env = "T2I_JOB_SPARE_ROWS", value_parser = clap::value_parser!(u64).range(0..=4096))]
    pub job_spare_rows: Option<u64>,
    /// Most rows of a UNet call that carries only a fine-tune job's samples; a user's request that arrives
    /// waits for at most one such call. Default: --max-batch-rows.
    #[arg(long, env = "T2I_JOB_CALL_ROWS", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub job_call_rows: Option<u64>,
    /// A file of bootstrap API keys, one `scopes:key`, `name:scopes:key` or `tenant:name:scopes:key` a line
    /// (scopes: inference, feedback, fine-tune, admin, several joined by `+`). Keys also come from the
    /// T2I_API_KEYS variable, in the same form, comma-separated; never from the command line itself. Further keys
    /// live in the database (`t2i-align keys create`, POST /keys).
    #[arg(long, env = "T2I_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Refuse to start without API keys (instead of serving in open mode).
    #[arg(long, env = "T2I_REQUIRE_AUTH")]
    pub require_auth: bool,
    /// Serve in open mode (no API keys anywhere) on an address other than loopback. Without it, such a server
    /// refuses to start: anyone who reaches the port could run fine-tunes and activate models.
    #[arg(long, env = "T2I_ALLOW_OPEN")]
    pub allow_open: bool,
    /// Seconds between reloads of the stored API keys: a key revoked on any replica stops working on this one
    /// within this long.
    #[arg(long, env = "T2I_KEY_REFRESH", default_value_t = 2.0)]
    pub key_refresh: f64,
    /// Most requests one API key may have in flight; more answer 429 (0: no limit).
    #[arg(long, env = "T2I_MAX_CONCURRENT_PER_KEY", default_value_t = 16)]
    pub max_concurrent_per_key: usize,
    /// Requests one API key (in open mode, one client address) may make per minute, counted across replicas
    /// in the database; more answer 429 with Retry-After and RateLimit headers. A key may carry its own
    /// (0: no limit).
    #[arg(long, env = "T2I_RATE_LIMIT_REQUESTS", default_value_t = crate::http::rate_limit::DEFAULT_REQUESTS_PER_MINUTE)]
    pub rate_limit_requests: u64,
    /// Generation work one API key (in open mode, one client address) may ask for per minute, in pixel-steps
    /// (images, best-of candidates included, × steps × width × height), counted across replicas; more answer
    /// 429. A key may carry its own (0: no limit).
    #[arg(long, env = "T2I_RATE_LIMIT_WORK", default_value_t = crate::http::rate_limit::DEFAULT_WORK_PER_MINUTE)]
    pub rate_limit_work: u64,
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

/// A replica's role (`--roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Serve the HTTP API.
    Api,
    /// Claim and run fine-tune jobs.
    Worker,
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
    /// Run the trainer under torchrun with this many processes on each node (one per GPU), data-parallel.
    #[arg(long, env = "T2I_TRAINER_NPROC_PER_NODE")]
    pub trainer_nproc_per_node: Option<u32>,
    /// The nodes of a multi-node trainer run, comma-separated, this worker's first: every node's torchrun
    /// agent meets at a c10d rendezvous named after the job and its attempt. Every node needs the job's folder
    /// at the same path (a shared filesystem) and the trainer's environment.
    #[arg(long, env = "T2I_TRAINER_NODES", value_delimiter = ',')]
    pub trainer_nodes: Vec<String>,
    /// `host:port` of the trainer's c10d rendezvous. Default: the first of --trainer-nodes at port 29400, or
    /// a free port on 127.0.0.1 for one node.
    #[arg(long, env = "T2I_TRAINER_RDZV_ENDPOINT")]
    pub trainer_rdzv_endpoint: Option<String>,
    /// The words that start a command on another node; `{node}` stands for its name.
    #[arg(long, env = "T2I_TRAINER_NODE_LAUNCHER", default_value = "ssh {node}")]
    pub trainer_node_launcher: String,
    /// torchrun, for --trainer-nproc-per-node and --trainer-nodes. Default: the torchrun beside
    /// --trainer-python.
    #[arg(long, env = "T2I_TORCHRUN")]
    pub torchrun: Option<PathBuf>,
    /// The gate (docs/fine-tuning.md): the lower end of the interval of a new version's mean reward gain on the
    /// evaluation prompts must be above this.
    #[arg(
        long,
        env = "T2I_GATE_MIN_REWARD_GAIN",
        default_value_t = 0.0,
        allow_hyphen_values = true
    )]
    pub gate_min_reward_gain: f64,
    /// The gate's guards: `metric=drop` pairs, comma-separated. The lower end of each metric's change interval
    /// may fall at most this far below 0 (0.03 is 3 points). Metrics: quality, good, count, colour,
    /// background, shape, diversity; those not named are not guarded.
    #[arg(
        long,
        env = "T2I_GATE_MAX_DROP",
        default_value = "quality=0.03,colour=0.03,background=0.03,shape=0.03,diversity=0.02"
    )]
    pub gate_max_drop: String,
    /// The gate: the quality proxy's tolerance, overriding `quality` in --gate-max-drop.
    #[arg(long, env = "T2I_GATE_MAX_QUALITY_DROP")]
    pub gate_max_quality_drop: Option<f64>,
    /// The gate's intervals' coverage, in [0.5, 0.999].
    #[arg(long, env = "T2I_GATE_CONFIDENCE", default_value_t = 0.95)]
    pub gate_confidence: f64,
    /// The gate's bootstrap resamples, 100 to 100000.
    #[arg(long, env = "T2I_GATE_RESAMPLES", default_value_t = 2000)]
    pub gate_resamples: u32,
    /// Most prompts in one job.
    #[arg(long, env = "T2I_MAX_JOB_PROMPTS", default_value_t = 10_000)]
    pub max_job_prompts: usize,
    /// Most samples per prompt in one job.
    #[arg(long, env = "T2I_MAX_JOB_IMAGES_PER_PROMPT", default_value_t = 64)]
    pub max_job_images_per_prompt: u32,
    /// Most trainer steps in one job.
    #[arg(long, env = "T2I_MAX_JOB_STEPS", default_value_t = 100_000)]
    pub max_job_steps: i64,
    /// Seconds a worker's lease on a running job lasts; it renews it every third of that. A replica that stops
    /// loses its job to another worker once the lease runs out.
    #[arg(long, env = "T2I_JOB_LEASE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub job_lease_seconds: u64,
    /// Attempts a job gets: a job whose worker stopped, or that a shutdown gave back, runs again (its training
    /// going on from its last checkpoint) until it has had this many; then it fails.
    #[arg(long, env = "T2I_JOB_MAX_ATTEMPTS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub job_max_attempts: u32,
    /// The trainer writes a checkpoint every this many steps, kept in the object store: a job reclaimed after
    /// its worker stopped goes on training from it instead of from step 1. 0 turns checkpoints off.
    #[arg(long, env = "T2I_JOB_CHECKPOINT_EVERY", default_value_t = 100)]
    pub job_checkpoint_every: u32,
    /// Most fine-tune jobs one tenant may have queued or running at once; more are refused with 429 (0: no
    /// limit).
    #[arg(long, env = "T2I_TENANT_MAX_JOBS", default_value_t = 2)]
    pub tenant_max_jobs: u32,
    /// Most minutes of fine-tune jobs (from start to end, running ones so far) one tenant may use in any 24
    /// hours; past it, new jobs are refused with 429 until the oldest fall out of the window (0: no limit).
    #[arg(long, env = "T2I_TENANT_JOB_MINUTES_PER_DAY", default_value_t = 240)]
    pub tenant_job_minutes_per_day: u32,
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
        let gate = self.gate_rule()?;
        let launch = TrainerLaunch {
            nproc_per_node: self.trainer_nproc_per_node,
            nodes: self.trainer_nodes.clone(),
            rdzv_endpoint: self.trainer_rdzv_endpoint.clone(),
            node_launcher: self
                .trainer_node_launcher
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            torchrun: self.torchrun.clone(),
        };
        launch.validate(trainer_command.is_some())?;
        Ok(JobConfig {
            launch,
            python: self.trainer_python.clone(),
            trainer_dir: self.trainer_dir.clone(),
            trainer_command,
            trainer_threads: self.trainer_threads.max(1),
            worker: true,
            lease: std::time::Duration::from_secs(self.job_lease_seconds),
            max_attempts: self.job_max_attempts,
            checkpoint_every: self.job_checkpoint_every,
            quota: crate::jobs::JobQuota {
                max_jobs: self.tenant_max_jobs,
                minutes_per_day: self.tenant_job_minutes_per_day,
            },
            limits: JobLimits {
                max_prompts: self.max_job_prompts.max(1),
                max_images_per_prompt: self.max_job_images_per_prompt.max(1),
                max_steps: self.max_job_steps.max(1),
                ..JobLimits::default()
            },
            gate,
        })
    }

    /// The server's gate from the `--gate-*` flags, each checked.
    fn gate_rule(&self) -> Result<GateRule> {
        let mut max_drop = std::collections::BTreeMap::new();
        for pair in self
            .gate_max_drop
            .split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
        {
            let (metric, drop) = pair
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("--gate-max-drop takes metric=drop pairs. Given: `{pair}`")))?;
            let metric = metric.trim();
            if metric == "reward" || !crate::jobs::gate::METRICS.contains(&metric) {
                return Err(Error::Config(format!(
                    "--gate-max-drop: `{metric}` is not a guardable metric (quality, good, count, colour, background, shape, diversity)"
                )));
            }
            let drop: f64 = drop
                .trim()
                .parse()
                .map_err(|_| Error::Config(format!("--gate-max-drop: `{pair}` needs a number after `=`")))?;
            max_drop.insert(metric.to_string(), drop);
        }
        if let Some(drop) = self.gate_max_quality_drop {
            max_drop.insert("quality".into(), drop);
        }
        let mut checks = vec![
            (
                "--gate-min-reward-gain".to_string(),
                self.gate_min_reward_gain,
                -1.0,
                1.0,
            ),
            ("--gate-confidence".to_string(), self.gate_confidence, 0.5, 0.999),
            (
                "--gate-resamples".to_string(),
                f64::from(self.gate_resamples),
                100.0,
                100_000.0,
            ),
        ];
        checks.extend(
            max_drop
                .iter()
                .map(|(metric, drop)| (format!("--gate-max-drop {metric}"), *drop, 0.0, 1.0)),
        );
        for (flag, value, low, high) in checks {
            if !(low..=high).contains(&value) {
                return Err(Error::Config(format!(
                    "{flag} must be between {low} and {high}. Given: {value}"
                )));
            }
        }
        Ok(GateRule {
            min_reward_gain: self.gate_min_reward_gain,
            max_drop,
            confidence: self.gate_confidence,
            resamples: self.gate_resamples,
        })
    }
}

impl ServeArgs {
    pub fn into_config(self) -> Result<ServeConfig> {
        let keys = crate::http::auth::StaticKeys::load(
            std::env::var("T2I_API_KEYS").ok().as_deref(),
            self.api_keys_file.as_deref(),
        )?;
        if !(self.key_refresh.is_finite() && (0.1..=3600.0).contains(&self.key_refresh)) {
            return Err(Error::Config(format!(
                "--key-refresh must be between 0.1 and 3600 seconds. Given: {}",
                self.key_refresh
            )));
        }
        if !(self.request_timeout.is_finite() && self.request_timeout > 0.0 && self.request_timeout <= 86_400.0) {
            return Err(Error::Config(format!(
                "--request-timeout must be between 0 and 86400 seconds. Given: {}",
                self.request_timeout
            )));
        }
        if self.roles.is_empty() {
            return Err(Error::Config("--roles needs at least one of api, worker".into()));
        }
        let (api, worker) = (self.roles.contains(&Role::Api), self.roles.contains(&Role::Worker));
        let roles = [(api, "api"), (worker, "worker")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(",");
        let mut jobs = self.jobs.config()?;
        jobs.worker = worker;
        // A job's sampling requests are held to the same --max-work as users' requests.
        jobs.limits.max_work = self.limits.max_work;
        Ok(ServeConfig {
            roles,
            auth: AuthConfig {
                keys,
                require_auth: self.require_auth,
                allow_open: self.allow_open,
                key_refresh: std::time::Duration::from_secs_f64(self.key_refresh),
                rate_limits: crate::http::rate_limit::RateLimits {
                    requests_per_minute: self.rate_limit_requests,
                    work_per_minute: self.rate_limit_work,
                },
                protect_metrics: self.protect_metrics,
                max_concurrent_per_key: self.max_concurrent_per_key,
            },
            request_timeout: std::time::Duration::from_secs_f64(self.request_timeout),
            storage: StorageConfig {
                database: Database::from_url(self.database_url.as_deref(), &self.data_dir)?,
                blobs: BlobConfig {
                    url: self.object_store,
                    s3_endpoint: self.s3_endpoint,
                    s3_region: self.s3_region,
                    s3_conditional_put: self.s3_conditional_put,
                    s3_access_key: None,
                    s3_secret_key: None,
                },
                data_dir: self.data_dir,
                image_retention: self.image_retention,
                durability: self.durability,
            },
            jobs,
            max_loaded_models: self.max_loaded_models as usize,
            sessions: self.runtime.sessions(),
            optimize_graphs: self.runtime.optimize_graphs,
            limits: self.limits.limits(),
            model: self.runtime.model,
            ort_library: self.runtime.ort_dylib,
            device: self.runtime.device,
            workers: self.workers,
            queue_capacity: self.queue_capacity,
            max_batch_rows: self.max_batch_rows as usize,
            job_spare_rows: self.job_spare_rows.map(|rows| rows as usize),
            job_call_rows: self.job_call_rows.map(|rows| rows as usize),
            warmup: self.warmup,
            warmup_images: self.warmup_images,
            warmup_sizes: self.warmup_sizes,
            reward: self.reward.config(),
            http: HttpConfig {
                host: self.host,
                port: self.port,
                http_workers: self.http_workers,
                max_body_bytes: self.max_body_bytes,
                shutdown_grace: self.shutdown_grace,
                cors_origins: self.cors_origins,
                api,
            },
        })
    }
}

pub struct ServeConfig {
    /// This replica's roles, as `--roles` names them (`api,worker`).
    pub roles: String,
    pub model: std::path::PathBuf,
    pub ort_library: Option<std::path::PathBuf>,
    pub device: Device,
    pub sessions: SessionSettings,
    /// Whether loads use, and make, the transformer optimiser's graphs.
    pub optimize_graphs: GraphMode,
    pub workers: usize,
    pub queue_capacity: usize,
    /// Most UNet rows in one call of the continuous batcher.
    pub max_batch_rows: usize,
    /// Rows of job samples beside users' requests, and in a call of job samples alone (`None`: the defaults).
    pub job_spare_rows: Option<usize>,
    pub job_call_rows: Option<usize>,
    pub warmup: bool,
    pub warmup_images: Vec<usize>,
    pub warmup_sizes: Vec<usize>,
    pub limits: RequestLimits,
    pub reward: RewardConfig,
    /// The data directory, the database, image retention and durability.
    pub storage: StorageConfig,
    /// Most model versions loaded at once.
    pub max_loaded_models: usize,
    pub jobs: JobConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    /// The default deadline of a generation, and the most `X-Request-Timeout` may ask for.
    pub request_timeout: std::time::Duration,
}

/// Who may call what.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The bootstrap keys, from T2I_API_KEYS and --api-keys-file.
    pub keys: crate::http::auth::StaticKeys,
    /// Refuse to start without any key.
    pub require_auth: bool,
    /// Allow open mode on an address other than loopback.
    pub allow_open: bool,
    /// How often the stored keys are reloaded.
    pub key_refresh: std::time::Duration,
    /// Requests and work per minute, per key or client.
    pub rate_limits: crate::http::rate_limit::RateLimits,
    pub protect_metrics: bool,
    /// Most requests one key may have in flight (0: no limit).
    pub max_concurrent_per_key: usize,
}

/// The keys this server honours: the bootstrap ones and those stored in the database. With none at all (and
/// no --require-auth) the server runs in open mode, which it announces loudly, and which it refuses on an
/// address other than loopback unless --allow-open says so.
async fn key_ring(auth: &AuthConfig, host: &str, storage: &Storage) -> Result<crate::http::auth::KeyRing> {
    let stored = storage.list_keys(None).await?;
    if auth.require_auth && auth.keys.is_empty() && stored.is_empty() {
        return Err(Error::Config(
            "--require-auth is set but no API keys are configured: set T2I_API_KEYS or --api-keys-file, or \
             create one with `t2i-align keys create`"
                .into(),
        ));
    }
    let ring = crate::http::auth::KeyRing::new(auth.keys.clone(), &stored, auth.require_auth);
    if ring.is_open() {
        if !is_loopback(host) && !auth.allow_open {
            return Err(Error::Config(format!(
                "refusing to serve without API keys on --host {host}, which is not a loopback address: anyone \
                 who reaches it could run fine-tunes and activate models. Give keys (T2I_API_KEYS or \
                 --api-keys-file; or `t2i-align keys create` with this --data-dir/--database-url), or pass \
                 --allow-open (T2I_ALLOW_OPEN=true) to serve open on purpose"
            )));
        }
        tracing::warn!(
            host,
            "OPEN MODE: no API keys are configured (T2I_API_KEYS, --api-keys-file or stored keys), so anyone who \
             can reach this port can generate, fine-tune and activate models; use --require-auth to refuse to \
             start so"
        );
    } else {
        tracing::info!(
            bootstrap = ring.bootstrap_count(),
            stored = ring.stored_count(),
            "API keys loaded"
        );
    }
    Ok(ring)
}

/// Whether `host` (a --host value) is a loopback address: 127.0.0.0/8, ::1 or `localhost`.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Reloads the stored keys every `every`, so that a key created or revoked on any replica takes effect here,
/// and deletes finished rate windows; a failed reload keeps the keys known and says why once per failure
/// streak.
fn spawn_key_refresh(keys: Arc<crate::http::auth::KeyRing>, storage: Arc<Storage>, every: std::time::Duration) {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(every).await;
            // Rate windows older than the last two are done with.
            let before = crate::storage::now_millis() - 3 * crate::http::rate_limit::WINDOW_MS;
            if let Err(err) = storage.prune_rate_windows(before).await {
                tracing::debug!(error = %err, "cannot prune the rate windows");
            }
            match keys.refresh(&storage).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("the stored API keys reload again");
                }
                Ok(()) => {}
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(error = %err, "cannot reload the stored API keys; the last ones known stay in force");
                }
                Err(_) => {}
            }
        }
    });
}

/// On a store other replicas share, removes files left without a row every `ORPHAN_GRACE` (the start-up sweep
/// already ran; this process alone writes a local folder with SQLite, so it needs no more).
fn spawn_janitor(storage: Arc<Storage>) {
    let grace = storage.orphan_grace();
    if grace.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(grace);
        every.tick().await;
        loop {
            every.tick().await;
            match storage.sweep(grace).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(files = removed, "janitor: removed files no row points at"),
                Err(err) => tracing::warn!(error = %err, "janitor: the sweep failed; it runs again later"),
            }
        }
    });
}

pub async fn serve(config: ServeConfig) -> Result<()> {
    let runtime = Runtime::init(config.ort_library.as_deref(), config.device, config.sessions.clone())?;
    tracing::info!(library = %runtime.library().display(), device = %config.device, "ONNX Runtime loaded");
    let model = Arc::new(ModelFolder::open(&config.model)?);
    let storage = Arc::new(Storage::connect(&config.storage).await?);
    tracing::info!(
        data_dir = %config.storage.data_dir.display(),
        database = %config.storage.database.shown(),
        object_store = storage.blobs().shown(),
        image_retention = config.storage.image_retention,
        "storage open"
    );
    spawn_janitor(storage.clone());
    let registry = Arc::new(Registry::new(storage.clone(), &config.storage.data_dir)?);
    registry.remove_unregistered().await?;
    registry.register_folder(&model.name, &config.model).await?;
    let active = registry.startup_version(&model.name).await?;
    let generation = storage.rollout().await?.map_or(0, |rollout| rollout.generation);
    let keys = Arc::new(key_ring(&config.auth, &config.http.host, &storage).await?);
    spawn_key_refresh(keys.clone(), storage.clone(), config.auth.key_refresh);
    let metrics = Arc::new(Metrics::new());
    let state = web::Data::new(AppState {
        serving: Default::default(),
        metrics: metrics.clone(),
        model_name: active.id.clone(),
        device: config.device.to_string(),
        limits: config.limits.clone(),
        selection_limits: config.reward.selection,
        score_limits: config.reward.score,
        max_body_bytes: config.http.max_body_bytes,
        storage: storage.clone(),
        keys,
        protect_metrics: config.auth.protect_metrics,
        request_timeout: config.request_timeout,
        shutting_down: Default::default(),
        max_concurrent_per_key: config.auth.max_concurrent_per_key,
        rate_limits: config.auth.rate_limits,
        in_flight: Default::default(),
    });
    let (server, port) = build_server(state.clone(), &config.http).map_err(|err| {
        Error::Config(format!(
            "cannot listen on {}:{}: {err}",
            config.http.host, config.http.port
        ))
    })?;
    tracing::info!(model = %active.id, "listening on http://{}:{port}; loading the model", config.http.host);
    tracing::info!(
        steps = model.defaults.default_steps,
        guidance_scale = model.defaults.default_guidance_scale,
        "the --model folder's request defaults (t2i-align.json, or SD's 25 and 7.5)"
    );

    let signals = {
        let handle = server.handle();
        let state = state.clone();
        let grace = std::time::Duration::from_secs(config.http.shutdown_grace);
        tokio::spawn(async move {
            let signal = termination().await;
            state.shutting_down.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                signal,
                grace_seconds = grace.as_secs(),
                "shutting down: /ready answers 503, no new connections, in-flight requests finish"
            );
            if let Some(serving) = state.serving.get() {
                serving.jobs.shutdown(grace).await;
                let _ = state.storage.forget_replica(serving.jobs.worker()).await;
            }
            handle.stop(true).await;
        })
    };
    let load_error: Arc<Mutex<Option<Error>>> = Arc::default();
    let handle = server.handle();
    let settings = EngineSettings {
        workers: config.workers,
        queue_capacity: config.queue_capacity,
        batch_images: config.reward.batch_images,
        max_batch_rows: config.max_batch_rows,
        warmup: config.warmup,
        warmup_images: config.warmup_images.clone(),
        warmup_sizes: config.warmup_sizes.clone(),
        max_loaded: config.max_loaded_models,
        job_spare_rows: config.job_spare_rows,
        job_call_rows: config.job_call_rows,
    };
    let reward_settings = RewardSettings {
        max_batch: config.reward.max_batch,
        capacity: config.queue_capacity,
        warmup: config.warmup,
    };
    let graphs = GraphSettings {
        mode: config.optimize_graphs,
        optimizer: Some(crate::jobs::graphs::optimizer(
            config.jobs.python.clone(),
            config.jobs.trainer_dir.clone(),
            config.jobs.trainer_threads,
            crate::jobs::graphs::OPTIMIZER_DEADLINE,
        )),
    };
    let loader = {
        let load_error = load_error.clone();
        let reward_models = config.reward.models.clone();
        let device = config.device.to_string();
        let jobs = config.jobs.clone();
        let roles = config.roles.clone();
        let data_dir = config.storage.data_dir.clone();
        let runtime_handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let loader = Arc::new(Loader::new(runtime, settings, reward_settings, graphs, metrics.clone()));
            let loaded = loader
                .load_diffusion_blocking(active.id.clone(), &registry.folder(&active))
                .and_then(|model| Ok((model, loader.load_rewards_blocking(&reward_models)?)))
                .and_then(|(model, rewards)| {
                    let provider = loader.provider();
                    metrics.set_model_info(&model.version, provider.label(), &device);
                    let pool = Arc::new(ModelPool::new(loader, registry.clone(), device, model, generation));
                    let rewards = Arc::new(rewards);
                    let jobs = JobManager::new(storage, pool.clone(), rewards.clone(), metrics, jobs, &data_dir)?;
                    Ok(Serving {
                        models: pool,
                        provider,
                        rewards,
                        jobs,
                    })
                });
            match loaded {
                Ok(serving) => {
                    tracing::info!(
                        execution_provider = serving.provider.label(),
                        "ready: the model is loaded and warmed up"
                    );
                    let jobs = serving.jobs.clone();
                    let pool = serving.models.clone();
                    let _ = state.serving.set(serving);
                    let _guard = runtime_handle.enter();
                    rollout::spawn(jobs.storage().clone(), pool, jobs.worker().to_string(), roles);
                    if jobs.runs_jobs() {
                        jobs.start();
                    } else {
                        tracing::info!("this replica runs no jobs (--roles api): queued jobs wait for a worker");
                    }
                    true
                }
                Err(err) => {
                    if let Ok(mut slot) = load_error.lock() {
                        *slot = Some(err);
                    }
                    false
                }
            }
        })
    };
    let stopper = tokio::spawn(async move {
        if let Ok(false) = loader.await {
            handle.stop(false).await;
        }
    });
    server
        .await
        .map_err(|err| Error::Internal(format!("the HTTP server failed: {err}")))?;
    stopper.abort();
    signals.abort();
    let error = load_error.lock().ok().and_then(|mut slot| slot.take());
    match error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C); returns its name.
async fn termination() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the server gracefully");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
