//! Route handlers. They validate, hand work to the engine and shape responses; they never call ONNX Runtime.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures_util::StreamExt;

use crate::batching::Deadline;
use crate::error::{Error, Result};
use crate::http::error::{parse_json, ErrorBody, OpenAiError, OpenAiErrorBody};
use crate::http::schemas::{
    FeedbackOut, FeedbackPage, FeedbackParams, FeedbackRequest, GenerateRequest, GenerateResponse, HealthResponse,
    ImageOut, ImagePage, ImageParams, ImageRecordOut, OpenAiImage, OpenAiImageRequest, OpenAiImagesResponse, Prompts,
    RerankRequest, RerankResult, ScoreRequest, ScoreResponse, ScoreTimings, SelectionOut, Timings,
};
use crate::http::{AppState, ScoreLimits};
use crate::pipeline::request::{check_prompt_bytes, check_work, validate};
use crate::pipeline::RequestLimits;
use crate::reward::best_of::{top_n, validate_selection};
use crate::reward::preprocess::decode_image;
use crate::reward::{Scored, Scorer, Selection};
use crate::storage::{check_rater, Feedback, FeedbackQuery, Label, NewFeedback, Storage, StoredImage};

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
pub(crate) async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|err| Error::InvalidRequest {
            message: format!("cannot read the request body: {err}"),
            param: None,
        })?;
        if body.len() + chunk.len() > limit {
            return Err(Error::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn millis(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
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
        (status = 429, description = "The queue is full; retry after the `Retry-After` header's seconds", body = ErrorBody),
        (status = 503, description = "The models are still loading", body = ErrorBody),
        (status = 504, description = "The deadline (`X-Request-Timeout` or `--request-timeout`) passed; the work was stopped", body = ErrorBody),
    )
)]
#[post("/generate")]
pub async fn generate(state: web::Data<AppState>, http: HttpRequest, payload: web::Payload) -> Result<HttpResponse> {
    let started = Instant::now();
    let deadline = request_deadline(&http, &state, started)?;
    let body = read_body(payload, state.max_body_bytes).await?;
    let request: GenerateRequest = parse_json(&body)?;
    let response = run_generate(&state, request, started, deadline).await?;
    Ok(HttpResponse::Ok().json(response))
}

/// The request's deadline: `X-Request-Timeout` seconds when the header is there (at most `--request-timeout`),
/// else `--request-timeout`, counted from the request's arrival.
fn request_deadline(http: &HttpRequest, state: &AppState, started: Instant) -> Result<Deadline> {
    let limit = state.request_timeout.as_secs_f64();
    let seconds = match http.headers().get(REQUEST_TIMEOUT_HEADER) {
        None => limit,
        Some(value) => {
            let text = value.to_str().unwrap_or("");
            match text.trim().parse::<f64>() {
                Ok(seconds) if seconds.is_finite() && seconds > 0.0 && seconds <= limit => seconds,
                _ => {
                    return Err(Error::InvalidRequest {
                        message: format!(
                            "the `{REQUEST_TIMEOUT_HEADER}` header must be a number of seconds above 0 and at most \
                             {limit} (--request-timeout). Given: `{}`",
                            text.chars().take(40).collect::<String>()
                        ),
                        param: Some(REQUEST_TIMEOUT_HEADER.to_string()),
                    })
                }
            }
        }
    };
    Ok(Deadline::after(started, seconds))
}

/// The header a client sets to give one request a shorter deadline than `--request-timeout`.
pub const REQUEST_TIMEOUT_HEADER: &str = "X-Request-Timeout";

