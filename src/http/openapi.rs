//! The OpenAPI document, generated from the handlers' annotations, with each operation's security taken from
//! its `Endpoint`. `t2i-align openapi` prints the document of a server with keys, and a test compares it with
//! the committed `openapi/openapi.json`; a server without keys serves it without security requirements.

use actix_web::{web, HttpResponse};
use utoipa::OpenApi;
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::http::endpoint::{self, Access, Endpoint, Method};
use crate::http::schemas::{ModelVersion, RewardModelName};
use crate::http::AppState;

use crate::http::audit::{self, AuditId, AuditOut, AuditPage};
use crate::http::error::{ErrorBody, ErrorDetail, OpenAiErrorBody, OpenAiErrorDetail};
use crate::http::fine_tunes::{
    self, EventId, FineTuneEventOut, FineTuneEventPage, FineTuneOut, FineTunePage, JobId, JobStatusName,
};
use crate::http::keys::{self, CreateKey, CreatedKey, KeyId, KeyList, KeyOut, ScopeName};
use crate::http::models::{self, ModelList, ModelOut, ReplicaOut, RolloutOut};
use crate::http::schemas::{
    FeedbackOut, FeedbackPage, FeedbackRequest, GenerateRequest, GenerateResponse, HealthResponse, ImageBase64,
    ImageFile, ImageId, ImageOut, ImagePage, ImageRecordOut, LabelName, OpenAiImage, OpenAiImageEditForm,
    OpenAiImageRequest, OpenAiImagesResponse, Prompts, RatingId, RerankForm, RerankRequest, RerankResult,
    ResponseFormat, SchedulerName, ScoreForm, ScoreRequest, ScoreResponse, ScoreTimings, SelectionOut, Timings,
};
use crate::http::{feedback, generate, images, openai, ops, scoring};
use crate::jobs::gate::{GateDecision, GateRule, MetricGain};
use crate::jobs::spec::{
    FeedbackFilter, FineTuneRequest, GateSpec, Hyperparameters, JobLimits, LrSchedule, MaxDrop, Objective,
    PretrainData, PromptGenerator, PromptSource,
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
        openai::openai_edits,
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
        models::rollout,
        keys::create_key,
        keys::list_keys,
        keys::revoke_key,
        audit::list_audit,
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
        Objective,
        PretrainData,
        GateSpec,
        MaxDrop,
        GateDecision,
        GateRule,
        MetricGain,
        FineTuneOut,
        FineTunePage,
        FineTuneEventOut,
        FineTuneEventPage,
        ModelOut,
        ModelList,
        RolloutOut,
        ReplicaOut,
        CreateKey,
        CreatedKey,
        KeyOut,
        KeyList,
        ScopeName,
        AuditOut,
        AuditPage,
        AuditId,
        KeyId,
        HealthResponse,
        ErrorBody,
        ErrorDetail,
        OpenAiErrorBody,
        OpenAiErrorDetail,
        SchedulerName,
        LabelName,
        JobStatusName,
        ResponseFormat,
        ImageBase64,
        ImageFile,
        ScoreForm,
        RerankForm,
        OpenAiImageEditForm,
        ImageId,
        RatingId,
        ModelVersion,
        RewardModelName,
        JobId,
        EventId
    )),
    tags(
        (name = "generation", description = "Text-to-image, with best-of-n rejection sampling by reward"),
        (name = "reward", description = "Reward-model scores and ranking of images for a prompt"),
        (name = "openai", description = "OpenAI-compatible routes"),
        (name = "feedback", description = "Human ratings of images, for fine-tune jobs"),
        (name = "fine-tuning", description = "Offline fine-tune jobs: reward-weighted likelihood on rated and reward-scored samples"),
        (name = "models", description = "Model versions, their lineage and evaluation, and the active one"),
        (name = "keys", description = "API keys, their tenants and scopes, and the audit log (admin only)"),
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
    let security = if state.keys.is_open() {
        Security::Open
    } else {
        Security::Keys
    };
    let limits = ServedLimits::of(&state);
    // A server with the default limits serves the committed document as it is; one started with others
    // states its own limits, and its model's sizes.
    let defaults = ServedLimits::of_flags(
        &Default::default(),
        &Default::default(),
        &Default::default(),
        &Default::default(),
    );
    if limits.flags() == defaults {
        return HttpResponse::Ok()
            .content_type("application/json")
            .body(spec_json(security));
    }
    let mut doc = match serde_json::to_value(spec(security)) {
        Ok(doc) => doc,
        Err(err) => serde_json::json!({"error": err.to_string()}),
    };
    served_limits(&mut doc, &limits);
    HttpResponse::Ok().json(doc)
}

