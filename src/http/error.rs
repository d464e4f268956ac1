//! The one place where an [`Error`] becomes an HTTP status and a JSON body `{"error":{"type","message","param"}}`.

use actix_web::http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::Error;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case kind, e.g. `validation_error`, `overloaded`.
    #[serde(rename = "type")]
    #[schema(example = "validation_error")]
    pub kind: String,
    #[schema(example = "`n` must be between 1 and 8. Given: 40")]
    pub message: String,
    /// The request field the error is about, if any.
    #[schema(example = "n")]
    pub param: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Overloaded { .. } | Error::KeyBusy { .. } | Error::Quota { .. } | Error::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::Conflict(_) | Error::LeaseLost { .. } => StatusCode::CONFLICT,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            // The client is gone; the status is for logs and metrics only (nginx's "client closed request").
            Error::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Model { .. }
            | Error::Runtime(_)
            | Error::Inference { .. }
            | Error::Config(_)
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind().to_string(),
                message: self.to_string(),
                param: self.param().map(str::to_string),
            },
        };
        let mut response = HttpResponse::build(self.status_code()).json(body);
        if let Some(value) = retry_after(self) {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
        rate_limit_headers(self, response.headers_mut());
        if let Error::MethodNotAllowed { allowed, .. } = self {
            if let Ok(value) = HeaderValue::from_str(allowed) {
                response.headers_mut().insert(actix_web::http::header::ALLOW, value);
            }
        }
        if matches!(self, Error::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// OpenAI's error body: `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    /// This server's own kind, e.g. `validation_error`.
    pub code: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

/// An [`Error`] answered in OpenAI's shape, for the OpenAI-compatible routes. OpenAI answers a request it cannot
/// take with 400 (not 422), so its clients raise `BadRequestError`; every other status stays ours.
#[derive(Debug)]
pub struct OpenAiError(pub Error);

impl From<Error> for OpenAiError {
    fn from(err: Error) -> Self {
        OpenAiError(err)
    }
}

impl std::fmt::Display for OpenAiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for OpenAiError {
    fn status_code(&self) -> StatusCode {
        match self.0 {
            Error::Validation { .. } => StatusCode::BAD_REQUEST,
            _ => self.0.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let kind = if status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limit_error"
        } else if status.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        let body = OpenAiErrorBody {
            error: OpenAiErrorDetail {
                message: self.0.to_string(),
                kind: kind.to_string(),
                param: self.0.param().map(str::to_string),
                code: Some(self.0.kind().to_string()),
            },
        };
        let mut response = HttpResponse::build(status).json(body);
        if let Some(value) = retry_after(&self.0) {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
        rate_limit_headers(&self.0, response.headers_mut());
        response
    }
}

/// A rate limit's refusal says where the caller stands, as admitted requests do.
fn rate_limit_headers(err: &Error, headers: &mut actix_web::http::header::HeaderMap) {
    if let Error::RateLimited {
        limit,
        remaining,
        reset_secs,
        ..
    } = err
    {
        write_rate_limit(headers, *limit, *remaining, *reset_secs);
    }
}

/// Sets the `RateLimit-Limit`, `-Remaining`, `-Reset` and `-Policy` headers (draft-ietf-httpapi-ratelimit-headers)
/// for a one-minute window.
pub fn write_rate_limit(headers: &mut actix_web::http::header::HeaderMap, limit: u64, remaining: u64, reset_secs: u64) {
    use actix_web::http::header::HeaderName;
    for (name, value) in [
        ("ratelimit-limit", limit),
        ("ratelimit-remaining", remaining),
        ("ratelimit-reset", reset_secs),
    ] {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
    if let Ok(policy) = HeaderValue::from_str(&format!("{limit};w=60")) {
        headers.insert(HeaderName::from_static("ratelimit-policy"), policy);
    }
}

fn retry_after(err: &Error) -> Option<HeaderValue> {
    match err {
        Error::Overloaded { retry_after_secs, .. } => HeaderValue::from_str(&retry_after_secs.to_string()).ok(),
        Error::KeyBusy { .. } => Some(HeaderValue::from_static("1")),
        Error::Quota { retry_after_secs, .. } => HeaderValue::from_str(&retry_after_secs.to_string()).ok(),
        Error::RateLimited { reset_secs, .. } => HeaderValue::from_str(&reset_secs.to_string()).ok(),
        _ => None,
    }
}

/// Parses a JSON body, naming the offending field (its path, e.g. `n`) in the error when there is one.
///
/// Every body is a JSON object: an array is refused rather than read into a struct's fields in order (serde's
/// default). A number with no fraction (`2.0`, `1e2`) is the integer it equals, as in JSON Schema, so an
/// integer field takes it.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let mut value: serde_json::Value = {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let value = serde::Deserialize::deserialize(&mut deserializer).map_err(|err| syntax_error(body, &err))?;
        deserializer.end().map_err(|err| Error::InvalidRequest {
            message: format!("the body is not valid JSON: {err}"),
            param: None,
        })?;
        value
    };
    if !value.is_object() {
        return Err(Error::Validation {
            message: "the body must be a JSON object".to_string(),
            param: None,
        });
    }
    whole_numbers(&mut value);
    let parsed: T = serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_data() {
            let param = field_in_message(&inner.to_string()).or_else(|| (path != ".").then(|| path.clone()));
            let message = match &param {
                Some(field) if !inner.to_string().contains('`') => format!("`{field}`: {inner}"),
                _ => format!("invalid request body: {inner}"),
            };
            Error::Validation { message, param }
        } else {
            syntax_error(body, &inner)
        }
    })?;
    Ok(parsed)
}

