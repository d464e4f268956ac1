//! The generated images this server keeps: `GET /images` lists them, `GET /images/{id}` returns one as PNG.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::{Error, Result};
use crate::http::auth::Caller;
use crate::http::endpoint::{self, Access, Endpoint, Method};
use crate::http::error::ErrorBody;
use crate::http::extract::{page_limit, query_params};
use crate::http::schemas::{ImagePage, ImageParams, ImageRecordOut};
use crate::http::AppState;

/// The routes this module serves, each with who may call it.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint::new(Method::Get, "/images", Access::Inference, |route| route.to(list_images)),
    Endpoint::new(Method::Get, "/images/{id}", Access::Inference, |route| {
        route.to(get_image)
    }),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    endpoint::configure(cfg, ENDPOINTS);
}

/// The generated images kept in the data directory, oldest first (for raters, e.g. `simulate-raters`).
#[utoipa::path(
    get,
    path = "/images",
    tag = "feedback",
    params(ImageParams),
    responses(
        (status = 200, description = "A page of stored images", body = ImagePage),
        (status = 404, description = "`after` names an id of the right shape that is gone (deleted, expired) or never was", body = ErrorBody),
        (status = 422, description = "`limit` breaks its rule, or `after` is unknown", body = ErrorBody),
    )
)]
pub async fn list_images(state: web::Data<AppState>, caller: Caller, request: HttpRequest) -> Result<HttpResponse> {
    let params: ImageParams = query_params(&request)?;
    let limit = page_limit(params.limit)?;
    let (page, has_more) = state
        .storage
        .list_images(caller.visible_tenant(), params.after.as_deref(), limit)
        .await?;
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
pub async fn get_image(state: web::Data<AppState>, caller: Caller, id: web::Path<String>) -> Result<HttpResponse> {
    let stored = state
        .storage
        .image(&id, "id", caller.visible_tenant())
        .await
        .map_err(|err| match err {
            Error::Validation { message, .. } => Error::NotFound(message),
            other => other,
        })?;
    Ok(HttpResponse::Ok()
        .content_type("image/png")
        .body(stored.png.as_ref().clone()))
}