/// The limits this server was started with, which the document it serves states in place of the defaults.
#[derive(Debug, Clone)]
pub struct ServedLimits {
    pub max_images: u32,
    pub max_steps: u32,
    pub max_prompt_bytes: usize,
    pub max_best_of: u32,
    pub max_candidates: u32,
    pub max_score_images: usize,
    /// The active model's size multiple and the largest width or height it may generate.
    pub size_multiple: usize,
    pub max_size: usize,
    /// A fine-tune job's limits (`--max-job-*`).
    pub jobs: JobLimits,
}

/// The limits set by flags, to compare with the defaults'.
type FlagLimits = (u32, u32, usize, u32, u32, usize, JobLimits);

impl ServedLimits {
    /// The limits set by flags (not by the model), as a tuple to compare with the defaults'.
    fn flags(&self) -> FlagLimits {
        (
            self.max_images,
            self.max_steps,
            self.max_prompt_bytes,
            self.max_best_of,
            self.max_candidates,
            self.max_score_images,
            self.jobs,
        )
    }

    fn of_flags(
        limits: &crate::pipeline::RequestLimits,
        selection: &crate::reward::SelectionLimits,
        score: &crate::http::ScoreLimits,
        jobs: &JobLimits,
    ) -> FlagLimits {
        (
            limits.max_images,
            limits.max_steps,
            limits.max_prompt_bytes,
            selection.max_best_of,
            selection.max_candidates,
            score.max_images,
            *jobs,
        )
    }

    pub fn of(state: &AppState) -> Self {
        let (size_multiple, max_size) =
            state
                .serving
                .get()
                .map_or((8, state.limits.max_image_size as usize), |serving| {
                    let limits = &serving.models.active().limits;
                    (limits.size_multiple.max(1), limits.max_size(&state.limits))
                });
        ServedLimits {
            max_images: state.limits.max_images,
            max_steps: state.limits.max_steps,
            max_prompt_bytes: state.limits.max_prompt_bytes,
            max_best_of: state.selection_limits.max_best_of,
            max_candidates: state.selection_limits.max_candidates,
            max_score_images: state.score_limits.max_images,
            size_multiple,
            max_size: max_size - max_size % size_multiple,
            jobs: state
                .serving
                .get()
                .map_or_else(JobLimits::default, |serving| serving.jobs.limits()),
        }
    }
}

