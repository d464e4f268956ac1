//! Model versions over HTTP: `GET /models` lists every version with its lineage and evaluation,
//! `POST /models/{id}/activate` makes one active on every replica (admin only), and `GET /rollout` shows which
//! version each replica serves.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::Result;
use crate::http::audit::record;
use crate::http::auth::Caller;
use crate::http::endpoint::{self, Access, Endpoint, Method};
use crate::http::error::ErrorBody;
use crate::http::schemas::ModelVersion;
use crate::http::AppState;
use crate::registry::lineage;
use crate::storage::VersionKind;

/// The routes this module serves, each with who may call it.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint::new(Method::Get, "/models", Access::Inference, |route| route.to(list_models)),
    Endpoint::new(Method::Post, "/models/{id}/activate", Access::Admin, |route| {
        route.to(activate_model)
    }),
    Endpoint::new(Method::Get, "/rollout", Access::Inference, |route| route.to(rollout)),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    endpoint::configure(cfg, ENDPOINTS);
}

/// A model version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "shapes-sd-ft-5d41402a", "object": "model", "kind": "diffusion", "active": true, "loaded": true,
    "source": "fine_tune", "parent": "shapes-sd", "job_id": "ft_5d41402abc4b2a76b9719d911017c592"}))]
pub struct ModelOut {
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// `diffusion` (served by /generate) or `reward` (a reward model a job retrained; serve it with
    /// `--reward-model <data-dir>/<files>`).
    pub kind: String,
    pub created_at: i64,
    /// `folder` (served from --model) or `fine_tune` (registered by a job).
    pub source: String,
    /// The version it was fine-tuned from.
    pub parent: Option<String>,
    /// Every ancestor, nearest first.
    pub lineage: Vec<String>,
    pub job_id: Option<String>,
    pub active: bool,
    /// Whether its sessions are loaded now.
    pub loaded: bool,
    /// The job's evaluation of it against its parent, and the gate's verdict.
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<Value>,
    /// How many files have a recorded SHA-256, checked before it loads.
    pub checksummed_files: usize,
    /// Where its files are: the `--model` folder, or a registered version's prefix in the object store
    /// (`models/<id>-<8 hex>`, a new one per registration; in the default local store, a folder of the data
    /// directory).
    pub files: String,
    /// The tenant whose job made it, who alone (with admin keys) sees and uses it; null for a `--model`
    /// folder, which every tenant may use.
    pub tenant: Option<String>,
}

/// Every model version (diffusion, then reward), oldest first, and the active diffusion version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub data: Vec<ModelOut>,
    pub active: String,
}

/// Every model version with its lineage and evaluation, and which one is active.
#[utoipa::path(
    get,
    path = "/models",
    tag = "models",
    responses(
        (status = 200, description = "The versions, oldest first", body = ModelList),
        (status = 503, description = "The models are still loading", body = ErrorBody),
    )
)]
pub async fn list_models(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(model_list(&state, &caller).await?))
}

/// Every version `caller` may see: its tenant's and the shared ones (an admin: all).
async fn model_list(state: &AppState, caller: &Caller) -> Result<ModelList> {
    let serving = state.serving()?;
    let mut versions = state.storage.versions(VersionKind::Diffusion).await?;
    versions.extend(state.storage.versions(VersionKind::Reward).await?);
    let active = serving.models.active().version.clone();
    let data = versions
        .iter()
        .filter(|version| version.visible_to(caller.visible_tenant()))
        .map(|version| {
            let lineage = lineage(&versions, version);
            ModelOut {
                id: version.id.clone(),
                object: "model".into(),
                kind: version.kind.clone(),
                created_at: version.created_at,
                source: version.source.clone(),
                parent: version.parent.clone(),
                lineage,
                job_id: version.job_id.clone(),
                active: version.id == active && version.kind == "diffusion",
                loaded: serving.models.is_loaded(&version.id),
                metrics: version.metrics.clone(),
                checksummed_files: version
                    .checksums
                    .as_ref()
                    .and_then(Value::as_object)
                    .map_or(0, |sums| sums.len()),
                files: version.path.clone(),
                tenant: version.tenant.clone(),
            }
        })
        .collect();
    Ok(ModelList { data, active })
}

