//! The loaded model versions: one engine (worker threads owning ONNX sessions) per version in use.
//!
//! Requests take an `Arc` of the version's engine for as long as they run, so a swap (`activate`) never drops
//! in-flight work: the old engine keeps its workers until its last request answers, then its threads exit.
//! Versions other than the active one load on first use and are evicted, least recently used first, beyond
//! `max_loaded`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::batching::{BatchSettings, Engine};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::pipeline::{GenerateParams, ModelFolder, ModelLimits, Pipeline};
use crate::registry::Registry;
use crate::runtime::{ExecutionProvider, Runtime};
use crate::storage::VersionRecord;

/// How each loaded version's engine is built.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub workers: usize,
    pub queue_capacity: usize,
    pub batch_images: usize,
    /// Most UNet rows in one call of the continuous batcher.
    pub max_batch_rows: usize,
    pub warmup: bool,
    /// Image counts the warm-up generates at each warm-up size (each image is two UNet rows with guidance).
    pub warmup_images: Vec<usize>,
    /// Image sizes in pixels the warm-up covers; empty: the model's default size.
    pub warmup_sizes: Vec<usize>,
    /// Most versions kept loaded at once, the active one included.
    pub max_loaded: usize,
}

/// A version with its engine.
pub struct LoadedModel {
    pub version: String,
    pub engine: Engine,
    pub limits: ModelLimits,
    pub folder: Arc<ModelFolder>,
}

struct Slot {
    model: Arc<LoadedModel>,
    last_used: Instant,
}

pub struct ModelPool {
    runtime: Arc<Mutex<Runtime>>,
    registry: Arc<Registry>,
    settings: EngineSettings,
    metrics: Arc<Metrics>,
    device: String,
    active: RwLock<Arc<LoadedModel>>,
    loaded: Mutex<HashMap<String, Slot>>,
    /// One load at a time: two requests for the same cold version load it once.
    loading: tokio::sync::Mutex<()>,
}