/// Writes `limits` into the document's request schemas (`t2i-align openapi` shows the defaults).
pub fn served_limits(doc: &mut serde_json::Value, limits: &ServedLimits) {
    use serde_json::json;
    for schema in ["GenerateRequest", "OpenAiImageRequest", "OpenAiImageEditForm"] {
        set_property(doc, schema, "n", "maximum", json!(limits.max_images));
        set_property(doc, schema, "best_of", "maximum", json!(limits.max_best_of));
        set_property(doc, schema, "prompt", "maxLength", json!(limits.max_prompt_bytes));
    }
    set_property(
        doc,
        "GenerateRequest",
        "negative_prompt",
        "maxLength",
        json!(limits.max_prompt_bytes),
    );
    set_property(doc, "GenerateRequest", "steps", "maximum", json!(limits.max_steps));
    set_property(
        doc,
        "GenerateRequest",
        "max_candidates",
        "maximum",
        json!(limits.max_candidates),
    );
    for side in ["width", "height"] {
        set_property(doc, "GenerateRequest", side, "minimum", json!(limits.size_multiple));
        set_property(doc, "GenerateRequest", side, "maximum", json!(limits.max_size));
        set_property(doc, "GenerateRequest", side, "multipleOf", json!(limits.size_multiple));
    }
    for schema in ["OpenAiImageRequest", "OpenAiImageEditForm"] {
        set_property(
            doc,
            schema,
            "size",
            "pattern",
            json!(size_pattern(limits.size_multiple, limits.max_size)),
        );
    }
    for schema in ["ScoreRequest", "RerankRequest"] {
        set_property(doc, schema, "images", "maxItems", json!(limits.max_score_images));
        set_property(doc, schema, "image_ids", "maxItems", json!(limits.max_score_images));
    }
    for schema in ["ScoreForm", "RerankForm"] {
        set_property(doc, schema, "image", "maxItems", json!(limits.max_score_images));
        set_property(doc, schema, "image_id", "maxItems", json!(limits.max_score_images));
    }
    for schema in ["RerankRequest", "RerankForm", "ScoreForm", "FeedbackRequest"] {
        set_property(doc, schema, "prompt", "maxLength", json!(limits.max_prompt_bytes));
    }
    let jobs = &limits.jobs;
    for field in ["count", "per_category"] {
        set_property(doc, "PromptGenerator", field, "maximum", json!(jobs.max_prompts));
    }
    set_property(doc, "Hyperparameters", "steps", "maximum", json!(jobs.max_steps));
    set_property(
        doc,
        "Hyperparameters",
        "batch_size",
        "maximum",
        json!(jobs.max_batch_size),
    );
    for field in ["images_per_prompt", "eval_images_per_prompt"] {
        set_property(
            doc,
            "FineTuneRequest",
            field,
            "maximum",
            json!(jobs.max_images_per_prompt),
        );
    }
    if let Some(list) = doc.pointer_mut("/components/schemas/PromptSource/allOf/0/then") {
        list["maxItems"] = json!(jobs.max_prompts);
    }
    if let Some(choices) = doc
        .pointer_mut("/components/schemas/Prompts/oneOf")
        .and_then(serde_json::Value::as_array_mut)
    {
        for choice in choices {
            let one = if choice["type"] == "array" {
                choice["maxItems"] = json!(limits.max_score_images);
                &mut choice["items"]
            } else {
                choice
            };
            one["maxLength"] = json!(limits.max_prompt_bytes);
        }
    }
}

/// Sets `key` of one property of a component schema, when the document has it.
fn set_property(doc: &mut serde_json::Value, schema: &str, property: &str, key: &str, value: serde_json::Value) {
    let pointer = format!("/components/schemas/{schema}/properties/{property}");
    if let Some(object) = doc.pointer_mut(&pointer).and_then(serde_json::Value::as_object_mut) {
        object.insert(key.to_string(), value);
    }
}

/// `auto`, or `WIDTHxHEIGHT` with each side a multiple of `multiple` up to `max`.
pub fn size_pattern(multiple: usize, max: usize) -> String {
    let sides: Vec<String> = (1..=max / multiple.max(1))
        .map(|factor| (factor * multiple).to_string())
        .collect();
    let sides = sides.join("|");
    format!("^(auto|({sides})x({sides}))$")
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
    let doc = spec(security);
    match doc.to_pretty_json() {
        Ok(json) => json + "\n",
        Err(err) => format!("{{\"error\": \"{err}\"}}\n"),
    }
}

/// The document, with the security requirements of a server with keys or of one without.
pub fn spec(security: Security) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // The crate version would make the committed file stale on every release bump.
    doc.info.version = "1".to_string();
    add_key_refusals(&mut doc);
    if security == Security::Keys {
        add_security(&mut doc);
    }
    add_field_rules(&mut doc);
    doc
}

