//! `POST /generate`: validate the request into a plan, hand it to the version's engine, store the images and
//! shape the answer. `openai` answers OpenAI's route through `run_generate` too.

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::batching::Deadline;
use crate::error::{Error, Result};
use crate::http::auth::Caller;
use crate::http::endpoint::{self, Access, Endpoint, Method};
use crate::http::error::{parse_json, ErrorBody};
use crate::http::extract::{base64_bytes, read_body, request_deadline};
use crate::http::schemas::{millis, GenerateRequest, GenerateResponse, ImageOut, SelectionOut, Timings};
use crate::http::AppState;
use crate::pipeline::GenerateInput;
use crate::reward::preprocess::decode_image;
use crate::reward::{GeneratePlan, PlanInput, Selection};
use crate::storage::StoredImage;

/// The routes this module serves, each with who may call it.
pub const ENDPOINTS: &[Endpoint] = &[Endpoint::new(Method::Post, "/generate", Access::Inference, |route| {
    route.to(generate)
})];

pub fn configure(cfg: &mut web::ServiceConfig) {
    endpoint::configure(cfg, ENDPOINTS);
}

/// Generate images from a prompt. With a reward model loaded, every image carries its reward; `best_of` and
/// `min_reward` turn on rejection sampling.
#[utoipa::path(
    post,
    path = "/generate",
    tag = "generation",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "The images: best first with best_of above 1 or min_reward, else in seed order", body = GenerateResponse),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 413, description = "The body is larger than `--max-body-bytes`", body = ErrorBody),
        (status = 422, description = "A field breaks a rule; `param` names it", body = ErrorBody),
        (status = 429, description = "The queue is full, or the caller is past its requests or generation work per minute (`--rate-limit-requests`, `--rate-limit-work`, or the key's own; `RateLimit-*` headers); retry after the `Retry-After` header's seconds", body = ErrorBody),
        (status = 503, description = "The models are still loading", body = ErrorBody),
        (status = 504, description = "The deadline (`X-Request-Timeout` or `--request-timeout`) passed; the work was stopped", body = ErrorBody),
    )
)]
pub async fn generate(
    state: web::Data<AppState>,
    caller: Caller,
    http: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let started = Instant::now();
    let deadline = request_deadline(&http, &state, started)?;
    let body = read_body(payload, state.max_body_bytes).await?;
    let request: GenerateRequest = parse_json(&body)?;
    let response = run_generate(&state, &caller, request, started, deadline).await?;
    Ok(HttpResponse::Ok().json(response))
}

/// Validates, generates (and scores and chooses, with a reward model), stores the images and shapes the answer.
pub(crate) async fn run_generate(
    state: &AppState,
    caller: &Caller,
    mut request: GenerateRequest,
    started: Instant,
    deadline: Deadline,
) -> Result<GenerateResponse> {
    let init_image = match request.init_image.take() {
        None => None,
        Some(text) => Some(decode_init_image(state, InitImageSource::Base64(text), "init_image").await?),
    };
    run_generate_from(state, caller, request, init_image, started, deadline).await
}

/// Where an img2img starting image comes from: JSON's base64 text, or a form's file.
pub(crate) enum InitImageSource {
    Base64(String),
    Bytes(Vec<u8>),
}

/// Decodes a starting image off the async threads, with /score's pixel limit and errors naming `field`.
pub(crate) async fn decode_init_image(
    state: &AppState,
    source: InitImageSource,
    field: &'static str,
) -> Result<image::RgbImage> {
    let max_pixels = state.score_limits.max_image_pixels;
    web::block(move || {
        let bytes = match source {
            InitImageSource::Base64(text) => base64_bytes(&text, field)?,
            InitImageSource::Bytes(bytes) => bytes,
        };
        decode_image(&bytes, max_pixels, field)
    })
    .await
    .map_err(|err| Error::Internal(format!("image decoding stopped: {err}")))?
}

/// [`run_generate`] with the starting image already decoded.
pub(crate) async fn run_generate_from(
    state: &AppState,
    caller: &Caller,
    request: GenerateRequest,
    init_image: Option<image::RgbImage>,
    started: Instant,
    deadline: Deadline,
) -> Result<GenerateResponse> {
    let serving = state.serving()?;
    let return_candidate_scores = request.return_candidate_scores.unwrap_or(false);
    // The version is held for the whole request: a swap meanwhile lets this request finish on it.
    let model = serving
        .models
        .get(request.model.as_deref(), "model", caller.visible_tenant())
        .await?;
    let selection = request.selection_input();
    let reward_model = request.reward_model.clone();
    let mut generate: GenerateInput = request.into();
    generate.init_image = init_image;
    let input = PlanInput {
        selection,
        reward_model,
        generate,
    };
    let plan = GeneratePlan::build(
        input,
        &model.limits,
        &state.limits,
        &state.selection_limits,
        &serving.rewards,
    )?;
    // The work this request asks for counts against the caller's work per minute before any of it runs.
    let work = crate::pipeline::request::work(&plan.params, plan.candidates);
    if let Err(err) = state.rate_limits.charge_work(&state.storage, caller, work).await {
        state.metrics.rate_limited(&caller.tenant, "work");
        return Err(err);
    }
    let prompt = plan.params.prompt.clone();
    let selection = plan.selection;
    let completed = model.engine.generate(plan, Some(deadline)).await?;
    let output = completed.output;
    let timings = &output.timings;
    let mut images = Vec::with_capacity(output.images.len());
    for image in &output.images {
        let image_id = state
            .storage
            .insert_image(&StoredImage {
                png: Arc::new(image.png.clone()),
                prompt: prompt.clone(),
                seed: image.seed,
                model: model.version.clone(),
                reward: image.reward,
                tenant: caller.tenant.clone(),
            })
            .await?;
        images.push(ImageOut {
            index: image.index,
            seed: image.seed,
            png_base64: BASE64.encode(&image.png),
            reward: image.reward,
            image_id,
        });
    }
    let selection_out = output.selection.as_ref().map(|report| SelectionOut {
        reward_model: report.reward_model.clone(),
        best_of: match selection {
            Selection::BestOf { k } => Some(k),
            Selection::Threshold { .. } => None,
        },
        min_reward: match selection {
            Selection::Threshold { min_reward, .. } => Some(min_reward),
            Selection::BestOf { .. } => None,
        },
        candidates: report.candidates,
        accepted: report.accepted,
        candidate_scores: return_candidate_scores.then(|| report.candidate_scores.clone()),
    });
    Ok(GenerateResponse {
        id: format!("gen-{}", uuid::Uuid::new_v4().simple()),
        model: model.version.clone(),
        images,
        selection: selection_out,
        timings: Timings {
            queue_ms: millis(completed.queue_time),
            text_encode_ms: millis(timings.text_encode),
            denoise_ms: millis(timings.denoise),
            decode_ms: millis(timings.decode),
            png_encode_ms: millis(timings.png_encode),
            score_ms: millis(timings.score),
            inference_ms: millis(timings.ort_run),
            total_ms: millis(started.elapsed()),
        },
        warnings: output.warnings,
    })
}
