//! API keys: bearer keys in two scopes, checked in one middleware before any handler runs, against the scope
//! each route's `Endpoint` declares.
//!
//! - `inference` keys may generate, score, rerank, rate (`POST /feedback`, and `DELETE /feedback/{id}` to take
//!   back a rating they made) and read images and the model list.
//! - `admin` keys may do all that, and run fine-tunes, activate versions, list and export feedback.
//! - `/health`, `/ready`, `/openapi.json` and `/docs` stay open; `/metrics` too unless `--protect-metrics`.
//!
//! Keys come from the `T2I_API_KEYS` environment variable or from `--api-keys-file`, never from the command line
//! itself (a process's argv is visible to every user of the machine). Only their SHA-256 digests are kept, and a
//! presented key is compared with every configured digest in constant time, so neither the comparison's duration
//! nor the logs reveal a key. No keys at all is open mode, which the server announces loudly at start-up.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::http::endpoint::{self, Access};
use crate::http::error::OpenAiError;
use crate::http::AppState;

/// What a key may do. `Admin` includes everything `Inference` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Inference,
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Inference => "inference",
            Scope::Admin => "admin",
        }
    }
}

/// Keys shorter than this are refused at start-up: a short key can be guessed.
pub const MIN_KEY_LENGTH: usize = 16;

#[derive(Clone)]
struct ApiKey {
    name: String,
    scope: Scope,
    digest: [u8; 32],
}

/// The configured keys; empty means open mode.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and scopes only: a key's digest is as good as the key to an offline guesser.
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|key| format!("{}:{}", key.name, key.scope.name()))
            .collect();
        f.debug_struct("ApiKeys").field("keys", &keys).finish()
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Equal digests, in time that depends on neither content.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |difference, (x, y)| difference | (x ^ y)) == 0
}

impl ApiKeys {
    /// Reads entries separated by newlines or commas, each `SCOPE:KEY` or `NAME:SCOPE:KEY`; blank lines and lines
    /// starting with `#` are skipped. `source` names where the text came from, for errors (which never quote a
    /// key).
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for (index, entry) in text
            .split(['\n', ','])
            .map(str::trim)
            .enumerate()
            .filter(|(_, entry)| !entry.is_empty() && !entry.starts_with('#'))
        {
            let fields: Vec<&str> = entry.split(':').map(str::trim).collect();
            let (name, scope, key) = match fields.as_slice() {
                [scope, key] => (format!("key-{}", keys.len() + 1), *scope, *key),
                [name, scope, key] => ((*name).to_string(), *scope, *key),
                _ => {
                    return Err(Error::Config(format!(
                        "{source}: entry {} is not `scope:key` or `name:scope:key`",
                        index + 1
                    )))
                }
            };
            let scope = match scope {
                "inference" => Scope::Inference,
                "admin" => Scope::Admin,
                other => {
                    return Err(Error::Config(format!(
                        "{source}: key `{name}` has scope `{other}`; the scopes are inference and admin"
                    )))
                }
            };
            if key.len() < MIN_KEY_LENGTH {
                return Err(Error::Config(format!(
                    "{source}: key `{name}` is {} characters; keys must be at least {MIN_KEY_LENGTH}",
                    key.len()
                )));
            }
            keys.push(ApiKey {
                name,
                scope,
                digest: digest(key.as_bytes()),
            });
        }
        Ok(ApiKeys { keys })
    }

    /// Both sources together: the environment variable's text and the file's.
    pub fn load(env_text: Option<&str>, file: Option<&std::path::Path>) -> Result<Self> {
        let mut keys = match env_text {
            Some(text) => ApiKeys::parse(text, "T2I_API_KEYS")?,
            None => ApiKeys::default(),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|err| Error::Config(format!("--api-keys-file {}: {err}", path.display())))?;
            let from_file = ApiKeys::parse(&text, &format!("--api-keys-file {}", path.display()))?;
            keys.keys.extend(from_file.keys);
        }
        Ok(keys)
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks an `Authorization` header value against a route's scope; returns the key's name (for logs and
    /// per-key limits), or `None` in open mode. 401 without a valid key, 403 with a key of too small a scope.
    pub fn check(&self, authorization: Option<&str>, needed: Scope) -> Result<Option<String>> {
        if self.is_open() {
            return Ok(None);
        }
        let presented = authorization
            .and_then(|value| {
                let (kind, token) = value.trim().split_once(' ')?;
                kind.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                Error::Unauthorized("this route needs an API key: send `Authorization: Bearer <key>`".into())
            })?;
        let presented = digest(presented.as_bytes());
        // Every key is compared, match or not, so the time taken says nothing about which one matched.
        let mut found: Option<&ApiKey> = None;
        for key in &self.keys {
            if same_digest(&key.digest, &presented) && found.is_none() {
                found = Some(key);
            }
        }
        let key = found.ok_or_else(|| Error::Unauthorized("the API key is not valid".into()))?;
        if key.scope < needed {
            return Err(Error::Forbidden(format!(
                "the API key `{}` has the `{}` scope; this route needs `{}`",
                key.name,
                key.scope.name(),
                needed.name()
            )));
        }
        Ok(Some(key.name.clone()))
    }
}

