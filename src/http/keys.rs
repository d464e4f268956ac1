//! API keys over HTTP (admin only): `POST /keys` makes one and shows its secret once, `GET /keys` lists them
//! (never a secret), `DELETE /keys/{id}` revokes one on every replica within `--key-refresh` seconds. Each
//! creation and revocation is written to the audit log.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{Error, Result};
use crate::http::audit::record;
use crate::http::auth::{self, is_tenant_name, Caller, Scope, Scopes, MAX_NAME_CHARS};
use crate::http::endpoint::{self, Access, Endpoint, Method};
use crate::http::error::{parse_json, ErrorBody};
use crate::http::extract::{query_params, read_body};
use crate::http::AppState;
use crate::storage::{now_millis, KeyRecord, NewKey};

/// The routes this module serves, each with who may call it.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint::new(Method::Post, "/keys", Access::Admin, |route| route.to(create_key)),
    Endpoint::new(Method::Get, "/keys", Access::Admin, |route| route.to(list_keys)),
    Endpoint::new(Method::Delete, "/keys/{id}", Access::Admin, |route| {
        route.to(revoke_key)
    }),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    endpoint::configure(cfg, ENDPOINTS);
}

/// The most requests per minute a key's own limit may name.
pub const MAX_REQUESTS_PER_MINUTE: u64 = 1_000_000_000;
/// The most pixel-steps per minute a key's own limit may name (10^15, far past any machine's rate).
pub const MAX_WORK_PER_MINUTE: u64 = 1_000_000_000_000_000;

/// The longest a key may live: ten years of 365 days.
pub const MAX_KEY_LIFETIME_SECONDS: u64 = 315_360_000;

/// The id of a stored API key (`id` in `POST /keys` answers).
#[derive(ToSchema)]
#[schema(value_type = String, format = "key-id")]
#[allow(dead_code)]
pub struct KeyId(String);

/// A scope a key may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ScopeName {
    /// Generate, score, rerank, rate, read images and models.
    Inference,
    /// List and export ratings.
    Feedback,
    /// Run and follow fine-tune jobs.
    FineTune,
    /// Everything, for every tenant: activation, keys, the audit log.
    Admin,
}

impl From<ScopeName> for Scope {
    fn from(name: ScopeName) -> Scope {
        match name {
            ScopeName::Inference => Scope::Inference,
            ScopeName::Feedback => Scope::Feedback,
            ScopeName::FineTune => Scope::FineTune,
            ScopeName::Admin => Scope::Admin,
        }
    }
}

/// A key to make.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "checkout-app", "tenant": "acme", "scopes": ["inference"],
    "expires_in_seconds": 7776000}))]
pub struct CreateKey {
    /// What the key is for, shown in lists and the audit log (1 to 64 characters, not all blank; stored
    /// without leading and trailing blanks).
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    pub name: String,
    /// The tenant that owns what the key creates (1 to 64 ASCII letters, digits, `.`, `_`, `-`, starting with a
    /// letter or digit). Default: the creating key's tenant.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub tenant: Option<String>,
    /// What the key may do.
    #[schema(min_items = 1)]
    pub scopes: Vec<ScopeName>,
    /// Seconds until the key stops working, at most ten years. Default: never.
    #[schema(minimum = 1, maximum = 315_360_000)]
    pub expires_in_seconds: Option<u64>,
    /// This key's own limits per minute, in place of the server's `--rate-limit-requests` and
    /// `--rate-limit-work`; 0 is no limit.
    pub rate_limit: Option<KeyRateLimit>,
}

/// A key's limits per one-minute window, shared by every replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRateLimit {
    /// Requests per minute, at most 10^9 (default: `--rate-limit-requests`; 0: none).
    #[schema(maximum = 1_000_000_000)]
    pub requests_per_minute: Option<u32>,
    /// Generation work per minute, in pixel-steps: images (best-of candidates included) × steps × width ×
    /// height, at most 10^15 (default: `--rate-limit-work`; 0: none).
    #[schema(maximum = 1_000_000_000_000_000_u64)]
    pub work_per_minute: Option<u64>,
}

/// A key, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "key_6f1ed002ab5595859014ebf0951522d9", "object": "api_key", "name": "checkout-app",
    "tenant": "acme", "scopes": ["inference"], "prefix": "t2i_3f9a0c1b", "created_at": 1764900000000_i64,
    "created_by": "ops", "expires_at": null, "revoked_at": null, "last_used_at": 1764900500000_i64}))]
pub struct KeyOut {
    pub id: String,
    /// Always `api_key`.
    pub object: String,
    pub name: String,
    pub tenant: String,
    pub scopes: Vec<String>,
    /// The secret's first 12 characters, to tell keys apart.
    pub prefix: String,
    /// Unix milliseconds, as every time below.
    pub created_at: i64,
    /// The name of the key that made it; null when made by `t2i-align keys create` or in open mode.
    pub created_by: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Its last use on any replica, written every few seconds.
    pub last_used_at: Option<i64>,
    /// Its own limits, when it has any; the server's apply otherwise.
    pub rate_limit: Option<KeyRateLimit>,
}

