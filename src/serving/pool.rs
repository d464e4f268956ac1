//! The loaded model versions: one engine (worker threads owning ONNX sessions) per version in use.
//!
//! Requests take an `Arc` of the version's engine for as long as they run, so a swap (`activate`) never drops
//! in-flight work: the old engine keeps its workers until its last request answers, then its threads exit.
//! Versions other than the active one load on first use and are evicted, least recently used first, beyond
//! `max_loaded`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::error::Result;
use crate::registry::Registry;
use crate::runtime::ExecutionProvider;
use crate::serving::engine::LoadedModel;
use crate::serving::loader::Loader;
use crate::storage::{RolloutState, VersionRecord};

struct Slot {
    model: Arc<LoadedModel>,
    last_used: Instant,
}

pub struct ModelPool {
    loader: Arc<Loader>,
    registry: Arc<Registry>,
    device: String,
    active: RwLock<Arc<LoadedModel>>,
    loaded: Mutex<HashMap<String, Slot>>,
    /// One load at a time: two requests for the same cold version load it once.
    loading: tokio::sync::Mutex<()>,
    /// The rollout generation of the active version (#25).
    generation: Mutex<i64>,
}

impl ModelPool {
    /// Starts with `active` loaded (already built by the caller, at start-up), the rollout's `generation`.
    pub fn new(
        loader: Arc<Loader>,
        registry: Arc<Registry>,
        device: String,
        active: LoadedModel,
        generation: i64,
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
            loader,
            registry,
            device,
            active: RwLock::new(active),
            loaded: Mutex::new(loaded),
            loading: tokio::sync::Mutex::new(()),
            generation: Mutex::new(generation),
        }
    }

    /// The loader every model of this server goes through (a job's retrained reward model too).
    pub fn loader(&self) -> &Arc<Loader> {
        &self.loader
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn provider(&self) -> ExecutionProvider {
        self.loader.provider()
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
    pub async fn get(&self, id: Option<&str>, field: &str, tenant: Option<&str>) -> Result<Arc<LoadedModel>> {
        let Some(id) = id else {
            return Ok(self.active());
        };
        // A caller limited to one tenant's versions has its right to this one checked first.
        if tenant.is_none() {
            if let Some(model) = self.cached(id) {
                return Ok(model);
            }
        }
        let version = self.registry.version_for(id, field, tenant).await?;
        if let Some(model) = self.cached(id) {
            return Ok(model);
        }
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
        let folder = self.registry.fetch(version).await?;
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
            while loaded.len() > self.loader.engine_settings().max_loaded.max(1) {
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
        self.loader.load_diffusion(name, folder).await
    }

    /// Makes `id` the active version on every replica: loads it here (checking its files), records it as the
    /// rollout's target, then swaps. Requests already running on the old version finish on it. The other
    /// replicas follow (`crate::serving::rollout`).
    pub async fn activate(&self, id: &str, field: &str) -> Result<Arc<LoadedModel>> {
        let version = self.registry.version(id, field).await?;
        let model = self.load_version(&version).await?;
        let generation = self.registry.storage().set_active_version(id).await?;
        self.swap(model.clone(), generation);
        Ok(model)
    }

    /// The rollout generation this replica serves (0 before any activation was recorded).
    pub fn generation(&self) -> i64 {
        self.generation.lock().map_or(0, |generation| *generation)
    }

    /// Serves the rollout's version, as another replica activated it: downloads and checks it if needed, loads
    /// and warms it up, then swaps. Returns whether it swapped: a generation no newer than the one served is
    /// left alone.
    pub async fn follow(&self, rollout: &RolloutState) -> Result<bool> {
        if rollout.generation <= self.generation() {
            return Ok(false);
        }
        let version = self.registry.version(&rollout.version, "version").await?;
        let model = self.load_version(&version).await?;
        Ok(self.swap(model, rollout.generation))
    }

    /// Makes `model` the active one at `generation`, unless a newer generation is served already (an older
    /// rollout that finished loading after a newer one).
    fn swap(&self, model: Arc<LoadedModel>, generation: i64) -> bool {
        let Ok(mut served) = self.generation.lock() else {
            return false;
        };
        if generation < *served {
            return false;
        }
        if let Ok(mut active) = self.active.write() {
            *active = model.clone();
        }
        *served = generation;
        self.loader
            .metrics()
            .set_model_info(&model.version, self.provider().label(), &self.device);
        tracing::info!(version = %model.version, generation, "active model version swapped");
        true
    }
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
