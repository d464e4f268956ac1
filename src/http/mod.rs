//! The HTTP surface (actix-web): routes, the error mapping, request metrics and the OpenAPI document.
//! Knows nothing of ONNX Runtime; it talks to the `batching::Engine`.

pub mod auth;
pub mod console;
pub mod error;
pub mod fine_tunes;
pub mod openapi;
pub mod routes;
pub mod schemas;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Server, Service, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpServer};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::error::{Error, Result};
use crate::jobs::JobManager;
use crate::metrics::Metrics;
use crate::pipeline::RequestLimits;
use crate::registry::pool::ModelPool;
use crate::reward::{RewardSet, SelectionLimits};
use crate::runtime::ExecutionProvider;
use crate::storage::Storage;

/// What exists once the models are loaded and warmed up.
pub struct Serving {
    /// The loaded model versions; requests without `model` get the active one.
    pub models: Arc<ModelPool>,
    pub provider: ExecutionProvider,
    pub rewards: Arc<RewardSet>,
    pub jobs: Arc<JobManager>,
}

/// Limits on the images `/score` and `/rerank` take.
#[derive(Debug, Clone, Copy)]
pub struct ScoreLimits {
    /// Most images in one request.
    pub max_images: usize,
    /// Most pixels (width × height) one image may announce in its header.
    pub max_image_pixels: u64,
}

impl Default for ScoreLimits {
    fn default() -> Self {
        ScoreLimits {
            max_images: 64,
            max_image_pixels: 4096 * 4096,
        }
    }
}

pub struct AppState {
    /// Empty while loading: `/ready` answers 503 and `/generate` too.
    pub serving: OnceLock<Serving>,
    pub metrics: Arc<Metrics>,
    /// The version served at start-up; once loaded, `serving.models.active()` says which one is active.
    pub model_name: String,
    /// The device asked for on the command line.
    pub device: String,
    pub limits: RequestLimits,
    pub selection_limits: SelectionLimits,
    pub score_limits: ScoreLimits,
    pub max_body_bytes: usize,
    /// The data directory's database: generated images (for `image_ids`), and later feedback and jobs.
    pub storage: Arc<Storage>,
    /// The bearer keys; empty is open mode.
    pub api_keys: auth::ApiKeys,
    /// Whether `/metrics` needs an admin key.
    pub protect_metrics: bool,
    /// The default deadline of a generation, and the longest one `X-Request-Timeout` may ask for.
    pub request_timeout: std::time::Duration,
    /// Set on SIGTERM: `/ready` answers 503 while in-flight requests finish.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// Most requests one API key may have in flight (0: no limit).
    pub max_concurrent_per_key: usize,
    /// Requests in flight per API key name.
    pub in_flight: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One request of a key counted in flight until dropped.
struct InFlight {
    state: web::Data<AppState>,
    key: String,
}

impl InFlight {
    /// Counts a request of `key`, or refuses it when the key is at its limit.
    fn acquire(state: &web::Data<AppState>, key: &str) -> Result<Option<InFlight>> {
        let limit = state.max_concurrent_per_key;
        if limit == 0 {
            return Ok(None);
        }
        let mut counts = state
            .in_flight
            .lock()
            .map_err(|_| Error::Internal("the in-flight counter lock is poisoned".into()))?;
        let count = counts.entry(key.to_string()).or_insert(0);
        if *count >= limit {
            return Err(Error::KeyBusy {
                key: key.to_string(),
                limit,
            });
        }
        *count += 1;
        Ok(Some(InFlight {
            state: state.clone(),
            key: key.to_string(),
        }))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.state.in_flight.lock() {
            if let Some(count) = counts.get_mut(&self.key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(&self.key);
                }
            }
        }
    }
}

impl AppState {
    pub fn serving(&self) -> Result<&Serving> {
        self.serving
            .get()
            .ok_or_else(|| Error::Unavailable("the models are still loading; retry when /ready answers 200".into()))
    }
}

pub struct HttpConfig {
    pub host: String,
    pub port: u16,
    pub http_workers: usize,
    pub max_body_bytes: usize,
    /// Seconds in-flight requests get to finish after SIGTERM.
    pub shutdown_grace: u64,
    /// Origins browsers may call from (`*` for any); empty turns CORS off, so browsers enforce same-origin.
    pub cors_origins: Vec<String>,
}