impl From<KeyRecord> for KeyOut {
    fn from(key: KeyRecord) -> KeyOut {
        KeyOut {
            id: key.id,
            object: "api_key".into(),
            name: key.name,
            tenant: key.tenant,
            scopes: key.scopes,
            prefix: key.prefix,
            created_at: key.created_at,
            created_by: key.created_by,
            expires_at: key.expires_at,
            revoked_at: key.revoked_at,
            last_used_at: key.last_used_at,
            rate_limit: (key.requests_per_minute.is_some() || key.work_per_minute.is_some()).then(|| KeyRateLimit {
                requests_per_minute: key
                    .requests_per_minute
                    .map(|value| value.clamp(0, i64::from(u32::MAX)) as u32),
                work_per_minute: key.work_per_minute.map(|value| value.max(0) as u64),
            }),
        }
    }
}

/// A key just made, with its secret: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyOut,
    /// The secret, for `Authorization: Bearer <secret>`. It is not stored and cannot be shown again.
    pub secret: String,
}

/// Keys, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub data: Vec<KeyOut>,
}

/// Filters of `GET /keys`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeyParams {
    /// Only this tenant's keys.
    pub tenant: Option<String>,
}

/// Checks a key's fields and makes the stored form; `now` is the time it is made.
pub fn new_key(
    request: &CreateKey,
    default_tenant: &str,
    created_by: Option<String>,
    now: i64,
) -> Result<(NewKey, String)> {
    let chars = request.name.chars().count();
    let name = request.name.trim();
    if name.is_empty() || chars > MAX_NAME_CHARS {
        return Err(Error::validation(
            "name",
            format!("`name` must be 1 to {MAX_NAME_CHARS} characters, not all blank. Given: {chars}"),
        ));
    }
    let tenant = request.tenant.as_deref().unwrap_or(default_tenant);
    if !is_tenant_name(tenant) {
        return Err(Error::validation(
            "tenant",
            format!(
                "`tenant` must be 1 to {MAX_NAME_CHARS} ASCII letters, digits, `.`, `_` or `-`, starting with a \
                 letter or digit"
            ),
        ));
    }
    if request.scopes.is_empty() {
        return Err(Error::validation(
            "scopes",
            format!("`scopes` must name at least one of {}", Scope::NAMES),
        ));
    }
    let scopes = Scopes::from_iter(request.scopes.iter().copied().map(Scope::from));
    if let Some(requests) = request.rate_limit.and_then(|limit| limit.requests_per_minute) {
        if u64::from(requests) > MAX_REQUESTS_PER_MINUTE {
            return Err(Error::validation(
                "rate_limit.requests_per_minute",
                format!(
                    "`rate_limit.requests_per_minute` must be at most {MAX_REQUESTS_PER_MINUTE}. Given: {requests}"
                ),
            ));
        }
    }
    if let Some(work) = request.rate_limit.and_then(|limit| limit.work_per_minute) {
        if work > MAX_WORK_PER_MINUTE {
            return Err(Error::validation(
                "rate_limit.work_per_minute",
                format!("`rate_limit.work_per_minute` must be at most {MAX_WORK_PER_MINUTE}. Given: {work}"),
            ));
        }
    }
    let expires_at = match request.expires_in_seconds {
        None => None,
        Some(seconds @ 1..=MAX_KEY_LIFETIME_SECONDS) => Some(now + seconds as i64 * 1000),
        Some(seconds) => {
            return Err(Error::validation(
                "expires_in_seconds",
                format!(
                    "`expires_in_seconds` must be between 1 and {MAX_KEY_LIFETIME_SECONDS} (ten years). Given: \
                     {seconds}"
                ),
            ))
        }
    };
    let secret = auth::new_secret();
    Ok((
        NewKey {
            name: name.to_string(),
            tenant: tenant.to_string(),
            scopes: scopes.names().into_iter().map(String::from).collect(),
            digest: auth::key_digest(&secret),
            prefix: auth::key_prefix(&secret),
            created_by,
            expires_at,
            requests_per_minute: request
                .rate_limit
                .and_then(|limit| limit.requests_per_minute)
                .map(i64::from),
            work_per_minute: request
                .rate_limit
                .and_then(|limit| limit.work_per_minute)
                .map(|work| work.min(MAX_WORK_PER_MINUTE) as i64),
        },
        secret,
    ))
}