/// Validates, generates (and scores and chooses, with a reward model), stores the images and shapes the answer.
async fn run_generate(
    state: &AppState,
    request: GenerateRequest,
    started: Instant,
    deadline: Deadline,
) -> Result<GenerateResponse> {
    let serving = state.serving()?;
    let selection_input = request.selection_input();
    let reward_model = request.reward_model.clone();
    let return_candidate_scores = request.return_candidate_scores.unwrap_or(false);
    // The version is held for the whole request: a swap meanwhile lets this request finish on it.
    let model = serving.models.get(request.model.as_deref(), "model").await?;
    let params = validate(request.into(), &model.limits, &state.limits)?;
    let selection = validate_selection(
        &selection_input,
        params.num_images,
        &state.selection_limits,
        !serving.rewards.is_empty(),
    )?;
    let scorer = if serving.rewards.is_empty() && reward_model.is_none() {
        None
    } else {
        Some(serving.rewards.get(reward_model.as_deref(), "reward_model")?.clone())
    };
    let candidates = match scorer {
        Some(_) => selection.budget(params.num_images),
        None => params.num_images,
    };
    check_work(&params, candidates, &state.limits)?;
    let prompt = params.prompt.clone();
    let completed = model.engine.generate(params, selection, scorer, Some(deadline)).await?;
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

// ------------------------------------------------------------------------------------------------------------
// Scoring: /score and /rerank
// ------------------------------------------------------------------------------------------------------------

/// Where one image to score comes from. `field` names it in errors, e.g. `images[2]`.
enum ImageSource {
    Base64(String),
    Bytes(Vec<u8>),
    /// An `image_id`, looked up in storage before decoding.
    Id(String),
    Stored(Arc<Vec<u8>>),
}

/// A scoring request after reading JSON or multipart, before any image is decoded.
struct ScoreInput {
    prompts: Prompts,
    images: Vec<(String, ImageSource)>,
    model: Option<String>,
    top_k: Option<i64>,
    return_images: bool,
}

/// The images to score: sent (`images`, as base64 or form files) or stored (`image_ids`), never both.
fn image_sources(
    sent: Option<Vec<(String, ImageSource)>>,
    ids: Option<Vec<String>>,
) -> Result<Vec<(String, ImageSource)>> {
    match (sent, ids) {
        (Some(_), Some(_)) => Err(Error::validation("image_ids", "send `images` or `image_ids`, not both")),
        (None, None) => Err(Error::validation(
            "images",
            "`images` (base64 PNG or JPEG files) or `image_ids` (from /generate) is required",
        )),
        (Some(sent), None) => Ok(sent),
        (None, Some(ids)) => Ok(ids
            .into_iter()
            .enumerate()
            .map(|(index, id)| (format!("image_ids[{index}]"), ImageSource::Id(id)))
            .collect()),
    }
}

/// Replaces each `image_id` with the stored PNG.
async fn load_stored(images: &mut [(String, ImageSource)], storage: &Storage) -> Result<()> {
    for (field, source) in images.iter_mut() {
        if let ImageSource::Id(id) = source {
            let stored = storage.image(id, field).await?;
            *source = ImageSource::Stored(stored.png);
        }
    }
    Ok(())
}

impl ScoreInput {
    fn from_json(
        prompts: Prompts,
        images: Option<Vec<String>>,
        image_ids: Option<Vec<String>>,
        model: Option<String>,
    ) -> Result<Self> {
        let sent = images.map(|images| {
            images
                .into_iter()
                .enumerate()
                .map(|(index, text)| (format!("images[{index}]"), ImageSource::Base64(text)))
                .collect()
        });
        Ok(ScoreInput {
            prompts,
            images: image_sources(sent, image_ids)?,
            model,
            top_k: None,
            return_images: false,
        })
    }
}

fn is_multipart(request: &HttpRequest) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

/// Reads `multipart/form-data`: `prompt` (once, or once per image), `image` files (or `images`), `image_id`s,
/// and optional `model`, `top_k` and `return_images` fields.
async fn read_multipart(request: &HttpRequest, payload: web::Payload, limit: usize) -> Result<ScoreInput> {
    let mut multipart = actix_multipart::Multipart::new(request.headers(), payload);
    let mut total = 0usize;
    let mut prompts: Vec<String> = Vec::new();
    let mut images: Vec<(String, ImageSource)> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut model = None;
    let mut top_k = None;
    let mut return_images = false;
    let form_error = |err: actix_multipart::MultipartError| Error::InvalidRequest {
        message: format!("the multipart/form-data body cannot be read: {err}"),
        param: None,
    };
    while let Some(field) = multipart.next().await {
        let mut field = field.map_err(form_error)?;
        let name = field.name().unwrap_or_default().to_string();
        let mut data = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(form_error)?;
            total += chunk.len();
            if total > limit {
                return Err(Error::PayloadTooLarge { limit });
            }
            data.extend_from_slice(&chunk);
        }
        let text = |data: Vec<u8>| {
            String::from_utf8(data).map_err(|_| Error::validation(&name, format!("`{name}` is not UTF-8 text")))
        };
        match name.as_str() {
            "prompt" => prompts.push(text(data)?),
            "image" | "images" | "images[]" | "file" => {
                images.push((format!("images[{}]", images.len()), ImageSource::Bytes(data)))
            }
            "image_id" | "image_ids" | "image_ids[]" => ids.push(text(data)?.trim().to_string()),
            "model" => model = Some(text(data)?),
            "top_k" => {
                let value = text(data)?;
                top_k = Some(value.trim().parse::<i64>().map_err(|_| {
                    Error::validation("top_k", format!("`top_k` must be a whole number. Given: `{value}`"))
                })?);
            }
            "return_images" => {
                let value = text(data)?;
                return_images = match value.trim() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(Error::validation(
                            "return_images",
                            format!("`return_images` must be true or false. Given: `{other}`"),
                        ))
                    }
                };
            }
            other => {
                return Err(Error::validation(
                    other,
                    format!(
                        "unknown form field `{other}`; expected prompt, image, image_id, model, top_k, return_images"
                    ),
                ))
            }
        }
    }
    let prompts = match prompts.len() {
        0 => return Err(Error::validation("prompt", "the form needs a `prompt` field")),
        1 => Prompts::One(prompts.remove(0)),
        _ => Prompts::Each(prompts),
    };
    let sent = (!images.is_empty()).then_some(images);
    Ok(ScoreInput {
        prompts,
        images: image_sources(sent, (!ids.is_empty()).then_some(ids))?,
        model,
        top_k,
        return_images,
    })
}

