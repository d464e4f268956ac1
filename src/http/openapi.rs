//! The OpenAPI document, generated from the handlers' annotations. `t2i-align openapi` prints it, and a test
//! compares it with the committed `openapi/openapi.json`.

use utoipa::OpenApi;

use crate::http::error::{ErrorBody, ErrorDetail, OpenAiErrorBody, OpenAiErrorDetail};
use crate::http::fine_tunes::{
    self, FineTuneEventOut, FineTuneEventPage, FineTuneOut, FineTunePage, ModelList, ModelOut,
};
use crate::http::routes;
use crate::http::schemas::{
    FeedbackOut, FeedbackPage, FeedbackRequest, GenerateRequest, GenerateResponse, HealthResponse, ImageOut, ImagePage,
    ImageRecordOut, OpenAiImage, OpenAiImageRequest, OpenAiImagesResponse, Prompts, RerankRequest, RerankResult,
    ScoreRequest, ScoreResponse, ScoreTimings, SelectionOut, Timings,
};
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
        routes::generate,
        routes::score,
        routes::rerank,
        routes::openai_images,
        routes::post_feedback,
        routes::delete_feedback,
        routes::list_feedback,
        routes::export_feedback,
        routes::list_images,
        routes::get_image,
        fine_tunes::create_fine_tune,
        fine_tunes::list_fine_tunes,
        fine_tunes::get_fine_tune,
        fine_tunes::cancel_fine_tune,
        fine_tunes::fine_tune_events,
        fine_tunes::list_models,
        fine_tunes::activate_model,
        routes::health,
        routes::ready,
        routes::metrics,
        routes::openapi_json
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

/// The spec as pretty JSON with a trailing newline, exactly as committed.
pub fn spec_json() -> String {
    let mut doc = ApiDoc::openapi();
    // The crate version would make the committed file stale on every release bump.
    doc.info.version = "1".to_string();
    add_security(&mut doc);
    match doc.to_pretty_json() {
        Ok(json) => json + "\n",
        Err(err) => format!("{{\"error\": \"{err}\"}}\n"),
    }
}

/// The bearer scheme, and on every operation that needs a key the scope it needs (`auth::route_scope`).
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
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            ("GET", item.get.as_mut()),
            ("POST", item.post.as_mut()),
            ("PUT", item.put.as_mut()),
            ("DELETE", item.delete.as_mut()),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            // `/metrics` is open unless --protect-metrics; the document describes the default.
            if let Some(scope) = crate::http::auth::route_scope(method, path, false) {
                operation.security = Some(vec![SecurityRequirement::new("api_key", [scope.name()])]);
            }
        }
    }
}