/// The scope a route needs, from its method and matched pattern, as its `Endpoint` declares; `None` for the
/// open routes, the Swagger UI and paths we do not serve (404). A method a path does not declare needs admin,
/// so that nothing undeclared is ever open.
pub fn route_scope(method: &str, pattern: &str, protect_metrics: bool) -> Option<Scope> {
    if pattern == "unmatched" || pattern.starts_with("/docs") {
        return None;
    }
    match endpoint::find(crate::http::endpoints(), method, pattern).map(|endpoint| endpoint.access) {
        Some(Access::Open) => None,
        Some(Access::Inference) => Some(Scope::Inference),
        Some(Access::Metrics) => protect_metrics.then_some(Scope::Admin),
        Some(Access::Admin) | None => Some(Scope::Admin),
    }
}

/// One request of a key counted in flight until dropped.
struct InFlight {
    state: web::Data<AppState>,
    key: String,
}

impl InFlight {
    /// Counts a request of `key`, or refuses it when the key is at its limit.
    fn acquire(state: &web::Data<AppState>, key: &str) -> Result<Option<InFlight>> {
        let limit = state.max_concurrent_per_key;
        if limit == 0 {
            return Ok(None);
        }
        let mut counts = state
            .in_flight
            .lock()
            .map_err(|_| Error::Internal("the in-flight counter lock is poisoned".into()))?;
        let count = counts.entry(key.to_string()).or_insert(0);
        if *count >= limit {
            return Err(Error::KeyBusy {
                key: key.to_string(),
                limit,
            });
        }
        *count += 1;
        Ok(Some(InFlight {
            state: state.clone(),
            key: key.to_string(),
        }))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.state.in_flight.lock() {
            if let Some(count) = counts.get_mut(&self.key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(&self.key);
                }
            }
        }
    }
}

