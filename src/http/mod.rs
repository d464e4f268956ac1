//! The HTTP surface (actix-web): one module per resource (generate, scoring, openai, feedback, images,
//! fine_tunes, models, keys, audit, ops, and the console), each declaring its routes as `Endpoint`s with the scope they
//! need; `extract` reads requests, `error` maps errors to statuses, `auth` checks keys, `openapi` documents it
//! all. Knows nothing of ONNX Runtime: it talks to the engines of `serving`.

pub mod audit;
pub mod auth;
pub mod console;
pub mod endpoint;
pub mod error;
pub mod extract;
pub mod feedback;
pub mod fine_tunes;
pub mod generate;
pub mod images;
pub mod keys;
pub mod models;
pub mod openai;
pub mod openapi;
pub mod ops;
pub mod rate_limit;
pub mod schemas;
pub mod scoring;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actix_web::dev::{Server, Service};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::error::{Error, Result};
use crate::http::endpoint::Endpoint;
use crate::jobs::JobManager;
use crate::metrics::Metrics;
use crate::pipeline::RequestLimits;
use crate::reward::{RewardSet, SelectionLimits};
use crate::runtime::ExecutionProvider;
use crate::serving::ModelPool;
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
    /// The keys this replica honours (bootstrap and stored), and whether any is needed.
    pub keys: Arc<auth::KeyRing>,
    /// Whether `/metrics` needs an admin key.
    pub protect_metrics: bool,
    /// The default deadline of a generation, and the longest one `X-Request-Timeout` may ask for.
    pub request_timeout: std::time::Duration,
    /// Set on SIGTERM: `/ready` answers 503 while in-flight requests finish.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// Most requests one API key may have in flight (0: no limit).
    pub max_concurrent_per_key: usize,
    /// Requests and generation work per minute, per key or client (#28).
    pub rate_limits: rate_limit::RateLimits,
    /// Requests in flight per API key name.
    pub in_flight: std::sync::Mutex<std::collections::HashMap<String, usize>>,
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
    /// Whether this replica serves the API (`--roles api`); without it only the ops routes answer.
    pub api: bool,
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
        .expose_headers([
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderName::from_static("ratelimit-limit"),
            actix_web::http::header::HeaderName::from_static("ratelimit-remaining"),
            actix_web::http::header::HeaderName::from_static("ratelimit-reset"),
            actix_web::http::header::HeaderName::from_static("ratelimit-policy"),
        ])
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

/// Every route the server serves, from each resource module's declarations.
/// Gathered once: the key check looks a request's route up here on every request.
pub fn endpoints() -> &'static [&'static Endpoint] {
    static ENDPOINTS: OnceLock<Vec<&'static Endpoint>> = OnceLock::new();
    ENDPOINTS.get_or_init(|| {
        [
            generate::ENDPOINTS,
            scoring::ENDPOINTS,
            openai::ENDPOINTS,
            feedback::ENDPOINTS,
            images::ENDPOINTS,
            fine_tunes::ENDPOINTS,
            models::ENDPOINTS,
            keys::ENDPOINTS,
            audit::ENDPOINTS,
            ops::ENDPOINTS,
            openapi::ENDPOINTS,
            console::ENDPOINTS,
        ]
        .into_iter()
        .flatten()
        .collect()
    })
}

/// Binds the listener and returns the server future (not yet awaited) with the port it bound.
pub fn build_server(state: web::Data<AppState>, config: &HttpConfig) -> std::io::Result<(Server, u16)> {
    let origins = config.cors_origins.clone();
    let api = config.api;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(auth::authenticate))
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
            .configure(ops::configure)
            .configure(|config| {
                if !api {
                    return;
                }
                for configure in [
                    generate::configure,
                    scoring::configure,
                    openai::configure,
                    feedback::configure,
                    images::configure,
                    fine_tunes::configure,
                    models::configure,
                    keys::configure,
                    audit::configure,
                    openapi::configure,
                    console::configure,
                ] {
                    configure(config);
                }
            })
            .default_service(if api {
                web::to(ops::not_found)
            } else {
                web::to(ops::not_found_worker_only)
            })
    })
    .workers(config.http_workers.max(1))
    // `cli::serve::serve` handles SIGTERM and SIGINT itself: it marks the server unready and stops the job runner
    // before the graceful stop, which then gives in-flight requests this long.
    .disable_signals()
    .shutdown_timeout(config.shutdown_grace)
    // A client that closes its side is gone: drop its request (and so cancel its work) instead of finishing it.
    .h1_allow_half_closed(false)
    .bind((config.host.as_str(), config.port))?;
    let port = server.addrs().first().map_or(config.port, |addr| addr.port());
    Ok((server.run(), port))
}
