//! OpenAI compatibility: `POST /v1/images/generations` and `POST /v1/images/edits` (img2img), answered by
//! `/generate`'s own path, with errors in OpenAI's shape.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::{Error, Result};
use crate::http::auth::Caller;
use crate::http::endpoint::{self, Access, Endpoint, Method};
use crate::http::error::{parse_json, OpenAiError, OpenAiErrorBody};
use crate::http::extract::{form_text, read_body, read_form_fields, request_deadline};
use crate::http::generate::{decode_init_image, run_generate, run_generate_from, InitImageSource};
use crate::http::schemas::{
    GenerateRequest, GenerateResponse, OpenAiImage, OpenAiImageEditForm, OpenAiImageRequest, OpenAiImagesResponse,
};
use crate::http::AppState;

/// The routes this module serves, each with who may call it.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint::new(Method::Post, "/v1/images/generations", Access::Inference, |route| {
        route.to(openai_images)
    }),
    Endpoint::new(Method::Post, "/v1/images/edits", Access::Inference, |route| {
        route.to(openai_edits)
    }),
];

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
        (status = 429, description = "The queue is full, or the caller is past its requests or generation work per minute (`RateLimit-*` and `Retry-After` headers)", body = OpenAiErrorBody),
        (status = 503, description = "The models are still loading", body = OpenAiErrorBody),
        (status = 504, description = "The deadline passed; the work was stopped", body = OpenAiErrorBody),
    )
)]
pub async fn openai_images(
    state: web::Data<AppState>,
    caller: Caller,
    http: HttpRequest,
    payload: web::Payload,
) -> std::result::Result<HttpResponse, OpenAiError> {
    let started = Instant::now();
    let deadline = request_deadline(&http, &state, started)?;
    let body = read_body(payload, state.max_body_bytes).await?;
    let request: OpenAiImageRequest = parse_json(&body)?;
    check_response_format(request.response_format.as_deref())?;
    let (width, height) = size_of(request.size.as_deref())?;
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
    let response = run_generate(&state, &caller, generation, started, deadline).await?;
    Ok(HttpResponse::Ok().json(openai_answer(response)))
}

/// OpenAI's image edit (`client.images.edit`) as img2img: the `image` file is the starting image, as
/// `/generate`'s `init_image`. A `mask` (inpainting) is refused. Errors come in OpenAI's shape.
#[utoipa::path(
    post,
    path = "/v1/images/edits",
    tag = "openai",
    request_body(content(
        (OpenAiImageEditForm = "multipart/form-data", encoding(("image" = (content_type = "image/png, image/jpeg"))))
    ), description = "A form: `image` (PNG or JPEG), `prompt`, and optional `n`, `size`, `model`, `response_format`, \
                      `user` and `strength`"),
    responses(
        (status = 200, description = "The images as base64 PNG", body = OpenAiImagesResponse),
        (status = 400, description = "A field breaks a rule, the image does not decode, or the form cannot be read; `param` names the field", body = OpenAiErrorBody),
        (status = 413, description = "The body is larger than `--max-body-bytes`", body = OpenAiErrorBody),
        (status = 429, description = "The queue is full, or the caller is past its requests or generation work per minute (`RateLimit-*` and `Retry-After` headers)", body = OpenAiErrorBody),
        (status = 503, description = "The models are still loading", body = OpenAiErrorBody),
        (status = 504, description = "The deadline passed; the work was stopped", body = OpenAiErrorBody),
    )
)]
pub async fn openai_edits(
    state: web::Data<AppState>,
    caller: Caller,
    http: HttpRequest,
    payload: web::Payload,
) -> std::result::Result<HttpResponse, OpenAiError> {
    let started = Instant::now();
    let deadline = request_deadline(&http, &state, started)?;
    let form = read_edit_form(&http, payload, state.max_body_bytes).await?;
    check_response_format(form.response_format.as_deref())?;
    let (width, height) = size_of(form.size.as_deref())?;
    if let Some(user) = form.user.as_deref() {
        tracing::info!(user, "OpenAI-compatible image edit");
    }
    let image = decode_init_image(&state, InitImageSource::Bytes(form.image), "image").await?;
    let generation = GenerateRequest {
        prompt: form.prompt,
        n: form.n,
        width,
        height,
        strength: form.strength,
        model: form.model,
        ..GenerateRequest::default()
    };
    let response = run_generate_from(&state, &caller, generation, Some(image), started, deadline).await?;
    Ok(HttpResponse::Ok().json(openai_answer(response)))
}

