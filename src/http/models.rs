//! Model versions over HTTP: `GET /models` lists every version with its lineage and evaluation, and
//! `POST /models/{id}/activate` swaps the active one (admin only).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::Result;
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
pub async fn list_models(state: web::Data<AppState>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(model_list(&state).await?))
}

async fn model_list(state: &AppState) -> Result<ModelList> {
    let serving = state.serving()?;
    let mut versions = state.storage.versions(VersionKind::Diffusion).await?;
    versions.extend(state.storage.versions(VersionKind::Reward).await?);
    let active = serving.models.active().version.clone();
    let data = versions
        .iter()
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
pub async fn activate_model(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse> {
    state.serving()?.models.activate(&path, "id").await?;
    Ok(HttpResponse::Ok().json(model_list(&state).await?))
}
