//! Fine-tune jobs and model versions over HTTP: `/fine-tunes` (shaped like OpenAI's fine-tuning jobs) and
//! `/models`. The job runner and the registry do the work; these handlers validate, call them and shape answers.

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::http::error::{parse_json, ErrorBody};
use crate::http::routes::{page_limit, query_params, read_body};
use crate::http::AppState;
use crate::jobs::FineTuneRequest;
use crate::registry::lineage;
use crate::storage::{JobEvent, JobRecord, JobStatus, VersionKind};

/// A fine-tune job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "ft_5d41402abc4b2a76b9719d911017c592", "object": "fine_tune",
    "status": "running", "stage": "train",
    "stages": ["prompts", "sample", "label", "reward", "train", "evaluate", "register"], "progress": 0.42, "base_model": "shapes-sd",
    "result_model": null, "error": null}))]
pub struct FineTuneOut {
    pub id: String,
    /// Always `fine_tune`.
    pub object: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// The running (or last) stage, one of `stages`.
    pub stage: Option<String>,
    /// Every stage a job runs through, in order: prompts, sample, label, reward, train, evaluate, register.
    pub stages: Vec<String>,
    /// 0 to 1 over the whole job.
    pub progress: f64,
    pub base_model: String,
    /// The request with every default filled in.
    #[schema(value_type = Object)]
    pub spec: Value,
    /// Figures so far: the samples, the trainer's losses, the evaluation of base and candidate, the gate.
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<Value>,
    /// The version it registered.
    pub result_model: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl From<JobRecord> for FineTuneOut {
    fn from(job: JobRecord) -> Self {
        FineTuneOut {
            id: job.id,
            object: "fine_tune".into(),
            created_at: job.created_at,
            updated_at: job.updated_at,
            status: job.status.name().into(),
            stage: job.stage,
            stages: crate::jobs::stage_names(),
            progress: job.progress,
            base_model: job.base_model,
            spec: job.spec,
            metrics: job.metrics,
            result_model: job.result_model,
            error: job.error,
            started_at: job.started_at,
            finished_at: job.finished_at,
        }
    }
}

/// A page of jobs, newest first. Pass `last_id` as `after` for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FineTunePage {
    pub data: Vec<FineTuneOut>,
    pub has_more: bool,
    pub last_id: Option<String>,
}

/// One thing that happened to a job: a status or stage change, trainer progress, a metric, a warning.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FineTuneEventOut {
    pub id: String,
    pub created_at: i64,
    /// `info`, `warning` or `error`.
    pub level: String,
    /// `status`, `stage`, `progress`, `trainer`, `trainer_log`, `metrics`, `evaluate`.
    pub kind: String,
    pub message: String,
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

impl From<JobEvent> for FineTuneEventOut {
    fn from(event: JobEvent) -> Self {
        FineTuneEventOut {
            id: event.id,
            created_at: event.created_at,
            level: event.level,
            kind: event.kind,
            message: event.message,
            data: event.data,
        }
    }
}

/// A page of a job's events, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FineTuneEventPage {
    pub data: Vec<FineTuneEventOut>,
    pub has_more: bool,
    pub last_id: Option<String>,
}

/// Paging for `GET /fine-tunes` and `GET /fine-tunes/{id}/events`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// The last id of the previous page.
    pub after: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// `GET /fine-tunes` only: list jobs with this status.
    pub status: Option<String>,
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
    /// `--reward-model <data-dir>/models/<id>`).
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
}

/// Every model version (diffusion, then reward), oldest first, and the active diffusion version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub data: Vec<ModelOut>,
    pub active: String,
}

fn serving(state: &AppState) -> Result<&crate::http::Serving> {
    state.serving()
}

/// Create a fine-tune job. It is queued and runs when the jobs before it are done.
#[utoipa::path(
    post,
    path = "/fine-tunes",
    tag = "fine-tuning",
    request_body = FineTuneRequest,
    responses(
        (status = 201, description = "The job, queued", body = FineTuneOut),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 413, description = "The body is larger than `--max-body-bytes`", body = ErrorBody),
        (status = 422, description = "A field breaks a rule; `param` names it", body = ErrorBody),
        (status = 503, description = "The models are still loading, or this server cannot run jobs (its trainer's Python is missing)", body = ErrorBody),
    )
)]
#[post("/fine-tunes")]
pub async fn create_fine_tune(state: web::Data<AppState>, payload: web::Payload) -> Result<HttpResponse> {
    let body = read_body(payload, state.max_body_bytes).await?;
    // A value JSON cannot hold (NaN, Infinity) is a bad field here too: a 422 that names it.
    let request: FineTuneRequest = parse_json(&body).map_err(|err| match err {
        Error::InvalidRequest {
            message,
            param: Some(param),
        } => Error::Validation {
            message,
            param: Some(param),
        },
        other => other,
    })?;
    let job = serving(&state)?.jobs.create(request).await?;
    Ok(HttpResponse::Created().json(FineTuneOut::from(job)))
}