/// Turns every number without a fraction that fits an i64 or u64 into that integer.
fn whole_numbers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(number) if number.is_f64() => {
            if let Some(float) = number.as_f64().filter(|float| float.fract() == 0.0) {
                // 2^63 and 2^64 are exact floats outside the integer types; `as` would saturate them.
                if float >= -(2f64.powi(63)) && float < 2f64.powi(63) {
                    *number = serde_json::Number::from(float as i64);
                } else if float >= 0.0 && float < 2f64.powi(64) {
                    *number = serde_json::Number::from(float as u64);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// A JSON syntax error, with the text where it happened and, when it is a value, the field it belongs to.
/// `NaN` and `Infinity` are the usual culprits: JSON has neither.
fn syntax_error(body: &[u8], err: &serde_json::Error) -> Error {
    let text = String::from_utf8_lossy(body);
    // serde_json counts lines and columns from 1; find the byte offset they point at.
    let offset = text
        .split_inclusive('\n')
        .take(err.line().saturating_sub(1))
        .map(str::len)
        .sum::<usize>()
        + err.column().saturating_sub(1);
    // The lossy text can be longer than the body (each invalid byte becomes a 3-byte U+FFFD), so the offset may
    // land inside a character: step back to a boundary rather than slice through one.
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let start = text[..offset].rfind([':', ',', '[', '{']).map_or(0, |at| at + 1);
    let near: String = text[start..].trim_start().chars().take(16).collect();
    let near = near.split([',', '}', ']']).next().unwrap_or("").trim().to_string();
    // Only a bad value has a field to blame; a body cut short or a missing comma does not.
    let at_value = err.classify() == serde_json::error::Category::Syntax && !near.is_empty();
    let param = text[..start]
        .trim_end()
        .strip_suffix(':')
        .filter(|_| at_value)
        .and_then(|before| {
            let before = before.trim_end().strip_suffix('"')?;
            let name_start = before.rfind('"')? + 1;
            Some(before[name_start..].to_string())
        });
    let hint = if ["NaN", "Infinity", "-Infinity", "nan", "inf", "-inf"]
        .iter()
        .any(|word| near.starts_with(word))
    {
        " (JSON has no NaN or Infinity; send a finite number)"
    } else {
        ""
    };
    let field = param.as_deref().map_or(String::new(), |field| format!("`{field}`: "));
    let near = if near.is_empty() {
        String::new()
    } else {
        format!(", near `{near}`")
    };
    Error::InvalidRequest {
        message: format!("{field}the body is not valid JSON{hint}: {err}{near}"),
        param,
    }
}

/// serde names fields in backticks in "unknown field `foo`" and "missing field `prompt`"; other messages
/// (a wrong type, say) leave the field to the error's path.
fn field_in_message(message: &str) -> Option<String> {
    ["unknown field `", "missing field `"].iter().find_map(|prefix| {
        let start = message.find(prefix)? + prefix.len();
        let end = message[start..].find('`')?;
        Some(message[start..start + end].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_before_a_syntax_error_is_an_error_not_a_panic() {
        // Found by `cargo fuzz run parse_request` (fuzz/artifacts): the lossy text's offsets moved past the
        // body's, and slicing at serde's column landed inside a U+FFFD.
        let body = include_bytes!("../../fuzz/corpus/parse_request/regression-char-boundary");
        let err = parse_json::<serde_json::Value>(body).unwrap_err();
        assert_eq!(err.kind(), "invalid_request");
    }

    #[test]
    fn finds_the_field_serde_names() {
        assert_eq!(
            field_in_message("unknown field `colour`, expected one of `prompt`, `n` at line 1 column 10"),
            Some("colour".to_string())
        );
        assert_eq!(field_in_message("missing field `prompt`"), Some("prompt".to_string()));
        assert_eq!(field_in_message("invalid type: string \"x\", expected u32"), None);
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        prompt: String,
        n: Option<i64>,
    }

    #[test]
    fn json_errors_name_the_field() {
        let err = parse_json::<Body>(br#"{"prompt":"x","n":"two"}"#).unwrap_err();
        assert_eq!(err.param(), Some("n"));
        assert_eq!(err.kind(), "validation_error");
        let err = parse_json::<Body>(br#"{"prompt":"x","colour":1}"#).unwrap_err();
        assert_eq!(err.param(), Some("colour"));
        let err = parse_json::<Body>(br#"{"prompt": "x""#).unwrap_err();
        assert_eq!(err.kind(), "invalid_request");
        let err = parse_json::<Body>(br#"{"n": 1}"#).unwrap_err();
        assert_eq!(err.param(), Some("prompt"));
    }

    #[test]
    fn whole_floats_are_integers_and_arrays_are_not_bodies() {
        let body = parse_json::<Body>(br#"{"prompt":"x","n":2.0}"#).unwrap();
        assert_eq!(body.n, Some(2));
        let err = parse_json::<Body>(br#"{"prompt":"x","n":2.5}"#).unwrap_err();
        assert_eq!(err.param(), Some("n"));
        let err = parse_json::<Body>(br#"["x", 1]"#).unwrap_err();
        assert_eq!(err.kind(), "validation_error");
    }

    #[test]
    fn a_nan_is_named_with_its_field() {
        let err = parse_json::<Body>(b"{\"prompt\": \"x\",\n \"n\": NaN}").unwrap_err();
        assert_eq!(err.kind(), "invalid_request");
        assert_eq!(err.param(), Some("n"));
        let message = err.to_string();
        assert!(message.contains("JSON has no NaN"), "{message}");
        assert!(message.contains("near `NaN`"), "{message}");
    }

    #[test]
    fn openai_shape_says_400_for_bad_fields() {
        let err = OpenAiError(Error::validation("n", "`n` must be between 1 and 8. Given: 40"));
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
        let overloaded = OpenAiError(Error::Overloaded {
            queued: 1,
            limit: 1,
            retry_after_secs: 2,
        });
        let response = overloaded.error_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers().get(RETRY_AFTER).unwrap(), "2");
    }

    #[test]
    fn overloaded_sets_retry_after() {
        let response = Error::Overloaded {
            queued: 3,
            limit: 3,
            retry_after_secs: 7,
        }
        .error_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers().get(RETRY_AFTER).unwrap(), "7");
    }
}