/// CORS for the configured origins: off (no headers) unless some are given.
fn cors(origins: &[String]) -> actix_cors::Cors {
    if origins.is_empty() {
        return actix_cors::Cors::default();
    }
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "DELETE", "OPTIONS"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::HeaderName::from_static("x-request-timeout"),
        ])
        .expose_headers([actix_web::http::header::RETRY_AFTER])
        .max_age(3600);
    if origins.iter().any(|origin| origin == "*") {
        cors = cors.allow_any_origin();
    } else {
        for origin in origins {
            cors = cors.allowed_origin(origin);
        }
    }
    cors
}

/// Answers 401 or 403 before any handler runs when the route needs a key the request does not carry
/// (`auth::route_scope`). The OpenAI-compatible routes answer in OpenAI's error shape.
async fn authenticate<B: MessageBody + 'static>(
    request: ServiceRequest,
    next: Next<B>,
) -> std::result::Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let mut in_flight = None;
    if let Some(state) = request.app_data::<web::Data<AppState>>().cloned() {
        let pattern = request.match_pattern().unwrap_or_else(|| "unmatched".to_string());
        if let Some(scope) = auth::route_scope(request.method().as_str(), &pattern, state.protect_metrics) {
            let header = request
                .headers()
                .get(actix_web::http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok());
            let admitted = state
                .api_keys
                .check(header, scope)
                .and_then(|key| key.map_or(Ok(None), |key| InFlight::acquire(&state, &key)));
            match admitted {
                Ok(guard) => in_flight = guard,
                Err(err) => {
                    let response = if pattern.starts_with("/v1/") {
                        actix_web::ResponseError::error_response(&error::OpenAiError(err))
                    } else {
                        actix_web::ResponseError::error_response(&err)
                    };
                    return Ok(request.into_response(response).map_into_right_body());
                }
            }
        }
    }
    let response = next.call(request).await.map(ServiceResponse::map_into_left_body);
    drop(in_flight);
    response
}

/// Binds the listener and returns the server future (not yet awaited) with the port it bound.
pub fn build_server(state: web::Data<AppState>, config: &HttpConfig) -> std::io::Result<(Server, u16)> {
    let origins = config.cors_origins.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(authenticate))
            // Outside the key check: a browser's preflight carries no key.
            .wrap(cors(&origins))
            .wrap_fn(|request, service| {
                let started = Instant::now();
                let route = request.match_pattern().unwrap_or_else(|| "unmatched".to_string());
                let method = request.method().to_string();
                let state = request.app_data::<web::Data<AppState>>().cloned();
                let response = service.call(request);
                async move {
                    let response = response.await?;
                    let status = response.status().as_u16();
                    let elapsed = started.elapsed();
                    if let Some(state) = state {
                        state.metrics.observe_http(&route, &method, status, elapsed);
                    }
                    tracing::info!(%method, %route, status, ms = elapsed.as_secs_f64() * 1e3, "request");
                    Ok(response)
                }
            })
            .service(routes::generate)
            .service(routes::score)
            .service(routes::rerank)
            .service(routes::openai_images)
            .service(routes::post_feedback)
            .service(routes::delete_feedback)
            .service(routes::export_feedback)
            .service(routes::list_feedback)
            .service(routes::list_images)
            .service(routes::get_image)
            .service(fine_tunes::create_fine_tune)
            .service(fine_tunes::list_fine_tunes)
            .service(fine_tunes::get_fine_tune)
            .service(fine_tunes::cancel_fine_tune)
            .service(fine_tunes::fine_tune_events)
            .service(fine_tunes::list_models)
            .service(fine_tunes::activate_model)
            .service(routes::health)
            .service(routes::ready)
            .service(routes::metrics)
            .service(routes::openapi_json)
            .service(console::index)
            .service(console::assets)
            .service(console::favicon)
            .service(SwaggerUi::new("/docs/{_:.*}").config(Config::new(["/openapi.json"])))
            .default_service(web::to(routes::not_found))
    })
    .workers(config.http_workers.max(1))
    // `server::serve` handles SIGTERM and SIGINT itself: it marks the server unready and stops the job runner
    // before the graceful stop, which then gives in-flight requests this long.
    .disable_signals()
    .shutdown_timeout(config.shutdown_grace)
    // A client that closes its side is gone: drop its request (and so cancel its work) instead of finishing it.
    .h1_allow_half_closed(false)
    .bind((config.host.as_str(), config.port))?;
    let port = server.addrs().first().map_or(config.port, |addr| addr.port());
    Ok((server.run(), port))
}