/// Make an API key. Its secret is in this answer only; store it now. Every replica accepts it within
/// `--key-refresh` seconds (this one at once).
#[utoipa::path(
    post,
    path = "/keys",
    tag = "keys",
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key, with its secret", body = CreatedKey),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 413, description = "The body is larger than `--max-body-bytes`", body = ErrorBody),
        (status = 422, description = "A field breaks a rule; the error names it", body = ErrorBody),
    )
)]
pub async fn create_key(state: web::Data<AppState>, caller: Caller, payload: web::Payload) -> Result<HttpResponse> {
    let body = read_body(payload, state.max_body_bytes).await?;
    // serde reads a struct from an array too (`[1, 2]` as its fields in order); the document says an object.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) {
        if value
            .get("rate_limit")
            .is_some_and(|limit| !(limit.is_object() || limit.is_null()))
        {
            return Err(Error::validation(
                "rate_limit",
                "`rate_limit` must be an object, e.g. {\"requests_per_minute\": 60}, or null",
            ));
        }
    }
    let request: CreateKey = parse_json(&body)?;
    let (key, secret) = new_key(&request, &caller.tenant, caller.key_name.clone(), now_millis())?;
    let stored = state.storage.insert_key(&key).await?;
    refresh_now(&state).await;
    record(
        &state,
        &caller,
        "key.create",
        &stored.id,
        Some(serde_json::json!({"name": stored.name, "tenant": stored.tenant, "scopes": stored.scopes})),
    )
    .await;
    Ok(HttpResponse::Created().json(CreatedKey {
        key: KeyOut::from(stored),
        secret,
    }))
}

/// Every key, revoked and expired ones too, oldest first. Never a secret.
#[utoipa::path(
    get,
    path = "/keys",
    tag = "keys",
    params(KeyParams),
    responses(
        (status = 200, description = "The keys", body = KeyList),
        (status = 422, description = "A filter breaks a rule", body = ErrorBody),
    )
)]
pub async fn list_keys(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse> {
    let params: KeyParams = query_params(&request)?;
    let keys = state.storage.list_keys(params.tenant.as_deref()).await?;
    Ok(HttpResponse::Ok().json(KeyList {
        data: keys.into_iter().map(KeyOut::from).collect(),
    }))
}

/// Revoke a key: this replica refuses it at once, every other one within `--key-refresh` seconds. Revoking a
/// revoked key changes nothing.
#[utoipa::path(
    delete,
    path = "/keys/{id}",
    tag = "keys",
    params(("id" = KeyId, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key, revoked", body = KeyOut),
        (status = 404, description = "No such key", body = ErrorBody),
    )
)]
pub async fn revoke_key(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> Result<HttpResponse> {
    let revoked = state
        .storage
        .revoke_key(&path)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no API key `{}`", path.as_str())))?;
    refresh_now(&state).await;
    record(
        &state,
        &caller,
        "key.revoke",
        &revoked.id,
        Some(serde_json::json!({"name": revoked.name, "tenant": revoked.tenant})),
    )
    .await;
    Ok(HttpResponse::Ok().json(KeyOut::from(revoked)))
}

/// Reloads this replica's keys now, so a change made here takes effect at once; a failure leaves it to the
/// periodic reload.
async fn refresh_now(state: &AppState) {
    if let Err(err) = state.keys.refresh(&state.storage).await {
        tracing::warn!(error = %err, "cannot reload the API keys after a change; the periodic reload will");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, tenant: Option<&str>, scopes: &[ScopeName], expires_in_seconds: Option<u64>) -> CreateKey {
        CreateKey {
            name: name.into(),
            tenant: tenant.map(String::from),
            scopes: scopes.to_vec(),
            expires_in_seconds,
            rate_limit: None,
        }
    }

    #[test]
    fn a_new_key_is_stored_as_its_digest_and_its_fields_are_checked() {
        let now = 1_000_000;
        let (key, secret) = new_key(
            &request(" app ", None, &[ScopeName::Feedback, ScopeName::Inference], Some(90)),
            "acme",
            Some("ops".into()),
            now,
        )
        .unwrap();
        assert_eq!((key.name.as_str(), key.tenant.as_str()), ("app", "acme"));
        assert_eq!(key.scopes, ["inference", "feedback"]);
        assert_eq!(key.expires_at, Some(now + 90_000));
        assert_eq!(key.digest, auth::key_digest(&secret));
        assert!(!key.digest.contains(&secret) && secret.starts_with(&key.prefix));
        for (bad, param) in [
            (request("", None, &[ScopeName::Inference], None), "name"),
            (request(&"n".repeat(65), None, &[ScopeName::Inference], None), "name"),
            (request("  ", None, &[ScopeName::Inference], None), "name"),
            (request("a", Some("no spaces"), &[ScopeName::Inference], None), "tenant"),
            (request("a", None, &[], None), "scopes"),
            (request("a", None, &[ScopeName::Admin], Some(0)), "expires_in_seconds"),
            (
                request("a", None, &[ScopeName::Admin], Some(MAX_KEY_LIFETIME_SECONDS + 1)),
                "expires_in_seconds",
            ),
            (
                CreateKey {
                    rate_limit: Some(KeyRateLimit {
                        requests_per_minute: None,
                        work_per_minute: Some(MAX_WORK_PER_MINUTE + 1),
                    }),
                    ..request("a", None, &[ScopeName::Admin], None)
                },
                "rate_limit.work_per_minute",
            ),
            (
                CreateKey {
                    rate_limit: Some(KeyRateLimit {
                        requests_per_minute: Some(1_000_000_001),
                        work_per_minute: None,
                    }),
                    ..request("a", None, &[ScopeName::Admin], None)
                },
                "rate_limit.requests_per_minute",
            ),
        ] {
            let err = new_key(&bad, "acme", None, now).unwrap_err();
            assert_eq!(err.param(), Some(param), "{err}");
        }
    }
}