/// One prompt per image: a single prompt is repeated, a list must match the images one to one.
fn prompts_per_image(prompts: Prompts, count: usize, limits: &RequestLimits) -> Result<Vec<String>> {
    let check = |field: &str, prompt: &str| -> Result<()> {
        if prompt.trim().is_empty() {
            return Err(Error::validation(field, format!("`{field}` must not be empty")));
        }
        check_prompt_bytes(field, prompt, limits)
    };
    match prompts {
        Prompts::One(prompt) => {
            check("prompt", &prompt)?;
            Ok(vec![prompt; count])
        }
        Prompts::Each(prompts) => {
            if prompts.len() != count {
                return Err(Error::validation(
                    "prompt",
                    format!(
                        "`prompt` has {} entries for {count} images; send one prompt, or one per image",
                        prompts.len()
                    ),
                ));
            }
            for (index, prompt) in prompts.iter().enumerate() {
                check(&format!("prompt[{index}]"), prompt)?;
            }
            Ok(prompts)
        }
    }
}

/// The bytes of a base64 image, with or without a `data:image/...;base64,` prefix.
fn base64_bytes(text: &str, field: &str) -> Result<Vec<u8>> {
    let payload = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or(rest, |(_, data)| data),
        None => text,
    };
    BASE64
        .decode(payload.trim())
        .map_err(|err| Error::validation(field, format!("`{field}` is not valid base64: {err}")))
}

