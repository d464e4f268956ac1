//! Start-up and shutdown of `t2i-align serve`: load the library and the model folder (failing fast with a
//! sentence), bind HTTP at once so `/health` answers, then load and warm the sessions before `/ready` says 200.

use std::sync::{Arc, Mutex};

use actix_web::web;

use crate::error::{Error, Result};
use crate::http::{build_server, AppState, HttpConfig, ScoreLimits, Serving};
use crate::jobs::{JobConfig, JobManager};
use crate::metrics::Metrics;
use crate::pipeline::{ModelFolder, RequestLimits};
use crate::registry::Registry;
use crate::reward::SelectionLimits;
use crate::runtime::{Device, Runtime, SessionSettings};
use crate::serving::{EngineSettings, Loader, ModelPool, RewardSettings};
use crate::storage::Storage;

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

pub struct ServeConfig {
    pub model: std::path::PathBuf,
    pub ort_library: Option<std::path::PathBuf>,
    pub device: Device,
    pub sessions: SessionSettings,
    pub workers: usize,
    pub queue_capacity: usize,
    /// Most UNet rows in one call of the continuous batcher.
    pub max_batch_rows: usize,
    pub warmup: bool,
    pub warmup_images: Vec<usize>,
    pub warmup_sizes: Vec<usize>,
    pub limits: RequestLimits,
    pub reward: RewardConfig,
    /// The data directory (SQLite database and the files it points at).
    pub data_dir: std::path::PathBuf,
    /// Most generated images kept for `image_ids` (0: none).
    pub image_retention: u64,
    /// Most model versions loaded at once.
    pub max_loaded_models: usize,
    pub jobs: JobConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    /// When a database commit reaches the disk.
    pub durability: crate::storage::Durability,
    /// The default deadline of a generation, and the most `X-Request-Timeout` may ask for.
    pub request_timeout: std::time::Duration,
}

/// Who may call what.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub keys: crate::http::auth::ApiKeys,
    pub protect_metrics: bool,
    /// Most requests one key may have in flight (0: no limit).
    pub max_concurrent_per_key: usize,
}

pub async fn serve(config: ServeConfig) -> Result<()> {
    let runtime = Runtime::init(config.ort_library.as_deref(), config.device, config.sessions.clone())?;
    tracing::info!(library = %runtime.library().display(), device = %config.device, "ONNX Runtime loaded");
    let model = Arc::new(ModelFolder::open(&config.model)?);
    let storage = Arc::new(Storage::open_with(&config.data_dir, config.image_retention, config.durability).await?);
    tracing::info!(data_dir = %config.data_dir.display(), image_retention = config.image_retention, "storage open");
    for job in storage.fail_interrupted_jobs().await? {
        tracing::warn!(job = %job, "marked failed: the server stopped while it was running");
    }
    let registry = Arc::new(Registry::new(storage.clone(), &config.data_dir)?);
    registry.remove_unregistered().await?;
    registry.register_folder(&model.name, &config.model).await?;
    let active = registry.startup_version(&model.name).await?;
    if config.auth.keys.is_open() {
        tracing::warn!(
            "OPEN MODE: no API keys are configured (T2I_API_KEYS or --api-keys-file), so anyone who can reach \
             this port can generate, fine-tune and activate models; use --require-auth to refuse to start so"
        );
    } else {
        tracing::info!(keys = config.auth.keys.len(), "API keys loaded");
    }
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
        api_keys: config.auth.keys.clone(),
        protect_metrics: config.auth.protect_metrics,
        request_timeout: config.request_timeout,
        shutting_down: Default::default(),
        max_concurrent_per_key: config.auth.max_concurrent_per_key,
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
    };
    let reward_settings = RewardSettings {
        max_batch: config.reward.max_batch,
        capacity: config.queue_capacity,
        warmup: config.warmup,
    };
    let loader = {
        let load_error = load_error.clone();
        let reward_models = config.reward.models.clone();
        let device = config.device.to_string();
        let jobs = config.jobs.clone();
        let data_dir = config.data_dir.clone();
        let runtime_handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let loader = Arc::new(Loader::new(runtime, settings, reward_settings, metrics.clone()));
            let loaded = loader
                .load_diffusion_blocking(active.id.clone(), &registry.folder(&active))
                .and_then(|model| Ok((model, loader.load_rewards_blocking(&reward_models)?)))
                .and_then(|(model, rewards)| {
                    let provider = loader.provider();
                    metrics.set_model_info(&model.version, provider.label(), &device);
                    let pool = Arc::new(ModelPool::new(loader, registry.clone(), device, model));
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
                    let _ = state.serving.set(serving);
                    let _guard = runtime_handle.enter();
                    jobs.start();
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
