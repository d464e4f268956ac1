//! Fine-tune jobs over HTTP: `/fine-tunes`, shaped like OpenAI's fine-tuning jobs. The job manager does the
//! work; these handlers validate, call it and shape answers.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::http::audit::record;
use crate::http::auth::Caller;
use crate::http::endpoint::{self, Access, Endpoint, Method};
use crate::http::error::{parse_json, ErrorBody};
use crate::http::extract::{page_limit, query_params, read_body};
use crate::http::AppState;
use crate::jobs::FineTuneRequest;
use crate::storage::{JobEvent, JobRecord, JobStatus};

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
    #[schema(value_type = JobStatusName)]
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
    /// Figures so far: the samples, the trainer's losses, the evaluation of base and candidate, and the gate
    /// (`gate`, a `GateDecision`: each metric's change with its paired bootstrap interval, the rule, the reasons).
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<Value>,
    /// The version it registered.
    pub result_model: Option<String>,
    pub error: Option<String>,
    /// When its first attempt started (Unix milliseconds).
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Attempts so far: a job whose worker stopped, or that a shutdown gave back, runs again (its training
    /// going on from its last checkpoint), up to the server's --job-max-attempts.
    pub attempt: i64,
    /// The replica running (or that last ran) it: host, process id and a random suffix.
    pub worker: Option<String>,
    /// The tenant whose key created it: it trains on that tenant's ratings, and its version is theirs.
    pub tenant: String,
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
            attempt: job.attempt,
            worker: job.worker,
            tenant: job.tenant,
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

/// Paging and the status filter of `GET /fine-tunes`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// The last id of the previous page.
    #[param(value_type = Option<JobId>)]
    pub after: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// List only jobs with this status.
    #[param(value_type = Option<JobStatusName>)]
    pub status: Option<String>,
}

/// Paging of `GET /fine-tunes/{id}/events`: as `PageParams`, without the status filter.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// The last id of the previous page.
    #[param(value_type = Option<EventId>)]
    pub after: Option<String>,
    /// Events per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// The id of a fine-tune job (`id` in `POST /fine-tunes` answers).
#[derive(ToSchema)]
#[schema(value_type = String, format = "job-id")]
#[allow(dead_code)]
pub struct JobId(String);

/// The id of one of a job's events.
#[derive(ToSchema)]
#[schema(value_type = String, format = "job-event-id")]
#[allow(dead_code)]
pub struct EventId(String);

/// A job's status (`storage::JobStatus`).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum JobStatusName {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// The routes this module serves, each with who may call it.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint::new(Method::Post, "/fine-tunes", Access::FineTune, |route| {
        route.to(create_fine_tune)
    }),
    Endpoint::new(Method::Get, "/fine-tunes", Access::FineTune, |route| {
        route.to(list_fine_tunes)
    }),
    Endpoint::new(Method::Get, "/fine-tunes/{id}", Access::FineTune, |route| {
        route.to(get_fine_tune)
    }),
    Endpoint::new(Method::Post, "/fine-tunes/{id}/cancel", Access::FineTune, |route| {
        route.to(cancel_fine_tune)
    }),
    Endpoint::new(Method::Get, "/fine-tunes/{id}/events", Access::FineTune, |route| {
        route.to(fine_tune_events)
    }),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    endpoint::configure(cfg, ENDPOINTS);
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
        (status = 429, description = "The tenant is at a quota (`--tenant-max-jobs` or `--tenant-job-minutes-per-day`; the error names it), or, with keys, the key has `--max-concurrent-per-key` requests in flight; retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "The models are still loading, or this server cannot run jobs (its trainer's Python is missing)", body = ErrorBody),
    )
)]
pub async fn create_fine_tune(
    state: web::Data<AppState>,
    caller: Caller,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let body = read_body(payload, state.max_body_bytes).await?;
    if let Ok(value) = serde_json::from_slice::<Value>(&body) {
        FineTuneRequest::check_object_fields(&value)?;
    }
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
    let job = state
        .serving()?
        .jobs
        .create(request, &caller.tenant, caller.visible_tenant())
        .await?;
    record(
        &state,
        &caller,
        "fine_tune.create",
        &job.id,
        Some(serde_json::json!({"base": job.base_model})),
    )
    .await;
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
        (status = 404, description = "`after` names an id of the right shape that is gone (deleted, expired) or never was", body = ErrorBody),
        (status = 422, description = "`limit`, `status` or `after` breaks a rule", body = ErrorBody),
    )
)]
pub async fn list_fine_tunes(state: web::Data<AppState>, caller: Caller, request: HttpRequest) -> Result<HttpResponse> {
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
    let (jobs, has_more) = state
        .storage
        .list_jobs(caller.visible_tenant(), status, params.after.as_deref(), limit)
        .await?;
    let last_id = jobs.last().map(|job| job.id.clone());
    Ok(HttpResponse::Ok().json(FineTunePage {
        data: jobs.into_iter().map(FineTuneOut::from).collect(),
        has_more,
        last_id,
    }))
}

/// The job `id`, if `caller` may see it: another tenant's job is answered as one that does not exist.
async fn job_or_404(state: &AppState, caller: &Caller, id: &str) -> Result<JobRecord> {
    state
        .storage
        .job(id)
        .await?
        .filter(|job| caller.sees(&job.tenant))
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
pub async fn get_fine_tune(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let job = job_or_404(&state, &caller, &path).await?;
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
        (status = 409, description = "The job has finished already", body = ErrorBody),
    )
)]
pub async fn cancel_fine_tune(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    job_or_404(&state, &caller, &path).await?;
    let job = state.serving()?.jobs.cancel(&path).await?;
    record(&state, &caller, "fine_tune.cancel", &job.id, None).await;
    Ok(HttpResponse::Ok().json(FineTuneOut::from(job)))
}

/// A job's events, oldest first.
#[utoipa::path(
    get,
    path = "/fine-tunes/{id}/events",
    tag = "fine-tuning",
    params(("id" = String, Path, description = "The job's id"), EventParams),
    responses(
        (status = 200, description = "A page of events", body = FineTuneEventPage),
        (status = 404, description = "No such job, or `after` names an event id of the right shape that is not there", body = ErrorBody),
        (status = 422, description = "`limit` or `after` breaks a rule", body = ErrorBody),
    )
)]
pub async fn fine_tune_events(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse> {
    let params: EventParams = query_params(&request)?;
    let limit = page_limit(params.limit)?;
    let job = job_or_404(&state, &caller, &path).await?;
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
