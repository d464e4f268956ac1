//! The OpenAPI document, generated from the handlers' annotations. `t2i-align openapi` prints it, and a test
//! compares it with the committed `openapi/openapi.json`.

use utoipa::OpenApi;

use crate::http::error::{ErrorBody, ErrorDetail, OpenAiErrorBody, OpenAiErrorDetail};
use crate::http::routes;
use crate::http::schemas::{
    FeedbackOut, FeedbackPage, FeedbackRequest, GenerateRequest, GenerateResponse, HealthResponse, ImageOut, ImagePage,
    ImageRecordOut, OpenAiImage, OpenAiImageRequest, OpenAiImagesResponse, Prompts, RerankRequest, RerankResult,
    ScoreRequest, ScoreResponse, ScoreTimings, SelectionOut, Timings,
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
        routes::list_feedback,
        routes::export_feedback,
        routes::list_images,
        routes::get_image,
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
        (name = "operations", description = "Health, readiness and metrics")
    )
)]
pub struct ApiDoc;

/// The spec as pretty JSON with a trailing newline, exactly as committed.
pub fn spec_json() -> String {
    let mut doc = ApiDoc::openapi();
    // The crate version would make the committed file stale on every release bump.
    doc.info.version = "1".to_string();
    match doc.to_pretty_json() {
        Ok(json) => json + "\n",
        Err(err) => format!("{{\"error\": \"{err}\"}}\n"),
    }
}