/// Decoded, resized and normalised images for `scorer`, ready to batch; done on a blocking thread.
struct Prepared {
    pixels: Vec<f32>,
    /// The images as base64, kept only when the caller wants them back.
    base64: Vec<String>,
    elapsed: std::time::Duration,
}

async fn prepare_images(
    scorer: &Arc<Scorer>,
    images: Vec<(String, ImageSource)>,
    limits: ScoreLimits,
    keep_base64: bool,
) -> Result<Prepared> {
    let count = images.len();
    if count == 0 || count > limits.max_images {
        return Err(Error::validation(
            "images",
            format!(
                "send between 1 and {} images (--max-score-images). Given: {count}",
                limits.max_images
            ),
        ));
    }
    let scorer = scorer.clone();
    let started = Instant::now();
    let prepared = web::block(move || -> Result<(Vec<f32>, Vec<String>)> {
        let preprocessor = scorer.preprocessor();
        let mut pixels = Vec::with_capacity(count * preprocessor.values_per_image());
        let mut base64 = Vec::new();
        for (field, source) in images {
            let bytes: std::borrow::Cow<'_, [u8]> = match &source {
                ImageSource::Base64(text) => base64_bytes(text, &field)?.into(),
                ImageSource::Bytes(bytes) => bytes.as_slice().into(),
                ImageSource::Stored(png) => png.as_slice().into(),
                ImageSource::Id(id) => {
                    return Err(Error::Internal(format!(
                        "`{field}`: image `{id}` was not loaded from storage"
                    )))
                }
            };
            let image = decode_image(&bytes, limits.max_image_pixels, &field)?;
            preprocessor.pixel_values_into(&image, &mut pixels);
            if keep_base64 {
                base64.push(match &source {
                    ImageSource::Base64(text) => text.clone(),
                    _ => BASE64.encode(&bytes),
                });
            }
        }
        Ok((pixels, base64))
    })
    .await
    .map_err(|err| Error::Internal(format!("image decoding stopped: {err}")))??;
    Ok(Prepared {
        pixels: prepared.0,
        base64: prepared.1,
        elapsed: started.elapsed(),
    })
}

async fn read_score_input<T, F>(
    state: &AppState,
    request: &HttpRequest,
    payload: web::Payload,
    from_json: F,
) -> Result<ScoreInput>
where
    T: serde::de::DeserializeOwned,
    F: FnOnce(T) -> Result<ScoreInput>,
{
    let mut input = if is_multipart(request) {
        read_multipart(request, payload, state.max_body_bytes).await?
    } else {
        let body = read_body(payload, state.max_body_bytes).await?;
        from_json(parse_json(&body)?)?
    };
    load_stored(&mut input.images, &state.storage).await?;
    Ok(input)
}

/// Scores with the chosen reward model; returns the scores, the timings and the images as base64 if kept.
async fn score_input(state: &AppState, input: ScoreInput) -> Result<(Scored, String, Prepared)> {
    let serving = state.serving()?;
    let scorer = serving.rewards.get(input.model.as_deref(), "model")?;
    let prompts = prompts_per_image(input.prompts, input.images.len(), &state.limits)?;
    let mut prepared = prepare_images(scorer, input.images, state.score_limits, input.return_images).await?;
    // The scorer owns the pixels from here; the caller keeps only the timings and the kept base64.
    let pixels = std::mem::take(&mut prepared.pixels);
    let scored = scorer.score(prompts, pixels).await?;
    Ok((scored, scorer.name().to_string(), prepared))
}

