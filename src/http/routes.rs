//! Route handlers. They validate, hand work to the engine and shape responses; they never call ONNX Runtime.

use std::time::Instant;

use actix_web::{get, post, web, HttpResponse};
use base64::Engine as _;
use futures_util::StreamExt;

use crate::error::{Error, Result};
use crate::http::error::{parse_json, ErrorBody};
use crate::http::schemas::{GenerateRequest, GenerateResponse, HealthResponse, ImageOut, Timings};
use crate::http::AppState;
use crate::pipeline::request::validate;

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|err| Error::InvalidRequest {
            message: format!("cannot read the request body: {err}"),
            param: None,
        })?;
        if body.len() + chunk.len() > limit {
            return Err(Error::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn millis(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// Generate images from a prompt.
#[utoipa::path(
    post,
    path = "/generate",
    tag = "generation",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "The images", body = GenerateResponse),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 413, description = "The body is larger than `--max-body-bytes`", body = ErrorBody),
        (status = 422, description = "A field breaks a rule; `param` names it", body = ErrorBody),
        (status = 429, description = "The queue is full; retry after the `Retry-After` header's seconds", body = ErrorBody),
        (status = 503, description = "The models are still loading", body = ErrorBody),
    )
)]
#[post("/generate")]
pub async fn generate(state: web::Data<AppState>, payload: web::Payload) -> Result<HttpResponse> {
    let started = Instant::now();
    let body = read_body(payload, state.max_body_bytes).await?;
    let request: GenerateRequest = parse_json(&body)?;
    let serving = state.serving()?;
    let params = validate(request.into(), &serving.model_limits, &state.limits)?;
    let completed = serving.engine.generate(params).await?;
    let output = completed.output;
    let timings = &output.timings;
    let response = GenerateResponse {
        id: format!("gen-{}", uuid::Uuid::new_v4().simple()),
        model: state.model_name.clone(),
        images: output
            .images
            .iter()
            .map(|image| ImageOut {
                index: image.index,
                seed: image.seed,
                png_base64: base64::engine::general_purpose::STANDARD.encode(&image.png),
            })
            .collect(),
        timings: Timings {
            queue_ms: millis(completed.queue_time),
            text_encode_ms: millis(timings.text_encode),
            denoise_ms: millis(timings.denoise),
            decode_ms: millis(timings.decode),
            png_encode_ms: millis(timings.png_encode),
            inference_ms: millis(timings.ort_run),
            total_ms: millis(started.elapsed()),
        },
        warnings: output.warnings,
    };
    Ok(HttpResponse::Ok().json(response))
}

/// Liveness, with the model and the execution provider.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process is alive", body = HealthResponse)))]
#[get("/health")]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(health_body(&state))
}

fn health_body(state: &AppState) -> HealthResponse {
    let serving = state.serving.get();
    HealthResponse {
        status: "ok".into(),
        ready: serving.is_some(),
        model: state.model_name.clone(),
        device: state.device.clone(),
        execution_provider: serving.map(|serving| serving.provider.label().to_string()),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Readiness: 200 once the models are loaded and warmed up, 503 before.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = HealthResponse),
        (status = 503, description = "Still loading", body = ErrorBody),
    ))]
#[get("/ready")]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse> {
    state.serving()?;
    Ok(HttpResponse::Ok().json(health_body(&state)))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    if let Some(serving) = state.serving.get() {
        state.metrics.queue_depth.set(serving.engine.queued() as i64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// This OpenAPI document (JSON). Swagger UI at `/docs/` reads it.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
#[get("/openapi.json")]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(crate::http::openapi::spec_json())
}

/// Any path we do not serve.
pub async fn not_found(request: actix_web::HttpRequest) -> Result<HttpResponse> {
    Err(Error::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.path()
    )))
}
