//! The crate's one error type. Every module returns it, and `http::error` maps each kind to a status code in one
//! place, so a handler can use `?` everywhere.

use std::path::PathBuf;

/// Everything that can go wrong, grouped by who must act: the caller (validation), the operator (model, runtime,
/// configuration) or nobody (cancelled, overloaded).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is well-formed JSON but a field breaks a rule. `param` names the field.
    #[error("{message}")]
    Validation { message: String, param: Option<String> },

    /// The body could not be read as the expected JSON at all.
    #[error("{message}")]
    InvalidRequest { message: String, param: Option<String> },

    /// The request body is larger than the server accepts.
    #[error("the request body is larger than the limit of {limit} bytes (--max-body-bytes)")]
    PayloadTooLarge { limit: usize },

    /// The bounded queue is full; the caller should retry after `retry_after_secs`.
    #[error("the server is at capacity ({queued} requests queued, limit {limit}); retry after {retry_after_secs} s")]
    Overloaded {
        queued: usize,
        limit: usize,
        retry_after_secs: u64,
    },

    /// One API key has as many requests in flight as it may.
    #[error("the API key `{key}` already has {limit} requests in flight (--max-concurrent-per-key); retry when one finishes")]
    KeyBusy { key: String, limit: usize },

    /// A key (or in open mode a client) is past its rate limit for this minute (#28).
    #[error("{message}")]
    RateLimited {
        message: String,
        limit: u64,
        remaining: u64,
        reset_secs: u64,
    },

    /// A tenant is at one of its quotas (#28); `limit` names the flag that sets it.
    #[error("{message}")]
    Quota {
        message: String,
        limit: &'static str,
        retry_after_secs: u64,
    },

    /// No such route or resource.
    #[error("{0}")]
    NotFound(String),

    /// The path exists but does not take this method; `allowed` lists the ones it takes.
    #[error("{path} does not take {method}; it takes {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: String,
    },

    /// The resource is in a state that does not allow the change, e.g. cancelling a finished job.
    #[error("{0}")]
    Conflict(String),

    /// The models are not loaded and warmed yet, or the server is shutting down.
    #[error("{0}")]
    Unavailable(String),

    /// A fine-tune job's attempt no longer holds its lease (another replica took the job over, or it was
    /// cancelled); the write was refused, and the attempt stops.
    #[error(
        "fine-tune job `{job}` attempt {attempt} lost its lease: another replica took the job over or it was cancelled"
    )]
    LeaseLost { job: String, attempt: i64 },

    /// The caller went away, or the work was cancelled before it finished.
    #[error("the request was cancelled")]
    Cancelled,

    /// The request's deadline passed before its work finished; the work was stopped.
    #[error("the request did not finish within its deadline of {seconds} s (the X-Request-Timeout header, or --request-timeout); its work was stopped")]
    Timeout { seconds: f64 },

    /// No valid API key for a route that needs one.
    #[error("{0}")]
    Unauthorized(String),

    /// A valid API key whose scope does not cover the route.
    #[error("{0}")]
    Forbidden(String),

    /// A file the model folder must contain is missing or unreadable.
    #[error("model folder `{}`: {reason}", folder.display())]
    Model { folder: PathBuf, reason: String },

    /// ONNX Runtime could not be loaded or configured; the message says how to fix it.
    #[error("{0}")]
    Runtime(String),

    /// ONNX Runtime failed while running a session.
    #[error("inference failed in {component}: {message}")]
    Inference { component: &'static str, message: String },

    /// A bad command-line or environment configuration.
    #[error("{0}")]
    Config(String),

    /// Something that should not happen; the message is for the logs.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn validation(param: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Validation {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    pub fn model(folder: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Model {
            folder: folder.into(),
            reason: reason.into(),
        }
    }

    /// A stable snake_case name of the kind, used as the `type` of the JSON error body and as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Validation { .. } => "validation_error",
            Error::InvalidRequest { .. } => "invalid_request",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::Overloaded { .. } => "overloaded",
            Error::KeyBusy { .. } => "rate_limited",
            Error::Quota { .. } => "quota_exceeded",
            Error::RateLimited { .. } => "rate_limited",
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::Conflict(_) => "conflict",
            Error::LeaseLost { .. } => "lease_lost",
            Error::Unavailable(_) => "unavailable",
            Error::Cancelled => "cancelled",
            Error::Timeout { .. } => "timeout",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::Model { .. } => "model_error",
            Error::Runtime(_) => "runtime_error",
            Error::Inference { .. } => "inference_error",
            Error::Config(_) => "config_error",
            Error::Internal(_) => "internal_error",
        }
    }

    /// The request field the error is about, when there is one.
    pub fn param(&self) -> Option<&str> {
        match self {
            Error::Validation { param, .. } | Error::InvalidRequest { param, .. } => param.as_deref(),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