/// Score images against a prompt with a reward model.
#[utoipa::path(
    post,
    path = "/score",
    tag = "reward",
    request_body(content(
        (ScoreRequest = "application/json"),
        (ScoreRequest = "multipart/form-data")
    ), description = "JSON, or a form with `prompt` (once, or once per image), `image` files (PNG or JPEG) or \
                      `image_id` fields, and an optional `model`"),
    responses(
        (status = 200, description = "One score per image, in order", body = ScoreResponse),
        (status = 400, description = "The body is not JSON or not a readable form", body = ErrorBody),
        (status = 413, description = "The body is larger than `--max-body-bytes`", body = ErrorBody),
        (status = 422, description = "An image does not decode or is too large, the counts do not match, or an id is unknown; `param` names it", body = ErrorBody),
        (status = 429, description = "The scorer's queue is full", body = ErrorBody),
        (status = 503, description = "The models are still loading", body = ErrorBody),
    )
)]
#[post("/score")]
pub async fn score(state: web::Data<AppState>, request: HttpRequest, payload: web::Payload) -> Result<HttpResponse> {
    let started = Instant::now();
    let input = read_score_input(&state, &request, payload, |body: ScoreRequest| {
        ScoreInput::from_json(body.prompt, body.images, body.image_ids, body.model)
    })
    .await?;
    let (scored, model, prepared) = score_input(&state, input).await?;
    Ok(HttpResponse::Ok().json(ScoreResponse {
        scores: scored.scores,
        model,
        timings: ScoreTimings {
            decode_ms: millis(prepared.elapsed),
            queue_ms: millis(scored.queue_time),
            score_ms: millis(scored.score_time),
            total_ms: millis(started.elapsed()),
            batch_sizes: scored.batch_sizes,
        },
    }))
}

/// Rank images for a prompt by reward, best first.
#[utoipa::path(
    post,
    path = "/rerank",
    tag = "reward",
    request_body(content(
        (RerankRequest = "application/json"),
        (RerankRequest = "multipart/form-data")
    )),
    responses(
        (status = 200, description = "The images' indices and scores, best first", body = [RerankResult]),
        (status = 400, description = "The body is not JSON or not a readable form", body = ErrorBody),
        (status = 413, description = "The body is larger than `--max-body-bytes`", body = ErrorBody),
        (status = 422, description = "A field breaks a rule; `param` names it", body = ErrorBody),
        (status = 503, description = "The models are still loading", body = ErrorBody),
    )
)]
#[post("/rerank")]
pub async fn rerank(state: web::Data<AppState>, request: HttpRequest, payload: web::Payload) -> Result<HttpResponse> {
    let input = read_score_input(&state, &request, payload, |body: RerankRequest| {
        let mut input = ScoreInput::from_json(Prompts::One(body.prompt), body.images, body.image_ids, body.model)?;
        input.top_k = body.top_k;
        input.return_images = body.return_images.unwrap_or(false);
        Ok(input)
    })
    .await?;
    if let Prompts::Each(_) = input.prompts {
        return Err(Error::validation(
            "prompt",
            "`/rerank` ranks images for one prompt; send one `prompt`",
        ));
    }
    let count = input.images.len();
    let top_k = match input.top_k {
        None => count,
        Some(k) if k >= 1 => (k as usize).min(count),
        Some(k) => {
            return Err(Error::validation(
                "top_k",
                format!("`top_k` must be at least 1. Given: {k}"),
            ))
        }
    };
    let (scored, _, prepared) = score_input(&state, input).await?;
    let mut base64 = prepared.base64.into_iter().map(Some).collect::<Vec<_>>();
    let results: Vec<RerankResult> = top_n(&scored.scores, top_k)
        .into_iter()
        .map(|index| RerankResult {
            index,
            score: scored.scores[index],
            image: base64.get_mut(index).and_then(Option::take),
        })
        .collect();
    Ok(HttpResponse::Ok().json(results))
}

// ------------------------------------------------------------------------------------------------------------
// Feedback
// ------------------------------------------------------------------------------------------------------------

const MAX_PAGE: u32 = 1000;

fn label_of(name: &str) -> Result<Label> {
    Label::from_name(name).ok_or_else(|| {
        Error::validation(
            "label",
            format!("`label` must be one of {}. Given: `{name}`", Label::NAMES),
        )
    })
}

