//! Operations: liveness (`/health`), readiness (`/ready`) and Prometheus metrics (`/metrics`), and the answer
//! for paths we do not serve.

use actix_web::{web, HttpResponse};

use crate::error::{Error, Result};
use crate::http::endpoint::{self, Access, Endpoint, Method};
use crate::http::error::ErrorBody;
use crate::http::schemas::HealthResponse;
use crate::http::AppState;

/// The routes this module serves, each with who may call it.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint::new(Method::Get, "/health", Access::Open, |route| route.to(health)),
    Endpoint::new(Method::Get, "/ready", Access::Open, |route| route.to(ready)),
    Endpoint::new(Method::Get, "/metrics", Access::Metrics, |route| route.to(metrics)),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    endpoint::configure(cfg, ENDPOINTS);
}

/// Liveness, with the model and the execution provider.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process is alive", body = HealthResponse)))]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(health_body(&state))
}

fn health_body(state: &AppState) -> HealthResponse {
    let serving = state.serving.get();
    HealthResponse {
        status: "ok".into(),
        ready: serving.is_some(),
        model: serving.map_or_else(
            || state.model_name.clone(),
            |serving| serving.models.active().version.clone(),
        ),
        device: state.device.clone(),
        execution_provider: serving.map(|serving| serving.provider.label().to_string()),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Readiness: 200 once the models are loaded and warmed up and the database answers; 503 otherwise.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = HealthResponse),
        (status = 503, description = "Still loading, shutting down, or the database is unreachable", body = ErrorBody),
    ))]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse> {
    if state.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::Unavailable(
            "the server is shutting down: in-flight requests are finishing".into(),
        ));
    }
    state.serving()?;
    state.storage.ping().await?;
    Ok(HttpResponse::Ok().json(health_body(&state)))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    if let Some(serving) = state.serving.get() {
        state.metrics.queue_depth.set(serving.models.queued() as i64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// Any path we do not serve.
/// The fallback of a `--roles worker` replica, which serves only the ops routes.
pub async fn not_found_worker_only(request: actix_web::HttpRequest) -> Result<HttpResponse> {
    Err(Error::NotFound(format!(
        "no route for {} {}: this replica runs fine-tune jobs only (--roles worker); send API requests to a \
         replica with the api role",
        request.method(),
        request.path()
    )))
}

pub async fn not_found(request: actix_web::HttpRequest) -> Result<HttpResponse> {
    Err(Error::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.path()
    )))
}
