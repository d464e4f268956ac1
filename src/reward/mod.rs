//! Reward models in the serving path: the manifest, preprocessing, the ONNX session, the batching scorer thread,
//! rejection sampling (best-of-n) and a generate request's plan (`plan`). `/score`, `/rerank` and `/generate`
//! reach a model through [`RewardSet`].

pub mod best_of;
pub mod manifest;
pub mod model;
pub mod plan;
pub mod preprocess;
pub mod scorer;

use std::sync::Arc;

use crate::error::{Error, Result};
pub use best_of::{Selection, SelectionInput, SelectionLimits};
pub use plan::{GeneratePlan, PlanInput};
pub use scorer::{Scored, Scorer};

/// The loaded reward models; the first is the default.
#[derive(Default)]
pub struct RewardSet {
    scorers: Vec<Arc<Scorer>>,
}

impl RewardSet {
    pub fn new(scorers: Vec<Arc<Scorer>>) -> Self {
        RewardSet { scorers }
    }

    pub fn is_empty(&self) -> bool {
        self.scorers.is_empty()
    }

    pub fn names(&self) -> Vec<&str> {
        self.scorers.iter().map(|scorer| scorer.name()).collect()
    }

    /// The model called `name`, or the default when `name` is absent. `field` names the request field in errors.
    pub fn get(&self, name: Option<&str>, field: &str) -> Result<&Arc<Scorer>> {
        let Some(default) = self.scorers.first() else {
            return Err(Error::validation(
                field,
                "this server has no reward model loaded (start it with --reward-model)",
            ));
        };
        match name {
            None => Ok(default),
            Some(name) => self.scorers.iter().find(|scorer| scorer.name() == name).ok_or_else(|| {
                Error::validation(
                    field,
                    format!(
                        "`{field}` is `{name}`, which is not loaded; loaded reward models: {}",
                        self.names().join(", ")
                    ),
                )
            }),
        }
    }
}