/// The answers API keys and rate limits bring, on every operation that needs a key when the server has keys:
/// 401, 403 and 429. Declared whether or not this server has keys, so that both serve one set of answers.
fn add_key_refusals(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
    for endpoint in crate::http::endpoints() {
        let Some(item) = doc.paths.paths.get_mut(endpoint.path) else {
            continue;
        };
        let operation = match endpoint.method {
            Method::Get => item.get.as_mut(),
            Method::Post => item.post.as_mut(),
            Method::Delete => item.delete.as_mut(),
        };
        let Some(operation) = operation else {
            continue;
        };
        let Some(scope) = crate::http::auth::Scope::of(endpoint.access, false) else {
            continue;
        };
        let forbidden = format!("The key lacks the `{}` scope this route needs", scope.name());
        let refusals = [
            (
                "401",
                "The server has keys, and this request has none or not a valid one (unknown, revoked or expired; \
                 `WWW-Authenticate: Bearer`)",
            ),
            ("403", forbidden.as_str()),
            (
                "429",
                "This key has `--max-concurrent-per-key` requests in flight already, or this key (in open mode, this \
                 client) is past its requests per minute (`--rate-limit-requests`; `RateLimit-*` and `Retry-After` \
                 headers)",
            ),
        ];
        // OpenAI's route answers in OpenAI's error shape.
        let body = if endpoint.path.starts_with("/v1/") {
            "OpenAiErrorBody"
        } else {
            "ErrorBody"
        };
        for (status, description) in refusals {
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", Content::new(Some(Ref::from_schema_name(body))))
                .build();
            operation
                .responses
                .responses
                .entry(status.to_string())
                .or_insert(RefOr::T(response));
        }
    }
}

/// The rules between fields that the schemas' attributes cannot state (`schemas::field_rules`), as each
/// schema's `allOf`.
fn add_field_rules(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::RefOr;
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for (name, field) in crate::http::schemas::U64_FIELDS {
        if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(*name) {
            if let Some(RefOr::T(Schema::Object(field))) = object.properties.get_mut(*field) {
                field.format = Some(utoipa::openapi::SchemaFormat::Custom("uint64".to_string()));
                field
                    .extensions
                    .get_or_insert_with(Default::default)
                    .insert("maximum".to_string(), serde_json::json!(u64::MAX));
            }
        }
    }
    // `size` is one of the sizes `/generate` takes at the default limits (a server states its own).
    for schema in ["OpenAiImageRequest", "OpenAiImageEditForm"] {
        if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) {
            if let Some(RefOr::T(Schema::Object(size))) = object.properties.get_mut("size") {
                size.pattern = Some(size_pattern(8, 1024));
            }
        }
    }
    for (name, rules) in crate::http::schemas::field_rules() {
        let extensions = match components.schemas.get_mut(name) {
            Some(RefOr::T(Schema::Object(object))) => &mut object.extensions,
            Some(RefOr::T(Schema::OneOf(one_of))) => &mut one_of.extensions,
            _ => continue,
        };
        extensions
            .get_or_insert_with(Default::default)
            .insert("allOf".to_string(), rules);
    }
}

/// The bearer scheme, and on every operation that needs a key the scope its `Endpoint` declares.
fn add_security(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};

    let mut scheme = Http::new(HttpAuthScheme::Bearer);
    scheme.description = Some(
        "An API key, when the server has keys (stored ones from POST /keys or `t2i-align keys create`, or \
         bootstrap ones from T2I_API_KEYS or --api-keys-file). Scopes: `inference` may generate, score, \
         rerank, rate and read images and models; `feedback` may list and export ratings; `fine-tune` may run \
         and follow fine-tune jobs; `admin` may do everything, for every tenant. 401 without a valid key, 403 \
         for a key without the route's scope."
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
        let Some(scope) = crate::http::auth::Scope::of(endpoint.access, false).map(|scope| scope.name()) else {
            continue;
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
            .iter()
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
                Access::Feedback => serde_json::json!([{"api_key": ["feedback"]}]),
                Access::FineTune => serde_json::json!([{"api_key": ["fine-tune"]}]),
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
