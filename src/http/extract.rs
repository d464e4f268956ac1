//! What handlers share to read a request: the body under its limit, the query string, a page size, the
//! deadline header, and base64 image fields. Every failure is a 4xx naming the field and the limit.

use std::time::Instant;

use actix_web::{web, HttpRequest};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures_util::StreamExt;

use crate::batching::Deadline;
use crate::error::{Error, Result};
use crate::http::AppState;

/// The most items one page of a listing holds.
pub const MAX_PAGE: u32 = 1000;

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
pub async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut> {
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

/// A listing's query string, refused with a 422 when it does not parse.
pub fn query_params<T: serde::de::DeserializeOwned>(request: &HttpRequest) -> Result<T> {
    Ok(web::Query::<T>::from_query(request.query_string())
        .map_err(|err| Error::validation("query", format!("the query string is not valid: {err}")))?
        .into_inner())
}

/// A page size: 100 by default, 1 to 1000.
pub fn page_limit(limit: Option<u32>) -> Result<u32> {
    let limit = limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::validation(
            "limit",
            format!("`limit` must be between 1 and {MAX_PAGE}. Given: {limit}"),
        ));
    }
    Ok(limit)
}

/// The request's deadline: `X-Request-Timeout` seconds when the header is there (at most `--request-timeout`),
/// else `--request-timeout`, counted from the request's arrival.
pub fn request_deadline(http: &HttpRequest, state: &AppState, started: Instant) -> Result<Deadline> {
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

/// The bytes of a base64 image, with or without a `data:image/...;base64,` prefix.
pub fn base64_bytes(text: &str, field: &str) -> Result<Vec<u8>> {
    let payload = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or(rest, |(_, data)| data),
        None => text,
    };
    BASE64
        .decode(payload.trim())
        .map_err(|err| Error::validation(field, format!("`{field}` is not valid base64: {err}")))
}

/// Reads a `multipart/form-data` body into its fields, in order, as (name, bytes), refusing more than `limit`
/// bytes in all and a body that is not a readable form (400, with `hint` saying what to send).
pub async fn read_form_fields(
    request: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    hint: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    use futures_util::StreamExt as _;
    let mut multipart = actix_multipart::Multipart::new(request.headers(), payload);
    let form_error = |err: actix_multipart::MultipartError| Error::InvalidRequest {
        message: format!("the multipart/form-data body cannot be read{hint}: {err}"),
        param: None,
    };
    let mut total = 0usize;
    let mut fields = Vec::new();
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
        fields.push((name, data));
    }
    Ok(fields)
}

/// A form field's bytes as UTF-8 text, or a 422 naming it.
pub fn form_text(name: &str, data: Vec<u8>) -> Result<String> {
    String::from_utf8(data).map_err(|_| Error::validation(name, format!("`{name}` is not UTF-8 text")))
}
