//! OpenAI compatibility: `POST /v1/images/generations`, answered by `/generate`'s own path, with errors in
//! OpenAI's shape.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::{Error, Result};
use crate::http::endpoint::{self, Access, Endpoint, Method};
use crate::http::error::{parse_json, OpenAiError, OpenAiErrorBody};
use crate::http::extract::{read_body, request_deadline};
use crate::http::generate::run_generate;
use crate::http::schemas::{GenerateRequest, OpenAiImage, OpenAiImageRequest, OpenAiImagesResponse};
use crate::http::AppState;

/// The routes this module serves, each with who may call it.
pub const ENDPOINTS: &[Endpoint] = &[Endpoint::new(
    Method::Post,
    "/v1/images/generations",
    Access::Inference,
    |route| route.to(openai_images),
)];

pub fn configure(cfg: &mut web::ServiceConfig) {
    endpoint::configure(cfg, ENDPOINTS);
}

/// OpenAI's image generation (`client.images.generate`), answered by `/generate`. Errors come in OpenAI's shape.
#[utoipa::path(
    post,
    path = "/v1/images/generations",
    tag = "openai",
    request_body = OpenAiImageRequest,
    responses(
        (status = 200, description = "The images as base64 PNG", body = OpenAiImagesResponse),
        (status = 400, description = "A field breaks a rule; `param` names it", body = OpenAiErrorBody),
        (status = 413, description = "The body is larger than `--max-body-bytes`", body = OpenAiErrorBody),
        (status = 429, description = "The queue is full", body = OpenAiErrorBody),
        (status = 503, description = "The models are still loading", body = OpenAiErrorBody),
        (status = 504, description = "The deadline passed; the work was stopped", body = OpenAiErrorBody),
    )
)]
pub async fn openai_images(
    state: web::Data<AppState>,
    http: HttpRequest,
    payload: web::Payload,
) -> std::result::Result<HttpResponse, OpenAiError> {
    let started = Instant::now();
    let deadline = request_deadline(&http, &state, started)?;
    let body = read_body(payload, state.max_body_bytes).await?;
    let request: OpenAiImageRequest = parse_json(&body)?;
    match request.response_format.as_deref() {
        None | Some("b64_json") => {}
        Some(other) => {
            return Err(Error::validation(
                "response_format",
                format!("`response_format` must be `b64_json`; this server does not host image URLs. Given: `{other}`"),
            )
            .into())
        }
    }
    let (width, height) = match request.size.as_deref() {
        None | Some("auto") => (None, None),
        Some(size) => parse_size(size)?,
    };
    if let Some(user) = request.user.as_deref() {
        tracing::info!(user, "OpenAI-compatible image request");
    }
    let generation = GenerateRequest {
        prompt: request.prompt,
        n: request.n,
        width,
        height,
        best_of: request.best_of,
        model: request.model,
        ..GenerateRequest::default()
    };
    let response = run_generate(&state, generation, started, deadline).await?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    Ok(HttpResponse::Ok().json(OpenAiImagesResponse {
        created,
        data: response
            .images
            .into_iter()
            .map(|image| OpenAiImage {
                b64_json: image.png_base64,
                revised_prompt: None,
            })
            .collect(),
        model: response.model,
    }))
}

/// OpenAI's `size`, `WIDTHxHEIGHT`.
fn parse_size(size: &str) -> Result<(Option<i64>, Option<i64>)> {
    let parsed = size
        .split_once('x')
        .and_then(|(width, height)| Some((width.trim().parse::<i64>().ok()?, height.trim().parse::<i64>().ok()?)));
    match parsed {
        Some((width, height)) => Ok((Some(width), Some(height))),
        None => Err(Error::validation(
            "size",
            format!("`size` must be WIDTHxHEIGHT in pixels, e.g. 64x64. Given: `{size}`"),
        )),
    }
}