/// Make a version active. It is loaded (its files checked against their SHA-256) before the swap; requests
/// already running on the old version finish on it.
#[utoipa::path(
    post,
    path = "/models/{id}/activate",
    tag = "models",
    params(("id" = ModelVersion, Path, description = "The version's id")),
    responses(
        (status = 200, description = "The versions after the swap", body = ModelList),
        (status = 422, description = "No such version", body = ErrorBody),
        (status = 500, description = "The version's files are damaged or do not load; the active one keeps serving", body = ErrorBody),
    )
)]
pub async fn activate_model(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    state.serving()?.models.activate(&path, "id").await?;
    record(&state, &caller, "model.activate", &path, None).await;
    Ok(HttpResponse::Ok().json(model_list(&state, &caller).await?))
}

/// What one replica serves.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplicaOut {
    /// Host, process id and a random suffix; fine-tune jobs name their worker the same way.
    pub id: String,
    /// Its `--roles`: `api`, `worker`, or both.
    pub roles: String,
    /// The version it serves.
    pub version: String,
    /// The rollout generation it serves.
    pub generation: i64,
    /// Whether it serves the rollout's generation.
    pub current: bool,
    /// Why it cannot serve the rollout's version, while it cannot (it keeps serving `version`).
    pub error: Option<String>,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Its last report (every 2 s); replicas silent for 30 s are left out.
    pub seen_at: i64,
}

/// The active version's rollout: the version every replica should serve, and what each one serves.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"version": "shapes-sd-ft-5d41402a", "generation": 3, "updated_at": 1764900000000_i64,
    "converged": true, "replicas": [{"id": "node-a:4121:9f2c1e", "roles": "api,worker",
    "version": "shapes-sd-ft-5d41402a", "generation": 3, "current": true, "error": null,
    "started_at": 1764899000000_i64, "seen_at": 1764900001000_i64}]}))]
pub struct RolloutOut {
    #[schema(value_type = ModelVersion)]
    pub version: String,
    /// Raised each time the active version changes.
    pub generation: i64,
    /// When it was activated (Unix milliseconds).
    pub updated_at: i64,
    /// Whether every replica listed serves it.
    pub converged: bool,
    /// Every replica that reported in the last 30 s, oldest first.
    pub replicas: Vec<ReplicaOut>,
}

/// Which version every replica should serve, and which one each serves. A version activated on any replica
/// is downloaded, checked, loaded and warmed up by every other one, which then swaps (within a few seconds).
#[utoipa::path(
    get,
    path = "/rollout",
    tag = "models",
    responses(
        (status = 200, description = "The rollout and every replica's state", body = RolloutOut),
        (status = 503, description = "The models are still loading, or the database is unreachable", body = ErrorBody),
    )
)]
pub async fn rollout(state: web::Data<AppState>) -> Result<HttpResponse> {
    let serving = state.serving()?;
    let since = crate::storage::now_millis() - crate::serving::rollout::REPLICA_TIMEOUT.as_millis() as i64;
    let replicas = state.storage.replicas(since).await?;
    let (version, generation, updated_at) = match state.storage.rollout().await? {
        Some(rollout) => (rollout.version, rollout.generation, rollout.updated_at),
        None => (serving.models.active().version.clone(), 0, 0),
    };
    let replicas: Vec<ReplicaOut> = replicas
        .into_iter()
        .map(|replica| ReplicaOut {
            current: replica.generation == generation && replica.version == version,
            id: replica.id,
            roles: replica.roles,
            version: replica.version,
            generation: replica.generation,
            error: replica.error,
            started_at: replica.started_at,
            seen_at: replica.seen_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(RolloutOut {
        converged: replicas.iter().all(|replica| replica.current),
        version,
        generation,
        updated_at,
        replicas,
    }))
}
