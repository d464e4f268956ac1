//! The OpenAPI document, generated from the handlers' annotations, with each operation's security taken from
//! its `Endpoint`. `t2i-align openapi` prints the document of a server with keys, and a test compares it with
//! the committed `openapi/openapi.json`; a server without keys serves it without security requirements.

use actix_web::{web, HttpResponse};
use utoipa::OpenApi;
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::http::endpoint::{self, Access, Endpoint, Method};
use crate::http::AppState;

use crate::http::error::{ErrorBody, ErrorDetail, OpenAiErrorBody, OpenAiErrorDetail};
use crate::http::fine_tunes::{self, FineTuneEventOut, FineTuneEventPage, FineTuneOut, FineTunePage};
use crate::http::models::{self, ModelList, ModelOut};
use crate::http::schemas::{
    FeedbackOut, FeedbackPage, FeedbackRequest, GenerateRequest, GenerateResponse, HealthResponse, ImageOut, ImagePage,
    ImageRecordOut, OpenAiImage, OpenAiImageRequest, OpenAiImagesResponse, Prompts, RerankRequest, RerankResult,
    ScoreRequest, ScoreResponse, ScoreTimings, SelectionOut, Timings,
};
use crate::http::{feedback, generate, images, openai, ops, scoring};
use crate::jobs::spec::{
    FeedbackFilter, FineTuneRequest, GateSpec, Hyperparameters, LrSchedule, PretrainData, PromptGenerator, PromptSource,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "t2i-align",
        description = "Text-to-image diffusion models aligned with human feedback, served through ONNX Runtime. \
                       Swagger UI for this document is served at /docs/.",
        license(name = "Apache-2.0")
    ),
    paths(
        generate::generate,
        scoring::score,
        scoring::rerank,
        openai::openai_images,
        feedback::post_feedback,
        feedback::delete_feedback,
        feedback::list_feedback,
        feedback::export_feedback,
        images::list_images,
        images::get_image,
        fine_tunes::create_fine_tune,
        fine_tunes::list_fine_tunes,
        fine_tunes::get_fine_tune,
        fine_tunes::cancel_fine_tune,
        fine_tunes::fine_tune_events,
        models::list_models,
        models::activate_model,
        ops::health,
        ops::ready,
        ops::metrics,
        openapi_json
    ),
    components(schemas(
        GenerateRequest,
        GenerateResponse,
        ImageOut,
        SelectionOut,
        Timings,
        Prompts,
        ScoreRequest,
        ScoreResponse,
        ScoreTimings,
        RerankRequest,
        RerankResult,
        OpenAiImageRequest,
        OpenAiImagesResponse,
        OpenAiImage,
        FeedbackRequest,
        FeedbackOut,
        FeedbackPage,
        ImageRecordOut,
        ImagePage,
        FineTuneRequest,
        PromptSource,
        PromptGenerator,
        FeedbackFilter,
        Hyperparameters,
        LrSchedule,
        PretrainData,
        GateSpec,
        FineTuneOut,
        FineTunePage,
        FineTuneEventOut,
        FineTuneEventPage,
        ModelOut,
        ModelList,
        HealthResponse,
        ErrorBody,
        ErrorDetail,
        OpenAiErrorBody,
        OpenAiErrorDetail
    )),
    tags(
        (name = "generation", description = "Text-to-image, with best-of-n rejection sampling by reward"),
        (name = "reward", description = "Reward-model scores and ranking of images for a prompt"),
        (name = "openai", description = "OpenAI-compatible routes"),
        (name = "feedback", description = "Human ratings of images, for fine-tune jobs"),
        (name = "fine-tuning", description = "Offline fine-tune jobs: reward-weighted likelihood on rated and reward-scored samples"),
        (name = "models", description = "Model versions, their lineage and evaluation, and the active one"),
        (name = "operations", description = "Health, readiness and metrics")
    )
)]
pub struct ApiDoc;

/// The document's route, and the Swagger UI that reads it at `/docs/`.
pub const ENDPOINTS: &[Endpoint] = &[Endpoint::new(Method::Get, "/openapi.json", Access::Open, |route| {
    route.to(openapi_json)
})];

pub fn configure(cfg: &mut web::ServiceConfig) {
    endpoint::configure(cfg, ENDPOINTS);
    cfg.service(SwaggerUi::new("/docs/{_:.*}").config(Config::new(["/openapi.json"])));
}