fn feedback_out(feedback: Feedback, image_base64: Option<String>) -> FeedbackOut {
    FeedbackOut {
        id: feedback.id,
        created_at: feedback.created_at,
        image_id: feedback.image_id,
        model: feedback.model,
        prompt: feedback.prompt,
        label: feedback.label,
        rater: feedback.rater,
        image_base64,
    }
}

/// Rate an image: one this server generated (`image_id`), or one sent with its prompt.
#[utoipa::path(
    post,
    path = "/feedback",
    tag = "feedback",
    request_body = FeedbackRequest,
    responses(
        (status = 201, description = "The stored rating", body = FeedbackOut),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 413, description = "The body is larger than `--max-body-bytes`", body = ErrorBody),
        (status = 422, description = "A field breaks a rule, or the image is unknown or does not decode; `param` names it", body = ErrorBody),
    )
)]
#[post("/feedback")]
pub async fn post_feedback(state: web::Data<AppState>, payload: web::Payload) -> Result<HttpResponse> {
    let body = read_body(payload, state.max_body_bytes).await?;
    let request: FeedbackRequest = parse_json(&body)?;
    let label = label_of(&request.label)?;
    if let Some(rater) = &request.rater {
        check_rater("rater", rater)?;
    }
    let new = match (request.image_id, request.image) {
        (Some(_), Some(_)) => {
            return Err(Error::validation("image", "send `image_id` or `image`, not both"));
        }
        (None, None) => {
            return Err(Error::validation(
                "image_id",
                "`image_id` (from /generate), or `image` (base64 PNG or JPEG) with `prompt`, is required",
            ));
        }
        (Some(image_id), None) => {
            if request.prompt.is_some() {
                return Err(Error::validation(
                    "prompt",
                    "leave `prompt` out with `image_id`: the image is rated against the prompt it was generated for",
                ));
            }
            let stored = state.storage.image(&image_id, "image_id").await?;
            NewFeedback {
                image_id: Some(image_id),
                model: Some(stored.model),
                prompt: stored.prompt,
                label,
                rater: request.rater,
                image: stored.png,
                extension: "png",
            }
        }
        (None, Some(image)) => {
            let prompt = request.prompt.unwrap_or_default();
            if prompt.trim().is_empty() {
                return Err(Error::validation(
                    "prompt",
                    "`prompt` is required with `image`, and must not be empty",
                ));
            }
            check_prompt_bytes("prompt", &prompt, &state.limits)?;
            let bytes = base64_bytes(&image, "image")?;
            let max_pixels = state.score_limits.max_image_pixels;
            let bytes = web::block(move || decode_image(&bytes, max_pixels, "image").map(|_| bytes))
                .await
                .map_err(|err| Error::Internal(format!("image decoding stopped: {err}")))??;
            let extension = if bytes.starts_with(b"\x89PNG") { "png" } else { "jpg" };
            NewFeedback {
                image_id: None,
                model: None,
                prompt,
                label,
                rater: request.rater,
                image: Arc::new(bytes),
                extension,
            }
        }
    };
    let stored = state.storage.insert_feedback(&new).await?;
    state.metrics.feedback.with_label_values(&[label.name()]).inc();
    Ok(HttpResponse::Created().json(feedback_out(stored, None)))
}