/// List fine-tune jobs, newest first.
#[utoipa::path(
    get,
    path = "/fine-tunes",
    tag = "fine-tuning",
    params(PageParams),
    responses(
        (status = 200, description = "A page of jobs", body = FineTunePage),
        (status = 422, description = "`limit`, `status` or `after` breaks a rule", body = ErrorBody),
    )
)]
#[get("/fine-tunes")]
pub async fn list_fine_tunes(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse> {
    let params: PageParams = query_params(&request)?;
    let limit = page_limit(params.limit)?;
    let status = params
        .status
        .as_deref()
        .map(|name| {
            JobStatus::from_name(name).ok_or_else(|| {
                Error::validation(
                    "status",
                    format!("`status` must be one of {}. Given: `{name}`", JobStatus::NAMES),
                )
            })
        })
        .transpose()?;
    let (jobs, has_more) = state.storage.list_jobs(status, params.after.as_deref(), limit).await?;
    let last_id = jobs.last().map(|job| job.id.clone());
    Ok(HttpResponse::Ok().json(FineTunePage {
        data: jobs.into_iter().map(FineTuneOut::from).collect(),
        has_more,
        last_id,
    }))
}

async fn job_or_404(state: &AppState, id: &str) -> Result<JobRecord> {
    state
        .storage
        .job(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no fine-tune job `{id}`")))
}

/// One job: status, stage, progress, metrics, result model and error.
#[utoipa::path(
    get,
    path = "/fine-tunes/{id}",
    tag = "fine-tuning",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = FineTuneOut),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
#[get("/fine-tunes/{id}")]
pub async fn get_fine_tune(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse> {
    let job = job_or_404(&state, &path).await?;
    Ok(HttpResponse::Ok().json(FineTuneOut::from(job)))
}

/// Cancel a queued or running job. A running job's trainer is stopped (its whole process group).
#[utoipa::path(
    post,
    path = "/fine-tunes/{id}/cancel",
    tag = "fine-tuning",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job; `cancelled` at once when it was queued, shortly after when running", body = FineTuneOut),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 422, description = "The job has finished already", body = ErrorBody),
    )
)]
#[post("/fine-tunes/{id}/cancel")]
pub async fn cancel_fine_tune(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse> {
    let job = serving(&state)?.jobs.cancel(&path).await?;
    Ok(HttpResponse::Ok().json(FineTuneOut::from(job)))
}

/// A job's events, oldest first.
#[utoipa::path(
    get,
    path = "/fine-tunes/{id}/events",
    tag = "fine-tuning",
    params(("id" = String, Path, description = "The job's id"), PageParams),
    responses(
        (status = 200, description = "A page of events", body = FineTuneEventPage),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 422, description = "`limit` or `after` breaks a rule", body = ErrorBody),
    )
)]
#[get("/fine-tunes/{id}/events")]
pub async fn fine_tune_events(
    state: web::Data<AppState>,
    path: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse> {
    let params: PageParams = query_params(&request)?;
    if params.status.is_some() {
        return Err(Error::validation(
            "status",
            "`status` filters `GET /fine-tunes`, not events",
        ));
    }
    let limit = page_limit(params.limit)?;
    let job = job_or_404(&state, &path).await?;
    let (events, has_more) = state
        .storage
        .list_events(&job.id, params.after.as_deref(), limit)
        .await?;
    let last_id = events.last().map(|event| event.id.clone());
    Ok(HttpResponse::Ok().json(FineTuneEventPage {
        data: events.into_iter().map(FineTuneEventOut::from).collect(),
        has_more,
        last_id,
    }))
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
#[get("/models")]
pub async fn list_models(state: web::Data<AppState>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(model_list(&state).await?))
}

async fn model_list(state: &AppState) -> Result<ModelList> {
    let serving = serving(state)?;
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
    params(("id" = String, Path, description = "The version's id")),
    responses(
        (status = 200, description = "The versions after the swap", body = ModelList),
        (status = 422, description = "No such version", body = ErrorBody),
        (status = 500, description = "The version's files are damaged or do not load; the active one keeps serving", body = ErrorBody),
    )
)]
#[post("/models/{id}/activate")]
pub async fn activate_model(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse> {
    serving(&state)?.models.activate(&path, "id").await?;
    Ok(HttpResponse::Ok().json(model_list(&state).await?))
}
