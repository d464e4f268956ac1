//! Ratings: `POST /feedback` rates an image, `DELETE /feedback/{id}` takes a rating back, `GET /feedback` lists
//! them and `GET /feedback/export` streams them as JSON lines. Each rating belongs to the tenant of the key that
//! gave it; a key sees and deletes only its tenant's (admin keys: every tenant's), and another tenant's id is
//! answered as one that does not exist.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::error::{Error, Result};
use crate::http::auth::Caller;
use crate::http::endpoint::{self, Access, Endpoint, Method};
use crate::http::error::{parse_json, ErrorBody};
use crate::http::extract::{base64_bytes, page_limit, query_params, read_body};
use crate::http::schemas::{FeedbackOut, FeedbackPage, FeedbackParams, FeedbackRequest};
use crate::http::AppState;
use crate::pipeline::request::check_prompt_bytes;
use crate::reward::preprocess::decode_image;
use crate::storage::{check_rater, Feedback, FeedbackQuery, Label, NewFeedback};

/// The routes this module serves, each with who may call it.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint::new(Method::Post, "/feedback", Access::Inference, |route| {
        route.to(post_feedback)
    }),
    Endpoint::new(Method::Get, "/feedback", Access::Feedback, |route| {
        route.to(list_feedback)
    }),
    Endpoint::new(Method::Get, "/feedback/export", Access::Feedback, |route| {
        route.to(export_feedback)
    }),
    Endpoint::new(Method::Delete, "/feedback/{id}", Access::Inference, |route| {
        route.to(delete_feedback)
    }),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    endpoint::configure(cfg, ENDPOINTS);
}

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
        tenant: feedback.tenant,
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
pub async fn post_feedback(state: web::Data<AppState>, caller: Caller, payload: web::Payload) -> Result<HttpResponse> {
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
            let stored = state
                .storage
                .image(&image_id, "image_id", caller.visible_tenant())
                .await?;
            NewFeedback {
                image_id: Some(image_id),
                model: Some(stored.model),
                prompt: stored.prompt,
                label,
                rater: request.rater,
                image: stored.png,
                extension: "png",
                tenant: caller.tenant.clone(),
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
                tenant: caller.tenant.clone(),
            }
        }
    };
    let stored = state.storage.insert_feedback(&new).await?;
    state.metrics.feedback.with_label_values(&[label.name()]).inc();
    Ok(HttpResponse::Created().json(feedback_out(stored, None)))
}

/// Take back a rating (the console's undo): its row and its copy of the image are deleted. A key may take back
/// only its own tenant's ratings (admin keys: any); another tenant's id is answered as unknown.
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
pub async fn delete_feedback(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let id = id.into_inner();
    let deleted = state
        .storage
        .delete_feedback(&id, caller.visible_tenant())
        .await?
        .ok_or_else(|| Error::NotFound(format!("no rating `{id}` (it may have been deleted already)")))?;
    state
        .metrics
        .feedback_deleted
        .with_label_values(&[deleted.label.as_str()])
        .inc();
    Ok(HttpResponse::Ok().json(feedback_out(deleted, None)))
}

/// The filters of a feedback listing, from the query string, limited to what `caller` may see.
fn feedback_query(request: &HttpRequest, caller: &Caller) -> Result<(FeedbackQuery, bool)> {
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
            tenant: caller.visible_tenant().map(String::from),
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
        (status = 404, description = "`after` names an id of the right shape that is gone (deleted, expired) or never was", body = ErrorBody),
        (status = 422, description = "A filter or `limit` breaks a rule, or `after` is unknown", body = ErrorBody),
    )
)]
pub async fn list_feedback(state: web::Data<AppState>, caller: Caller, request: HttpRequest) -> Result<HttpResponse> {
    let (query, _) = feedback_query(&request, &caller)?;
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
        (status = 404, description = "`after` names an id of the right shape that is gone (deleted, expired) or never was", body = ErrorBody),
        (status = 422, description = "A filter breaks a rule", body = ErrorBody),
    )
)]
pub async fn export_feedback(state: web::Data<AppState>, caller: Caller, request: HttpRequest) -> Result<HttpResponse> {
    let (mut query, include_images) = feedback_query(&request, &caller)?;
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