/// Take back a rating (the console's undo): its row and its copy of the image are deleted. The id is only known
/// to whoever made the rating, or to an admin (listing ratings needs the admin scope).
#[utoipa::path(
    delete,
    path = "/feedback/{id}",
    tag = "feedback",
    params(("id" = String, Path, description = "The rating's id, from `POST /feedback`")),
    responses(
        (status = 200, description = "The deleted rating", body = FeedbackOut),
        (status = 404, description = "No such rating (or it was already deleted)", body = ErrorBody),
    )
)]
#[delete("/feedback/{id}")]
pub async fn delete_feedback(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse> {
    let id = id.into_inner();
    let deleted = state
        .storage
        .delete_feedback(&id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no rating `{id}` (it may have been deleted already)")))?;
    state
        .metrics
        .feedback_deleted
        .with_label_values(&[deleted.label.as_str()])
        .inc();
    Ok(HttpResponse::Ok().json(feedback_out(deleted, None)))
}

/// A listing's query string, refused with a 422 when it does not parse.
pub(crate) fn query_params<T: serde::de::DeserializeOwned>(request: &HttpRequest) -> Result<T> {
    Ok(web::Query::<T>::from_query(request.query_string())
        .map_err(|err| Error::validation("query", format!("the query string is not valid: {err}")))?
        .into_inner())
}

/// A page size: 100 by default, 1 to 1000.
pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32> {
    let limit = limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::validation(
            "limit",
            format!("`limit` must be between 1 and {MAX_PAGE}. Given: {limit}"),
        ));
    }
    Ok(limit)
}

/// The filters of a feedback listing, from the query string.
fn feedback_query(request: &HttpRequest) -> Result<(FeedbackQuery, bool)> {
    let params: FeedbackParams = query_params(request)?;
    let limit = page_limit(params.limit)?;
    let label = params.label.as_deref().map(label_of).transpose()?;
    Ok((
        FeedbackQuery {
            label,
            rater: params.rater,
            image_id: params.image_id,
            model: params.model,
            after: params.after,
            limit,
        },
        params.include_images.unwrap_or(false),
    ))
}