impl ModelPool {
    /// Starts with `active` loaded (already built by the caller, at start-up).
    pub fn new(
        runtime: Arc<Mutex<Runtime>>,
        registry: Arc<Registry>,
        settings: EngineSettings,
        metrics: Arc<Metrics>,
        device: String,
        active: LoadedModel,
    ) -> Self {
        let active = Arc::new(active);
        let mut loaded = HashMap::new();
        loaded.insert(
            active.version.clone(),
            Slot {
                model: active.clone(),
                last_used: Instant::now(),
            },
        );
        ModelPool {
            runtime,
            registry,
            settings,
            metrics,
            device,
            active: RwLock::new(active),
            loaded: Mutex::new(loaded),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    pub fn runtime(&self) -> &Arc<Mutex<Runtime>> {
        &self.runtime
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn provider(&self) -> ExecutionProvider {
        self.runtime
            .lock()
            .map_or(ExecutionProvider::Cpu, |runtime| runtime.provider())
    }

    pub fn active(&self) -> Arc<LoadedModel> {
        match self.active.read() {
            Ok(active) => active.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn is_loaded(&self, id: &str) -> bool {
        self.loaded.lock().is_ok_and(|loaded| loaded.contains_key(id))
    }

    /// The engines' queued requests, over every loaded version.
    pub fn queued(&self) -> usize {
        self.loaded
            .lock()
            .map(|loaded| loaded.values().map(|slot| slot.model.engine.queued()).sum())
            .unwrap_or(0)
    }

    /// The version `id` (the active one when `None`), loading it if needed. `field` names the request field.
    pub async fn get(&self, id: Option<&str>, field: &str) -> Result<Arc<LoadedModel>> {
        let Some(id) = id else {
            return Ok(self.active());
        };
        if let Some(model) = self.cached(id) {
            return Ok(model);
        }
        let version = self.registry.version(id, field).await?;
        self.load_version(&version).await
    }

    fn cached(&self, id: &str) -> Option<Arc<LoadedModel>> {
        let mut loaded = self.loaded.lock().ok()?;
        let slot = loaded.get_mut(id)?;
        slot.last_used = Instant::now();
        Some(slot.model.clone())
    }

    async fn load_version(&self, version: &VersionRecord) -> Result<Arc<LoadedModel>> {
        let _loading = self.loading.lock().await;
        if let Some(model) = self.cached(&version.id) {
            return Ok(model);
        }
        self.registry.verify(version).await?;
        let folder = self.registry.folder(version);
        let model = Arc::new(self.load_folder(version.id.clone(), folder).await?);
        let mut evicted = Vec::new();
        if let Ok(mut loaded) = self.loaded.lock() {
            loaded.insert(
                version.id.clone(),
                Slot {
                    model: model.clone(),
                    last_used: Instant::now(),
                },
            );
            let active = self.active().version.clone();
            while loaded.len() > self.settings.max_loaded.max(1) {
                let oldest = loaded
                    .iter()
                    .filter(|(id, _)| **id != active && **id != version.id)
                    .min_by_key(|(_, slot)| slot.last_used)
                    .map(|(id, _)| id.clone());
                match oldest.and_then(|id| loaded.remove(&id)) {
                    Some(slot) => evicted.push(slot.model),
                    None => break,
                }
            }
        }
        for model in evicted {
            tracing::info!(version = %model.version, "unloaded: more than --max-loaded-models versions");
            drop_off_thread(model);
        }
        Ok(model)
    }

    /// Loads a folder that is not (yet) a registered version, e.g. a fine-tune's candidate being checked.
    pub async fn load_folder(&self, name: String, folder: std::path::PathBuf) -> Result<LoadedModel> {
        let runtime = self.runtime.clone();
        let settings = self.settings.clone();
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let model = Arc::new(ModelFolder::open(&folder)?);
            let mut runtime = runtime
                .lock()
                .map_err(|_| Error::Internal("the ONNX Runtime lock is poisoned".into()))?;
            let loaded = build_engine(&mut runtime, name, model, &settings, metrics)?;
            tracing::info!(
                version = %loaded.version,
                ms = started.elapsed().as_millis() as u64,
                "model version loaded"
            );
            Ok(loaded)
        })
        .await
        .map_err(|err| Error::Internal(format!("the model loader stopped: {err}")))?
    }

    /// Makes `id` the active version: loads it (checking its files), records it, then swaps. Requests already
    /// running on the old version finish on it.
    pub async fn activate(&self, id: &str, field: &str) -> Result<Arc<LoadedModel>> {
        let version = self.registry.version(id, field).await?;
        let model = self.load_version(&version).await?;
        self.registry.storage().set_active_version(id).await?;
        if let Ok(mut active) = self.active.write() {
            *active = model.clone();
        }
        self.metrics
            .set_model_info(&model.version, self.provider().label(), &self.device);
        tracing::info!(version = %model.version, "active model version swapped");
        Ok(model)
    }
}

/// One short generation for each warm-up size and image count, so that ONNX Runtime has planned those shapes
/// before the first request. A size the model cannot make is a configuration error.
fn warm_up(pipeline: &mut Pipeline, worker: usize, settings: &EngineSettings) -> Result<()> {
    let base = crate::server::warmup_params(pipeline);
    let limits = pipeline.limits();
    let sizes = if settings.warmup_sizes.is_empty() {
        vec![limits.default_size]
    } else {
        settings.warmup_sizes.clone()
    };
    let images = if settings.warmup_images.is_empty() {
        vec![1]
    } else {
        settings.warmup_images.clone()
    };
    for &size in &sizes {
        if size == 0 || size % limits.size_multiple != 0 {
            return Err(Error::Config(format!(
                "--warmup-sizes: {size} is not a multiple of this model's {} pixels",
                limits.size_multiple
            )));
        }
        for &count in &images {
            let started = Instant::now();
            let params = GenerateParams {
                num_images: count.max(1),
                width: size,
                height: size,
                ..base.clone()
            };
            pipeline.generate(&params, &mut crate::pipeline::generate::NoProgress)?;
            tracing::info!(
                worker,
                size,
                images = count,
                ms = started.elapsed().as_millis() as u64,
                "warmed up"
            );
        }
    }
    Ok(())
}

/// Builds the engine of one version: `settings.workers` pipelines, each warmed up when asked.
pub fn build_engine(
    runtime: &mut Runtime,
    version: String,
    folder: Arc<ModelFolder>,
    settings: &EngineSettings,
    metrics: Arc<Metrics>,
) -> Result<LoadedModel> {
    let mut pipelines = Vec::with_capacity(settings.workers.max(1));
    for index in 0..settings.workers.max(1) {
        let mut pipeline = Pipeline::load(runtime, folder.clone())?;
        if index == 0 {
            for line in pipeline.describe_contract() {
                tracing::debug!("{line}");
            }
            if pipeline.per_row_timesteps() {
                tracing::info!(
                    version = %version,
                    max_batch_rows = settings.max_batch_rows,
                    "continuous batching: the UNet takes a timestep per row, so requests at any step share calls"
                );
            } else {
                tracing::warn!(
                    version = %version,
                    max_batch_rows = settings.max_batch_rows,
                    "continuous batching: the UNet takes one scalar timestep per call, so only requests at the \
                     same timestep share a call; export it with a [batch] timestep to batch requests at any step"
                );
            }
        }
        if settings.warmup {
            warm_up(&mut pipeline, index, settings)?;
        }
        pipelines.push(pipeline);
    }
    let limits = pipelines[0].limits();
    let engine = Engine::start(
        pipelines,
        settings.queue_capacity,
        BatchSettings {
            max_rows: settings.max_batch_rows,
            batch_images: settings.batch_images,
        },
        metrics,
    )?;
    Ok(LoadedModel {
        version,
        engine,
        limits,
        folder,
    })
}

/// Drops a model on a blocking thread: its engine joins worker threads that may be finishing a request.
fn drop_off_thread(model: Arc<LoadedModel>) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn_blocking(move || drop(model));
        }
        Err(_) => drop(model),
    }
}