/// This OpenAPI document (JSON). Swagger UI at `/docs/` reads it.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    let security = if state.api_keys.is_open() {
        Security::Open
    } else {
        Security::Keys
    };
    HttpResponse::Ok()
        .content_type("application/json")
        .body(spec_json(security))
}

/// Whether the server checks API keys, which decides the document's security requirements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// No keys: nothing asks for `Authorization`.
    Open,
    /// Keys: each operation that needs one says so, with its scope.
    Keys,
}

/// The spec as pretty JSON with a trailing newline, exactly as committed (`Security::Keys`).
pub fn spec_json(security: Security) -> String {
    let mut doc = ApiDoc::openapi();
    // The crate version would make the committed file stale on every release bump.
    doc.info.version = "1".to_string();
    if security == Security::Keys {
        add_security(&mut doc);
    }
    match doc.to_pretty_json() {
        Ok(json) => json + "\n",
        Err(err) => format!("{{\"error\": \"{err}\"}}\n"),
    }
}

/// The bearer scheme, and on every operation that needs a key the scope its `Endpoint` declares.
fn add_security(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};

    let mut scheme = Http::new(HttpAuthScheme::Bearer);
    scheme.description = Some(
        "An API key, when the server has keys (T2I_API_KEYS or --api-keys-file). `inference` keys may generate, \
         score, rerank, rate and read images and models; `admin` keys may do everything. 401 without a valid \
         key, 403 for a key of too small a scope."
            .to_string(),
    );
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme("api_key", SecurityScheme::Http(scheme));
    for endpoint in crate::http::endpoints() {
        let Some(item) = doc.paths.paths.get_mut(endpoint.path) else {
            continue;
        };
        let operation = match endpoint.method {
            Method::Get => item.get.as_mut(),
            Method::Post => item.post.as_mut(),
            Method::Delete => item.delete.as_mut(),
        };
        // `/metrics` is open unless --protect-metrics; the document describes the default.
        let scope = match endpoint.access {
            Access::Open | Access::Metrics => continue,
            Access::Inference => "inference",
            Access::Admin => "admin",
        };
        if let Some(operation) = operation {
            operation.security = Some(vec![SecurityRequirement::new("api_key", [scope])]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of the document, as (method, path).
    fn documented() -> Vec<(String, String)> {
        let doc = ApiDoc::openapi();
        let mut operations = Vec::new();
        for (path, item) in &doc.paths.paths {
            for (method, operation) in [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ] {
                if operation {
                    operations.push((method.to_string(), path.clone()));
                }
            }
        }
        operations.sort();
        operations
    }

    #[test]
    fn the_document_and_the_routes_are_the_same_set() {
        let console: Vec<&str> = crate::http::console::ENDPOINTS.iter().map(|e| e.path).collect();
        let mut declared: Vec<(String, String)> = crate::http::endpoints()
            .into_iter()
            .filter(|endpoint| !console.contains(&endpoint.path))
            .map(|endpoint| (endpoint.method.name().to_string(), endpoint.path.to_string()))
            .collect();
        declared.sort();
        assert_eq!(declared, documented());
    }

    #[test]
    fn security_follows_each_endpoint_and_an_open_server_asks_for_none() {
        let keyed: serde_json::Value = serde_json::from_str(&spec_json(Security::Keys)).unwrap();
        for endpoint in crate::http::endpoints() {
            let operation = &keyed["paths"][endpoint.path][endpoint.method.name().to_lowercase()];
            if operation.is_null() {
                continue; // the console's routes are not in the document
            }
            let expected = match endpoint.access {
                Access::Open | Access::Metrics => serde_json::Value::Null,
                Access::Inference => serde_json::json!([{"api_key": ["inference"]}]),
                Access::Admin => serde_json::json!([{"api_key": ["admin"]}]),
            };
            assert_eq!(
                operation["security"],
                expected,
                "{} {}",
                endpoint.method.name(),
                endpoint.path
            );
        }
        let open = spec_json(Security::Open);
        assert!(!open.contains("\"security"), "{open}");
    }

    #[test]
    fn no_route_is_declared_twice() {
        let endpoints = crate::http::endpoints();
        for (index, endpoint) in endpoints.iter().enumerate() {
            assert!(
                endpoints[index + 1..]
                    .iter()
                    .all(|other| other.path != endpoint.path || other.method != endpoint.method),
                "{} {} is declared twice",
                endpoint.method.name(),
                endpoint.path
            );
        }
    }
}