/// `/generate`'s answer in OpenAI's shape.
fn openai_answer(response: GenerateResponse) -> OpenAiImagesResponse {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    OpenAiImagesResponse {
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
    }
}

fn check_response_format(format: Option<&str>) -> Result<()> {
    match format {
        None | Some("b64_json") => Ok(()),
        Some(other) => Err(Error::validation(
            "response_format",
            format!("`response_format` must be `b64_json`; this server does not host image URLs. Given: `{other}`"),
        )),
    }
}

fn size_of(size: Option<&str>) -> Result<(Option<i64>, Option<i64>)> {
    match size {
        None | Some("auto") => Ok((None, None)),
        Some(size) => parse_size(size),
    }
}

/// The edit form's fields, read from `multipart/form-data`.
struct EditForm {
    image: Vec<u8>,
    prompt: String,
    model: Option<String>,
    n: Option<i64>,
    size: Option<String>,
    response_format: Option<String>,
    user: Option<String>,
    strength: Option<f64>,
}

/// Reads the edit form: the `image` file (or `image[]`, once), text fields, and refuses `mask` and unknown fields.
async fn read_edit_form(http: &HttpRequest, payload: web::Payload, limit: usize) -> Result<EditForm> {
    let fields = read_form_fields(http, payload, limit, " (send the image as a form file)").await?;
    let mut image = None;
    let mut form = EditForm {
        image: Vec::new(),
        prompt: String::new(),
        model: None,
        n: None,
        size: None,
        response_format: None,
        user: None,
        strength: None,
    };
    let mut prompt = None;
    for (name, data) in fields {
        let text = |data: Vec<u8>| form_text(&name, data);
        let number = |value: String| -> Result<f64> {
            value
                .trim()
                .parse::<f64>()
                .map_err(|_| Error::validation(&name, format!("`{name}` must be a number. Given: `{value}`")))
        };
        match name.as_str() {
            "image" | "image[]" => {
                if image.replace(data).is_some() {
                    return Err(Error::validation(
                        "image",
                        "send one `image`; this server edits one image",
                    ));
                }
            }
            "mask" => {
                return Err(Error::validation(
                    "mask",
                    "`mask` (inpainting) is not supported; without it the whole image is reworked (img2img)",
                ))
            }
            "prompt" => prompt = Some(text(data)?),
            "model" => form.model = Some(text(data)?),
            "size" => form.size = Some(text(data)?),
            "response_format" => form.response_format = Some(text(data)?),
            "user" => form.user = Some(text(data)?),
            "n" => {
                let value = text(data)?;
                form.n =
                    Some(value.trim().parse::<i64>().map_err(|_| {
                        Error::validation("n", format!("`n` must be a whole number. Given: `{value}`"))
                    })?);
            }
            "strength" => form.strength = Some(number(text(data)?)?),
            other => {
                return Err(Error::validation(
                    other,
                    format!(
                        "unknown form field `{other}`; expected image, prompt, n, size, model, response_format, \
                         user, strength"
                    ),
                ))
            }
        }
    }
    form.image = image.ok_or_else(|| Error::validation("image", "the form needs an `image` file"))?;
    form.prompt = prompt.ok_or_else(|| Error::validation("prompt", "the form needs a `prompt` field"))?;
    Ok(form)
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