/// Middleware: answers 401 or 403 before any handler runs when the route needs a key the request does not
/// carry (`route_scope`). The OpenAI-compatible routes answer in OpenAI's error shape.
pub async fn authenticate<B: MessageBody + 'static>(
    request: ServiceRequest,
    next: Next<B>,
) -> std::result::Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let mut in_flight = None;
    if let Some(state) = request.app_data::<web::Data<AppState>>().cloned() {
        let pattern = request.match_pattern().unwrap_or_else(|| "unmatched".to_string());
        if let Some(scope) = route_scope(request.method().as_str(), &pattern, state.protect_metrics) {
            let header = request
                .headers()
                .get(actix_web::http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok());
            let admitted = state
                .api_keys
                .check(header, scope)
                .and_then(|key| key.map_or(Ok(None), |key| InFlight::acquire(&state, &key)));
            match admitted {
                Ok(guard) => in_flight = guard,
                Err(err) => {
                    let response = if pattern.starts_with("/v1/") {
                        actix_web::ResponseError::error_response(&OpenAiError(err))
                    } else {
                        actix_web::ResponseError::error_response(&err)
                    };
                    return Ok(request.into_response(response).map_into_right_body());
                }
            }
        }
    }
    let response = next.call(request).await.map(ServiceResponse::map_into_left_body);
    drop(in_flight);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFERENCE: &str = "inference-key-0123456789";
    const ADMIN: &str = "admin-key-0123456789abcd";

    fn keys() -> ApiKeys {
        ApiKeys::parse(&format!("app:inference:{INFERENCE}\n# ops\nops:admin:{ADMIN}"), "test").unwrap()
    }

    fn bearer(key: &str) -> String {
        format!("Bearer {key}")
    }

    #[test]
    fn open_mode_lets_everything_through() {
        let keys = ApiKeys::default();
        assert!(keys.is_open());
        assert_eq!(keys.check(None, Scope::Admin).unwrap(), None);
    }

    #[test]
    fn a_missing_or_wrong_key_is_401() {
        let keys = keys();
        for header in [
            None,
            Some("Basic abc"),
            Some("Bearer "),
            Some("Bearer not-a-valid-key-at-all"),
        ] {
            let err = keys.check(header, Scope::Inference).unwrap_err();
            assert_eq!(err.kind(), "unauthorized", "{header:?}");
        }
    }

    #[test]
    fn scopes_nest_and_a_small_scope_is_403() {
        let keys = keys();
        assert_eq!(
            keys.check(Some(&bearer(INFERENCE)), Scope::Inference).unwrap(),
            Some("app".into())
        );
        assert_eq!(
            keys.check(Some(&bearer(ADMIN)), Scope::Inference).unwrap(),
            Some("ops".into())
        );
        assert_eq!(
            keys.check(Some(&bearer(ADMIN)), Scope::Admin).unwrap(),
            Some("ops".into())
        );
        let err = keys.check(Some(&bearer(INFERENCE)), Scope::Admin).unwrap_err();
        assert_eq!(err.kind(), "forbidden");
        assert!(err.to_string().contains("needs `admin`"), "{err}");
        assert!(!err.to_string().contains(INFERENCE), "errors never quote a key");
    }

    #[test]
    fn bad_entries_are_config_errors_that_never_quote_the_key() {
        for (text, key, expected) in [
            ("admin", "admin", "is not `scope:key`"),
            ("root:0123456789abcdefgh", "0123456789abcdefgh", "scope `root`"),
            ("inference:short", "short", "at least 16"),
        ] {
            let err = ApiKeys::parse(text, "T2I_API_KEYS").unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains(key), "{text}: the error quotes the key: {err}");
        }
        let debug = format!("{:?}", keys());
        assert!(!debug.contains(INFERENCE) && !debug.contains(ADMIN), "{debug}");
    }

    #[test]
    fn routes_map_to_scopes() {
        assert_eq!(route_scope("GET", "/health", false), None);
        assert_eq!(route_scope("GET", "/metrics", false), None);
        assert_eq!(route_scope("GET", "/metrics", true), Some(Scope::Admin));
        assert_eq!(route_scope("POST", "/generate", false), Some(Scope::Inference));
        assert_eq!(route_scope("POST", "/feedback", false), Some(Scope::Inference));
        assert_eq!(route_scope("GET", "/feedback", false), Some(Scope::Admin));
        assert_eq!(route_scope("GET", "/feedback/export", false), Some(Scope::Admin));
        assert_eq!(route_scope("POST", "/fine-tunes", false), Some(Scope::Admin));
        assert_eq!(route_scope("POST", "/models/{id}/activate", false), Some(Scope::Admin));
        assert_eq!(route_scope("GET", "/models", false), Some(Scope::Inference));
        assert_eq!(route_scope("GET", "/docs/{_:.*}", false), None);
        assert_eq!(route_scope("DELETE", "/feedback/{id}", false), Some(Scope::Inference));
        assert_eq!(route_scope("GET", "/", false), None);
        assert_eq!(route_scope("GET", "/assets/{file}", false), None);
        assert_eq!(route_scope("POST", "/", false), Some(Scope::Admin));
    }
}
