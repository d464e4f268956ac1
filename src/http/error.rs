//! The one place where an [`Error`] becomes an HTTP status and a JSON body `{"error":{"type","message","param"}}`.

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
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
            Error::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            // The client is gone; the status is for logs and metrics only (nginx's "client closed request").
            Error::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
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
        if let Error::Overloaded { retry_after_secs, .. } = self {
            if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
        }
        response
    }
}

/// Parses a JSON body, naming the offending field (its path, e.g. `n`) in the error when there is one.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
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
            Error::InvalidRequest {
                message: format!("the body is not valid JSON: {inner}"),
                param: None,
            }
        }
    })?;
    deserializer.end().map_err(|err| Error::InvalidRequest {
        message: format!("the body is not valid JSON: {err}"),
        param: None,
    })?;
    Ok(parsed)
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