/// List ratings, oldest first, with filters and paging.
#[utoipa::path(
    get,
    path = "/feedback",
    tag = "feedback",
    params(FeedbackParams),
    responses(
        (status = 200, description = "A page of ratings", body = FeedbackPage),
        (status = 422, description = "A filter or `limit` breaks a rule, or `after` is unknown", body = ErrorBody),
    )
)]
#[get("/feedback")]
pub async fn list_feedback(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse> {
    let (query, _) = feedback_query(&request)?;
    let (page, has_more) = state.storage.list_feedback(&query).await?;
    let last_id = page.last().map(|feedback| feedback.id.clone());
    Ok(HttpResponse::Ok().json(FeedbackPage {
        data: page.into_iter().map(|feedback| feedback_out(feedback, None)).collect(),
        has_more,
        last_id,
    }))
}

/// Every rating that matches the filters, as JSON lines (`application/x-ndjson`), streamed page by page.
#[utoipa::path(
    get,
    path = "/feedback/export",
    tag = "feedback",
    params(FeedbackParams),
    responses(
        (status = 200, description = "One rating per line, oldest first", content_type = "application/x-ndjson", body = FeedbackOut),
        (status = 422, description = "A filter breaks a rule", body = ErrorBody),
    )
)]
#[get("/feedback/export")]
pub async fn export_feedback(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse> {
    let (mut query, include_images) = feedback_query(&request)?;
    query.limit = 256;
    // Check the filters and the cursor before the 200 goes out.
    state
        .storage
        .list_feedback(&FeedbackQuery {
            limit: 1,
            ..query.clone()
        })
        .await?;
    let storage = state.storage.clone();
    let pages = futures_util::stream::unfold(Some(query), move |cursor| {
        let storage = storage.clone();
        async move {
            let query = cursor?;
            let lines = async {
                let (page, has_more) = storage.list_feedback(&query).await?;
                let next = page.last().filter(|_| has_more).map(|last| FeedbackQuery {
                    after: Some(last.id.clone()),
                    ..query.clone()
                });
                let mut lines = Vec::new();
                for feedback in page {
                    let image = if include_images {
                        Some(BASE64.encode(storage.feedback_image(&feedback).await?))
                    } else {
                        None
                    };
                    let mut line = serde_json::to_vec(&feedback_out(feedback, image))
                        .map_err(|err| Error::Internal(format!("cannot encode a rating: {err}")))?;
                    line.push(b'\n');
                    lines.extend_from_slice(&line);
                }
                Ok::<_, Error>((web::Bytes::from(lines), next))
            }
            .await;
            match lines {
                Ok((bytes, next)) => Some((Ok::<_, Error>(bytes), next)),
                Err(err) => {
                    tracing::error!(error = %err, "the feedback export stopped");
                    Some((Err(err), None))
                }
            }
        }
    });
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").streaming(pages))
}

/// The generated images kept in the data directory, oldest first (for raters, e.g. `simulate-raters`).
#[utoipa::path(
    get,
    path = "/images",
    tag = "feedback",
    params(ImageParams),
    responses(
        (status = 200, description = "A page of stored images", body = ImagePage),
        (status = 422, description = "`limit` breaks its rule, or `after` is unknown", body = ErrorBody),
    )
)]
#[get("/images")]
pub async fn list_images(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse> {
    let params: ImageParams = query_params(&request)?;
    let limit = page_limit(params.limit)?;
    let (page, has_more) = state.storage.list_images(params.after.as_deref(), limit).await?;
    let last_id = page.last().map(|record| record.id.clone());
    Ok(HttpResponse::Ok().json(ImagePage {
        data: page
            .into_iter()
            .map(|record| ImageRecordOut {
                id: record.id,
                created_at: record.created_at,
                prompt: record.prompt,
                seed: record.seed,
                model: record.model,
                reward: record.reward,
            })
            .collect(),
        has_more,
        last_id,
    }))
}

/// One stored image as a PNG file.
#[utoipa::path(
    get,
    path = "/images/{id}",
    tag = "feedback",
    params(("id" = String, Path, description = "An `image_id` from `/generate`")),
    responses(
        (status = 200, description = "The PNG", content_type = "image/png"),
        (status = 404, description = "No such image (or it expired under --image-retention)", body = ErrorBody),
    )
)]
#[get("/images/{id}")]
pub async fn get_image(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse> {
    let stored = state.storage.image(&id, "id").await.map_err(|err| match err {
        Error::Validation { message, .. } => Error::NotFound(message),
        other => other,
    })?;
    Ok(HttpResponse::Ok()
        .content_type("image/png")
        .body(stored.png.as_ref().clone()))
}

// ------------------------------------------------------------------------------------------------------------
// OpenAI compatibility
// ------------------------------------------------------------------------------------------------------------

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
#[post("/v1/images/generations")]
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

/// Liveness, with the model and the execution provider.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process is alive", body = HealthResponse)))]
#[get("/health")]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(health_body(&state))
}

fn health_body(state: &AppState) -> HealthResponse {
    let serving = state.serving.get();
    HealthResponse {
        status: "ok".into(),
        ready: serving.is_some(),
        model: serving.map_or_else(
            || state.model_name.clone(),
            |serving| serving.models.active().version.clone(),
        ),
        device: state.device.clone(),
        execution_provider: serving.map(|serving| serving.provider.label().to_string()),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Readiness: 200 once the models are loaded and warmed up, 503 before.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = HealthResponse),
        (status = 503, description = "Still loading", body = ErrorBody),
    ))]
#[get("/ready")]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse> {
    if state.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::Unavailable(
            "the server is shutting down: in-flight requests are finishing".into(),
        ));
    }
    state.serving()?;
    Ok(HttpResponse::Ok().json(health_body(&state)))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    if let Some(serving) = state.serving.get() {
        state.metrics.queue_depth.set(serving.models.queued() as i64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// This OpenAPI document (JSON). Swagger UI at `/docs/` reads it.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
#[get("/openapi.json")]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(crate::http::openapi::spec_json())
}

/// Any path we do not serve.
pub async fn not_found(request: actix_web::HttpRequest) -> Result<HttpResponse> {
    Err(Error::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.path()
    )))
}
