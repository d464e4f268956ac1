//! `POST /score` and `POST /rerank`: images (JSON base64, form files, or stored `image_id`s) scored against a
//! prompt by a reward model.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::error::{Error, Result};
use crate::http::auth::Caller;
use crate::http::endpoint::{self, Access, Endpoint, Method};
use crate::http::error::{parse_json, ErrorBody};
use crate::http::extract::{base64_bytes, form_text, read_body, read_form_fields};
use crate::http::schemas::{
    millis, Prompts, RerankForm, RerankRequest, RerankResult, ScoreForm, ScoreRequest, ScoreResponse, ScoreTimings,
};
use crate::http::{AppState, ScoreLimits};
use crate::pipeline::request::check_prompt_bytes;
use crate::pipeline::RequestLimits;
use crate::reward::best_of::top_n;
use crate::reward::preprocess::decode_image;
use crate::reward::{Scored, Scorer};
use crate::storage::Storage;

/// The routes this module serves, each with who may call it.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint::new(Method::Post, "/score", Access::Inference, |route| route.to(score)),
    Endpoint::new(Method::Post, "/rerank", Access::Inference, |route| route.to(rerank)),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    endpoint::configure(cfg, ENDPOINTS);
}

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

/// Replaces each `image_id` with the stored PNG; another tenant's id is refused as unknown.
async fn load_stored(images: &mut [(String, ImageSource)], storage: &Storage, caller: &Caller) -> Result<()> {
    for (field, source) in images.iter_mut() {
        if let ImageSource::Id(id) = source {
            let stored = storage.image(id, field, caller.visible_tenant()).await?;
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
    let fields = read_form_fields(request, payload, limit, "").await?;
    let mut prompts: Vec<String> = Vec::new();
    let mut images: Vec<(String, ImageSource)> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut model = None;
    let mut top_k = None;
    let mut return_images = false;
    for (name, data) in fields {
        let text = |data: Vec<u8>| form_text(&name, data);
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
    caller: &Caller,
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
    load_stored(&mut input.images, &state.storage, caller).await?;
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
        (ScoreForm = "multipart/form-data", encoding(("image" = (content_type = "image/png, image/jpeg"))))
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
pub async fn score(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let started = Instant::now();
    let input = read_score_input(&state, &caller, &request, payload, |body: ScoreRequest| {
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
        (RerankForm = "multipart/form-data", encoding(("image" = (content_type = "image/png, image/jpeg"))))
    )),
    responses(
        (status = 200, description = "The images' indices and scores, best first", body = [RerankResult]),
        (status = 400, description = "The body is not JSON or not a readable form", body = ErrorBody),
        (status = 413, description = "The body is larger than `--max-body-bytes`", body = ErrorBody),
        (status = 422, description = "A field breaks a rule; `param` names it", body = ErrorBody),
        (status = 503, description = "The models are still loading", body = ErrorBody),
    )
)]
pub async fn rerank(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let input = read_score_input(&state, &caller, &request, payload, |body: RerankRequest| {
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
