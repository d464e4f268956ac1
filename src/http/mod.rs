//! The HTTP surface (actix-web): routes, the error mapping, request metrics and the OpenAPI document.
//! Knows nothing of ONNX Runtime; it talks to the `batching::Engine`.

pub mod error;
pub mod fine_tunes;
pub mod openapi;
pub mod routes;
pub mod schemas;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actix_web::dev::{Server, Service};
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
}

/// Binds the listener and returns the server future (not yet awaited) with the port it bound.
pub fn build_server(state: web::Data<AppState>, config: &HttpConfig) -> std::io::Result<(Server, u16)> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
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
            .service(SwaggerUi::new("/docs/{_:.*}").config(Config::new(["/openapi.json"])))
            .default_service(web::to(routes::not_found))
    })
    .workers(config.http_workers.max(1))
    // A client that closes its side is gone: drop its request (and so cancel its work) instead of finishing it.
    .h1_allow_half_closed(false)
    .bind((config.host.as_str(), config.port))?;
    let port = server.addrs().first().map_or(config.port, |addr| addr.port());
    Ok((server.run(), port))
}
