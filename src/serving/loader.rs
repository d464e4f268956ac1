//! The one loader of model folders: a diffusion version becomes an engine (`engine::build_engine`), a reward
//! model folder becomes a running scorer. Start-up, the model pool, the CLI and fine-tune jobs all load through
//! it, so every model is loaded with the configured batch sizes and warmed up the same way.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::reward::model::RewardModel;
use crate::reward::{RewardSet, Scorer};
use crate::runtime::{ExecutionProvider, Runtime};
use crate::serving::engine::{build_engine, EngineSettings, LoadedModel};
use crate::serving::graphs::{self, GraphSettings};

/// How reward models are loaded and run.
#[derive(Debug, Clone)]
pub struct RewardSettings {
    /// Most images in one reward-model ONNX call.
    pub max_batch: usize,
    /// Most scoring requests queued at one scorer.
    pub capacity: usize,
    /// Score one blank image before the scorer takes requests.
    pub warmup: bool,
}

/// Loads diffusion versions and reward models into the one ONNX Runtime environment.
pub struct Loader {
    runtime: Mutex<Runtime>,
    engine: EngineSettings,
    reward: RewardSettings,
    graphs: GraphSettings,
    metrics: Arc<Metrics>,
}

impl Loader {
    pub fn new(
        runtime: Runtime,
        engine: EngineSettings,
        reward: RewardSettings,
        graphs: GraphSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Loader {
            runtime: Mutex::new(runtime),
            engine,
            reward,
            graphs,
            metrics,
        }
    }

    pub fn engine_settings(&self) -> &EngineSettings {
        &self.engine
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn runtime(&self) -> Result<MutexGuard<'_, Runtime>> {
        self.runtime
            .lock()
            .map_err(|_| Error::Internal("the ONNX Runtime lock is poisoned".into()))
    }

    pub fn provider(&self) -> ExecutionProvider {
        self.runtime()
            .map_or(ExecutionProvider::Cpu, |runtime| runtime.provider())
    }

    /// Builds the engine of the diffusion model in `folder`, served as `version`. Blocks: call it off the
    /// async runtime.
    pub fn load_diffusion_blocking(&self, version: String, folder: &Path) -> Result<LoadedModel> {
        let started = Instant::now();
        let model = Arc::new(graphs::open_model(folder, &self.graphs)?);
        let loaded = build_engine(
            &mut *self.runtime()?,
            version,
            model,
            &self.engine,
            self.metrics.clone(),
        )?;
        tracing::info!(
            version = %loaded.version,
            ms = started.elapsed().as_millis() as u64,
            "model version loaded"
        );
        Ok(loaded)
    }

    /// `load_diffusion_blocking` on a blocking thread.
    pub async fn load_diffusion(self: &Arc<Self>, version: String, folder: PathBuf) -> Result<LoadedModel> {
        let loader = self.clone();
        tokio::task::spawn_blocking(move || loader.load_diffusion_blocking(version, &folder))
            .await
            .map_err(|err| Error::Internal(format!("the model loader stopped: {err}")))?
    }

    /// Loads the reward model in `folder`, warms it up when configured, and starts its scorer thread.
    pub fn load_reward_blocking(&self, folder: &Path) -> Result<Scorer> {
        let model = RewardModel::load(&mut *self.runtime()?, folder)?;
        start_scorer(model, &self.reward, &self.metrics)
    }

    /// `load_reward_blocking` on a blocking thread.
    pub async fn load_reward(self: &Arc<Self>, folder: PathBuf) -> Result<Scorer> {
        let loader = self.clone();
        tokio::task::spawn_blocking(move || loader.load_reward_blocking(&folder))
            .await
            .map_err(|err| Error::Internal(format!("the reward model loader stopped: {err}")))?
    }

    /// Loads each reward model folder; the first is the default. Names must differ.
    pub fn load_rewards_blocking(&self, folders: &[PathBuf]) -> Result<RewardSet> {
        load_rewards(&mut *self.runtime()?, folders, &self.reward, &self.metrics)
    }
}

/// Loads each reward model folder into `runtime` and starts its scorer; the first is the default. For callers
/// that own a runtime of their own (the CLI); the server goes through `Loader`.
pub fn load_rewards(
    runtime: &mut Runtime,
    folders: &[PathBuf],
    settings: &RewardSettings,
    metrics: &Arc<Metrics>,
) -> Result<RewardSet> {
    let mut scorers: Vec<Arc<Scorer>> = Vec::new();
    for folder in folders {
        let model = RewardModel::load(runtime, folder)?;
        if scorers.iter().any(|scorer| scorer.name() == model.name()) {
            return Err(Error::Config(format!(
                "two reward models are called `{}` (their manifest's `name`); names must differ",
                model.name()
            )));
        }
        scorers.push(Arc::new(start_scorer(model, settings, metrics)?));
    }
    Ok(RewardSet::new(scorers))
}

/// Warms `model` up with one blank image when asked, then starts its scorer thread. Warmed before the thread
/// starts, so the blank image never reaches the score metrics.
fn start_scorer(mut model: RewardModel, settings: &RewardSettings, metrics: &Arc<Metrics>) -> Result<Scorer> {
    tracing::info!("{}", model.describe());
    if settings.warmup {
        let started = Instant::now();
        let preprocessor = model.preprocessor().clone();
        let (height, width) = preprocessor.output_size();
        let blank = image::RgbImage::new(width as u32, height as u32);
        model.score(&preprocessor.pixel_values(&blank), &["warm-up"])?;
        tracing::info!(
            model = model.name(),
            ms = started.elapsed().as_millis() as u64,
            "reward model warmed up"
        );
    }
    Scorer::start(model, settings.max_batch, settings.capacity, metrics.clone())
}
