//! The live models: the pool of loaded diffusion versions (`pool`), how one version's engine is built and
//! warmed up (`engine`), the one loader of diffusion and reward model folders (`loader`), and the loop that
//! follows the active version's rollout across replicas (`rollout`).
//!
//! Sits above `batching`, `pipeline`, `reward`, `runtime` and `registry` (version records), and below `jobs`
//! and `http`, which take models from here.

pub mod engine;
pub mod graphs;
pub mod loader;
pub mod pool;
pub mod rollout;

pub use engine::{build_engine, warmup_params, EngineSettings, LoadedModel};
pub use loader::{load_rewards, Loader, RewardSettings};
pub use pool::ModelPool;
