//! API keys: bearer keys with scopes and an owner (a tenant), checked in one middleware before any handler
//! runs, against the scope each route's `Endpoint` declares.
//!
//! - **Scopes.** `inference` may generate, score, rerank, rate (`POST /feedback`, and `DELETE /feedback/{id}`
//!   to take a rating back) and read images and the model list; `feedback` may list and export ratings;
//!   `fine-tune` may run and follow fine-tune jobs; `admin` may do everything: activate versions, manage keys,
//!   read the audit log, and see every tenant's records.
//! - **Where keys come from.** Keys made by `POST /keys` or `t2i-align keys create` live in the database as
//!   SHA-256 digests (`storage::keys`); every replica reloads them every `--key-refresh` seconds, so a
//!   revocation reaches all of them within that. Bootstrap keys come from the `T2I_API_KEYS` environment
//!   variable or `--api-keys-file`, never from the command line (a process's argv is visible to every user of
//!   the machine); only their digests are kept, compared in constant time.
//! - **Open mode.** A server with no key anywhere at start-up and no `--require-auth` serves without keys, as
//!   an admin of the `default` tenant; it may only listen on a loopback address unless `--allow-open` says
//!   otherwise (`cli::serve`). `/health`, `/ready`, `/openapi.json` and `/docs` stay open, `/metrics` too
//!   unless `--protect-metrics`.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::sync::{Mutex, RwLock};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::http::endpoint::{self, Access};
use crate::http::error::OpenAiError;
use crate::http::AppState;
use crate::storage::{now_millis, KeyRecord, Storage};

/// What a key may do. `Admin` includes every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Inference,
    Feedback,
    FineTune,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Inference, Scope::Feedback, Scope::FineTune, Scope::Admin];
    pub const NAMES: &'static str = "inference, feedback, fine-tune, admin";

    pub fn name(self) -> &'static str {
        match self {
            Scope::Inference => "inference",
            Scope::Feedback => "feedback",
            Scope::FineTune => "fine-tune",
            Scope::Admin => "admin",
        }
    }

    pub fn from_name(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.name() == name)
    }

    /// The scope a route's access level needs; `None` for routes anyone may call.
    pub fn of(access: Access, protect_metrics: bool) -> Option<Scope> {
        match access {
            Access::Open => None,
            Access::Inference => Some(Scope::Inference),
            Access::Feedback => Some(Scope::Feedback),
            Access::FineTune => Some(Scope::FineTune),
            Access::Metrics => protect_metrics.then_some(Scope::Admin),
            Access::Admin => Some(Scope::Admin),
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Scopes {
        Scopes::from_iter(Scope::ALL)
    }

    /// Whether a key with these scopes may use a route that needs `needed`: it has it, or it is admin.
    pub fn allows(self, needed: Scope) -> bool {
        self.has(Scope::Admin) || self.has(needed)
    }

    pub fn has(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes' names, in `Scope::ALL`'s order.
    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL
            .into_iter()
            .filter(|scope| self.has(*scope))
            .map(Scope::name)
            .collect()
    }

    /// Reads scope names; the error names the first unknown one.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> std::result::Result<Scopes, String> {
        let mut scopes = Scopes::default();
        for name in names {
            let scope = Scope::from_name(name.trim())
                .ok_or_else(|| format!("unknown scope `{}`; the scopes are {}", name.trim(), Scope::NAMES))?;
            scopes.0 |= scope.bit();
        }
        Ok(scopes)
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().fold(0, |bits, scope| bits | scope.bit()))
    }
}

/// The tenant of keys that name none, and of everything made in open mode.
pub const DEFAULT_TENANT: &str = "default";
/// Keys shorter than this are refused: a short key can be guessed.
pub const MIN_KEY_LENGTH: usize = 16;
/// Longest key name and tenant name.
pub const MAX_NAME_CHARS: usize = 64;

/// Whether `tenant` is a tenant name: 1 to 64 of ASCII letters, digits, `.`, `_` and `-`, starting with a
/// letter or digit.
pub fn is_tenant_name(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= MAX_NAME_CHARS
        && tenant.starts_with(|c: char| c.is_ascii_alphanumeric())
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Who is calling: the key that was presented (none in open mode), its tenant and scopes. The middleware puts
/// it in the request's extensions for every route that needs a key; handlers take it as an extractor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The stored key's id; `None` for keys from the environment or a file, and in open mode.
    pub key_id: Option<String>,
    /// The key's name; `None` in open mode.
    pub key_name: Option<String>,
    pub tenant: String,
    pub scopes: Scopes,
    /// The key's own limits per minute (`None`: the server's).
    pub limits: KeyLimits,
    /// In open mode, the client's address, which the rate limits count by.
    pub client: Option<String>,
}

/// A stored key's own limits per minute; `None` takes the server's, 0 is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub requests_per_minute: Option<i64>,
    pub work_per_minute: Option<i64>,
}

impl Caller {
    /// Anyone, on a server in open mode: an admin of the default tenant.
    pub fn open() -> Caller {
        Caller {
            key_id: None,
            key_name: None,
            tenant: DEFAULT_TENANT.to_string(),
            scopes: Scopes::all(),
            limits: KeyLimits::default(),
            client: None,
        }
    }

    /// What the rate limits count this caller's requests under: its stored key, its bootstrap key's name, or in
    /// open mode its address.
    pub fn bucket(&self) -> String {
        match (&self.key_id, &self.key_name, &self.client) {
            (Some(id), _, _) => format!("key:{id}"),
            (None, Some(name), _) => format!("bootstrap:{name}"),
            (None, None, Some(client)) => format!("client:{client}"),
            (None, None, None) => "client:unknown".to_string(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.scopes.has(Scope::Admin)
    }

    /// The tenant whose records this caller may see: its own, or `None` (every tenant's) for an admin.
    pub fn visible_tenant(&self) -> Option<&str> {
        (!self.is_admin()).then_some(self.tenant.as_str())
    }

    /// Whether this caller may see a record owned by `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.is_admin() || self.tenant == tenant
    }
}

impl FromRequest for Caller {
    type Error = Error;
    type Future = Ready<Result<Caller>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            request
                .extensions()
                .get::<Caller>()
                .cloned()
                .ok_or_else(|| Error::Internal("the route has no caller: it is not behind the key check".into())),
        )
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// The stored form of a key: its SHA-256 digest in hex.
pub fn key_digest(key: &str) -> String {
    crate::storage::hex(&digest(key.as_bytes()))
}

/// A new secret: `t2i_` and 64 hex digits (two v4 uuids' 244 random bits).
pub fn new_secret() -> String {
    format!("t2i_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The characters of a key kept to recognise it by: `t2i_` and 8 hex digits.
pub fn key_prefix(key: &str) -> String {
    key.chars().take(12).collect()
}

/// Equal digests, in time that depends on neither content.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |difference, (x, y)| difference | (x ^ y)) == 0
}

#[derive(Clone)]
struct StaticKey {
    name: String,
    tenant: String,
    scopes: Scopes,
    digest: [u8; 32],
}

/// The bootstrap keys, from the environment and `--api-keys-file`.
#[derive(Clone, Default)]
pub struct StaticKeys {
    keys: Vec<StaticKey>,
}

impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and scopes only: a key's digest is as good as the key to an offline guesser.
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|key| format!("{}/{}:{}", key.tenant, key.name, key.scopes.names().join("+")))
            .collect();
        f.debug_struct("StaticKeys").field("keys", &keys).finish()
    }
}

impl StaticKeys {
    /// Reads entries separated by newlines or commas, each `SCOPES:KEY`, `NAME:SCOPES:KEY` or
    /// `TENANT:NAME:SCOPES:KEY`, where SCOPES is one scope or several joined by `+` (`inference+feedback`);
    /// blank lines and lines starting with `#` are skipped. `source` names where the text came from, for
    /// errors (which never quote a key).
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for (index, entry) in text
            .split(['\n', ','])
            .map(str::trim)
            .enumerate()
            .filter(|(_, entry)| !entry.is_empty() && !entry.starts_with('#'))
        {
            let fields: Vec<&str> = entry.split(':').map(str::trim).collect();
            let (tenant, name, scopes, key) = match fields.as_slice() {
                [scopes, key] => (DEFAULT_TENANT, format!("key-{}", keys.len() + 1), *scopes, *key),
                [name, scopes, key] => (DEFAULT_TENANT, (*name).to_string(), *scopes, *key),
                [tenant, name, scopes, key] => (*tenant, (*name).to_string(), *scopes, *key),
                _ => {
                    return Err(Error::Config(format!(
                        "{source}: entry {} is not `scopes:key`, `name:scopes:key` or `tenant:name:scopes:key`",
                        index + 1
                    )))
                }
            };
            if !is_tenant_name(tenant) {
                return Err(Error::Config(format!(
                    "{source}: key `{name}` has tenant `{tenant}`; a tenant is 1 to {MAX_NAME_CHARS} ASCII \
                     letters, digits, `.`, `_` or `-`, starting with a letter or digit"
                )));
            }
            let scopes = Scopes::parse(scopes.split('+'))
                .map_err(|err| Error::Config(format!("{source}: key `{name}` has an {err}")))?;
            if key.len() < MIN_KEY_LENGTH {
                return Err(Error::Config(format!(
                    "{source}: key `{name}` is {} characters; keys must be at least {MIN_KEY_LENGTH}",
                    key.len()
                )));
            }
            keys.push(StaticKey {
                name,
                tenant: tenant.to_string(),
                scopes,
                digest: digest(key.as_bytes()),
            });
        }
        Ok(StaticKeys { keys })
    }

    /// Both sources together: the environment variable's text and the file's.
    pub fn load(env_text: Option<&str>, file: Option<&std::path::Path>) -> Result<Self> {
        let mut keys = match env_text {
            Some(text) => StaticKeys::parse(text, "T2I_API_KEYS")?,
            None => StaticKeys::default(),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|err| Error::Config(format!("--api-keys-file {}: {err}", path.display())))?;
            let from_file = StaticKeys::parse(&text, &format!("--api-keys-file {}", path.display()))?;
            keys.keys.extend(from_file.keys);
        }
        Ok(keys)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key whose digest is `presented`; every key is compared, so the time taken says nothing about which
    /// one matched.
    fn find(&self, presented: &[u8; 32]) -> Option<&StaticKey> {
        let mut found = None;
        for key in &self.keys {
            if same_digest(&key.digest, presented) && found.is_none() {
                found = Some(key);
            }
        }
        found
    }
}

/// A stored key as the check needs it.
#[derive(Debug, Clone)]
struct StoredKey {
    id: String,
    name: String,
    tenant: String,
    scopes: Scopes,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    limits: KeyLimits,
}

/// Every key this replica honours: the bootstrap keys, and its copy of the stored ones, reloaded by `refresh`.
pub struct KeyRing {
    bootstrap: StaticKeys,
    /// Stored keys by digest, revoked ones included (so their refusal can say so).
    stored: RwLock<HashMap<[u8; 32], StoredKey>>,
    /// When each stored key was last used here, not yet written to the database.
    used: Mutex<HashMap<String, i64>>,
    /// Whether requests need a key; false is open mode. Fixed at start-up.
    required: bool,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("bootstrap", &self.bootstrap)
            .field("stored", &self.stored_count())
            .field("required", &self.required)
            .finish()
    }
}

impl KeyRing {
    /// A ring with these bootstrap keys and the stored ones given. Keys are required when there is any key at
    /// all, revoked or expired ones included (revoking every key must not reopen a server at its next start),
    /// or when `require` says so.
    pub fn new(bootstrap: StaticKeys, stored: &[KeyRecord], require: bool) -> KeyRing {
        let ring = KeyRing {
            bootstrap,
            stored: RwLock::new(HashMap::new()),
            used: Mutex::new(HashMap::new()),
            required: false,
        };
        ring.replace(stored);
        let required = require || !ring.bootstrap.is_empty() || ring.stored_count() > 0;
        KeyRing { required, ..ring }
    }

    /// Open mode, for tests and tools: no key needed.
    pub fn open() -> KeyRing {
        KeyRing::new(StaticKeys::default(), &[], false)
    }

    pub fn is_open(&self) -> bool {
        !self.required
    }

    pub fn bootstrap_count(&self) -> usize {
        self.bootstrap.len()
    }

    /// Stored keys in this replica's copy, revoked and expired ones included.
    pub fn stored_count(&self) -> usize {
        self.stored.read().map_or(0, |stored| stored.len())
    }

    fn replace(&self, records: &[KeyRecord]) {
        let mut map = HashMap::with_capacity(records.len());
        for record in records {
            let Some(digest) = parse_digest(&record.digest) else {
                tracing::warn!(key = %record.id, "a stored key's digest is not 64 hex digits; it is ignored");
                continue;
            };
            let scopes = Scopes::parse(record.scopes.iter().map(String::as_str)).unwrap_or_else(|err| {
                tracing::warn!(key = %record.id, "{err}; the key gets only the scopes this server knows");
                Scopes::from_iter(record.scopes.iter().filter_map(|name| Scope::from_name(name)))
            });
            map.insert(
                digest,
                StoredKey {
                    id: record.id.clone(),
                    name: record.name.clone(),
                    tenant: record.tenant.clone(),
                    scopes,
                    expires_at: record.expires_at,
                    revoked_at: record.revoked_at,
                    limits: KeyLimits {
                        requests_per_minute: record.requests_per_minute,
                        work_per_minute: record.work_per_minute,
                    },
                },
            );
        }
        if let Ok(mut stored) = self.stored.write() {
            *stored = map;
        }
    }

    /// Writes the last-use times gathered since the last call, then reloads the stored keys. On a database
    /// error the ring keeps the keys it had (and the use times, for the next try).
    pub async fn refresh(&self, storage: &Storage) -> Result<()> {
        let used: Vec<(String, i64)> = self
            .used
            .lock()
            .map(|mut used| used.drain().collect())
            .unwrap_or_default();
        if let Err(err) = storage.touch_keys(&used).await {
            if let Ok(mut pending) = self.used.lock() {
                for (id, at) in used {
                    let entry = pending.entry(id).or_insert(at);
                    *entry = (*entry).max(at);
                }
            }
            return Err(err);
        }
        let records = storage.list_keys(None).await?;
        self.replace(&records);
        Ok(())
    }

    /// Checks an `Authorization` header value against the scope a route needs and returns the caller. 401
    /// without a valid key (missing, unknown, revoked, expired), 403 with a key that lacks the scope. In open
    /// mode everyone is `Caller::open()`.
    pub fn check(&self, authorization: Option<&str>, needed: Scope) -> Result<Caller> {
        if self.is_open() {
            return Ok(Caller::open());
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
        let caller = if let Some(key) = self.bootstrap.find(&presented) {
            Caller {
                key_id: None,
                key_name: Some(key.name.clone()),
                tenant: key.tenant.clone(),
                scopes: key.scopes,
                limits: KeyLimits::default(),
                client: None,
            }
        } else {
            let key = self
                .stored
                .read()
                .map_err(|_| Error::Internal("the key ring's lock is poisoned".into()))?
                .get(&presented)
                .cloned()
                .ok_or_else(|| Error::Unauthorized("the API key is not valid".into()))?;
            let now = now_millis();
            if key.revoked_at.is_some() {
                return Err(Error::Unauthorized(format!("the API key `{}` was revoked", key.name)));
            }
            if let Some(expires_at) = key.expires_at.filter(|at| *at <= now) {
                return Err(Error::Unauthorized(format!(
                    "the API key `{}` expired at {expires_at} (Unix milliseconds)",
                    key.name
                )));
            }
            if let Ok(mut used) = self.used.lock() {
                used.insert(key.id.clone(), now);
            }
            Caller {
                key_id: Some(key.id),
                key_name: Some(key.name),
                tenant: key.tenant,
                scopes: key.scopes,
                limits: key.limits,
                client: None,
            }
        };
        if !caller.scopes.allows(needed) {
            return Err(Error::Forbidden(format!(
                "the API key `{}` has the scopes [{}]; this route needs `{}`",
                caller.key_name.as_deref().unwrap_or_default(),
                caller.scopes.names().join(", "),
                needed.name()
            )));
        }
        Ok(caller)
    }
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(digest)
}

/// The scope a route needs, from its method and matched pattern, as its `Endpoint` declares; `None` for the
/// open routes, the Swagger UI and paths we do not serve (404). A method a path does not declare needs admin,
/// so that nothing undeclared is ever open.
pub fn route_scope(method: &str, pattern: &str, protect_metrics: bool) -> Option<Scope> {
    if pattern == "unmatched" || pattern.starts_with("/docs") {
        return None;
    }
    match endpoint::find(crate::http::endpoints(), method, pattern) {
        Some(endpoint) => Scope::of(endpoint.access, protect_metrics),
        None => Some(Scope::Admin),
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
/// carry (`route_scope`), and 429 when the caller is past its requests per minute (`rate_limit`); otherwise
/// puts the `Caller` in the request's extensions, and the caller's standing in the answer's headers. The OpenAI-compatible
/// routes answer in OpenAI's error shape.
pub async fn authenticate<B: MessageBody + 'static>(
    request: ServiceRequest,
    next: Next<B>,
) -> std::result::Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let mut in_flight = None;
    let mut standing = None;
    if let Some(state) = request.app_data::<web::Data<AppState>>().cloned() {
        let pattern = request.match_pattern().unwrap_or_else(|| "unmatched".to_string());
        if let Some(scope) = route_scope(request.method().as_str(), &pattern, state.protect_metrics) {
            let header = request
                .headers()
                .get(actix_web::http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok());
            let admitted = state.keys.check(header, scope).and_then(|caller| {
                let guard = match &caller.key_name {
                    Some(name) => InFlight::acquire(&state, name)?,
                    None => None,
                };
                Ok((caller, guard))
            });
            let admitted = match admitted {
                Ok((mut caller, guard)) => {
                    if state.keys.is_open() {
                        // No key to count by: the peer's address (never a forwarded header, which anyone sets).
                        caller.client = request.peer_addr().map(|address| address.ip().to_string());
                    }
                    match state.rate_limits.admit(&state.storage, &caller).await {
                        Ok(found) => {
                            standing = found;
                            Ok((caller, guard))
                        }
                        Err(err) => {
                            state.metrics.rate_limited(&caller.tenant, "requests");
                            Err(err)
                        }
                    }
                }
                Err(err) => Err(err),
            };
            match admitted {
                Ok((caller, guard)) => {
                    request.extensions_mut().insert(caller);
                    in_flight = guard;
                }
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
    let mut response = next.call(request).await.map(ServiceResponse::map_into_left_body);
    drop(in_flight);
    if let (Ok(response), Some(standing)) = (&mut response, standing) {
        // A refusal later on (the work limit) has written its own standing.
        if !response.headers().contains_key("ratelimit-limit") {
            standing.write(response.headers_mut());
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFERENCE: &str = "inference-key-0123456789";
    const ADMIN: &str = "admin-key-0123456789abcd";

    fn bootstrap() -> StaticKeys {
        StaticKeys::parse(
            &format!("app:inference:{INFERENCE}\n# ops\nteam-b:ops:admin:{ADMIN}"),
            "test",
        )
        .unwrap()
    }

    fn keys() -> KeyRing {
        KeyRing::new(bootstrap(), &[], false)
    }

    fn bearer(key: &str) -> String {
        format!("Bearer {key}")
    }

    fn stored(name: &str, secret: &str, scopes: &[&str]) -> KeyRecord {
        KeyRecord {
            id: format!("key_{name}"),
            name: name.into(),
            tenant: "acme".into(),
            scopes: scopes.iter().map(|scope| scope.to_string()).collect(),
            digest: key_digest(secret),
            prefix: key_prefix(secret),
            created_at: 0,
            created_by: None,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            requests_per_minute: None,
            work_per_minute: None,
        }
    }

    #[test]
    fn open_mode_lets_everything_through_as_an_admin_of_the_default_tenant() {
        let keys = KeyRing::open();
        assert!(keys.is_open());
        let caller = keys.check(None, Scope::Admin).unwrap();
        assert_eq!(caller, Caller::open());
        assert!(caller.is_admin());
        assert_eq!(caller.tenant, DEFAULT_TENANT);
        // --require-auth with no key at all: every request is refused, nothing is open.
        let required = KeyRing::new(StaticKeys::default(), &[], true);
        assert!(!required.is_open());
        assert_eq!(
            required.check(None, Scope::Inference).unwrap_err().kind(),
            "unauthorized"
        );
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
    fn admin_holds_every_scope_and_a_missing_scope_is_403() {
        let keys = keys();
        let app = keys.check(Some(&bearer(INFERENCE)), Scope::Inference).unwrap();
        assert_eq!(app.key_name.as_deref(), Some("app"));
        assert_eq!(app.tenant, DEFAULT_TENANT);
        assert!(!app.is_admin());
        let ops = keys.check(Some(&bearer(ADMIN)), Scope::FineTune).unwrap();
        assert_eq!((ops.key_name.as_deref(), ops.tenant.as_str()), (Some("ops"), "team-b"));
        assert!(ops.is_admin() && ops.visible_tenant().is_none() && ops.sees("anyone"));
        for needed in [Scope::Feedback, Scope::FineTune, Scope::Admin] {
            let err = keys.check(Some(&bearer(INFERENCE)), needed).unwrap_err();
            assert_eq!(err.kind(), "forbidden");
            assert!(err.to_string().contains(&format!("needs `{}`", needed.name())), "{err}");
            assert!(!err.to_string().contains(INFERENCE), "errors never quote a key");
        }
    }

    #[test]
    fn stored_keys_are_found_by_digest_and_revocation_and_expiry_refuse_them() {
        let secret = new_secret();
        assert!(secret.starts_with("t2i_") && secret.len() == 68, "{secret}");
        assert_eq!(key_prefix(&secret).len(), 12);
        let mut record = stored("ci", &secret, &["inference", "feedback"]);
        let ring = KeyRing::new(StaticKeys::default(), std::slice::from_ref(&record), false);
        assert!(!ring.is_open(), "a stored key closes the server");
        let caller = ring.check(Some(&bearer(&secret)), Scope::Feedback).unwrap();
        assert_eq!(caller.key_id.as_deref(), Some("key_ci"));
        assert_eq!(
            (caller.tenant.as_str(), caller.visible_tenant()),
            ("acme", Some("acme"))
        );
        assert!(caller.sees("acme") && !caller.sees("other"));
        assert_eq!(
            ring.used.lock().unwrap().len(),
            1,
            "the use is remembered for the database"
        );
        assert_eq!(
            ring.check(Some(&bearer(&secret)), Scope::FineTune).unwrap_err().kind(),
            "forbidden"
        );

        record.revoked_at = Some(1);
        ring.replace(std::slice::from_ref(&record));
        let err = ring.check(Some(&bearer(&secret)), Scope::Inference).unwrap_err();
        assert_eq!(err.kind(), "unauthorized");
        assert!(err.to_string().contains("`ci` was revoked"), "{err}");

        record.revoked_at = None;
        record.expires_at = Some(now_millis() - 1);
        ring.replace(std::slice::from_ref(&record));
        let err = ring.check(Some(&bearer(&secret)), Scope::Inference).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        // A ring whose only key is expired or revoked still requires keys: it never falls open.
        let expired = KeyRing::new(StaticKeys::default(), std::slice::from_ref(&record), false);
        assert!(!expired.is_open());
        assert_eq!(
            expired
                .check(Some(&bearer(&secret)), Scope::Inference)
                .unwrap_err()
                .kind(),
            "unauthorized"
        );
    }

    #[test]
    fn bad_entries_are_config_errors_that_never_quote_the_key() {
        for (text, key, expected) in [
            ("admin", "admin", "is not `scopes:key`"),
            ("root:0123456789abcdefgh", "0123456789abcdefgh", "unknown scope `root`"),
            ("inference:short", "short", "at least 16"),
            (
                "bad tenant:app:inference:0123456789abcdefgh",
                "0123456789abcdefgh",
                "tenant `bad tenant`",
            ),
            (
                "app:inference+sudo:0123456789abcdefgh",
                "0123456789abcdefgh",
                "unknown scope `sudo`",
            ),
        ] {
            let err = StaticKeys::parse(text, "T2I_API_KEYS").unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains(key), "{text}: the error quotes the key: {err}");
        }
        let debug = format!("{:?}", bootstrap());
        assert!(!debug.contains(INFERENCE) && !debug.contains(ADMIN), "{debug}");
        let several = StaticKeys::parse("ci:inference+feedback:0123456789abcdefgh", "test").unwrap();
        assert_eq!(several.keys[0].scopes.names(), ["inference", "feedback"]);
    }

    #[test]
    fn tenant_names() {
        for good in ["default", "acme", "team-b", "a.b_c", "0"] {
            assert!(is_tenant_name(good), "{good}");
        }
        for bad in ["", "-a", "a b", "é", &"a".repeat(65)] {
            assert!(!is_tenant_name(bad), "{bad}");
        }
    }

    #[test]
    fn routes_map_to_scopes() {
        assert_eq!(route_scope("GET", "/health", false), None);
        assert_eq!(route_scope("GET", "/metrics", false), None);
        assert_eq!(route_scope("GET", "/metrics", true), Some(Scope::Admin));
        assert_eq!(route_scope("POST", "/generate", false), Some(Scope::Inference));
        assert_eq!(route_scope("POST", "/feedback", false), Some(Scope::Inference));
        assert_eq!(route_scope("GET", "/feedback", false), Some(Scope::Feedback));
        assert_eq!(route_scope("GET", "/feedback/export", false), Some(Scope::Feedback));
        assert_eq!(route_scope("POST", "/fine-tunes", false), Some(Scope::FineTune));
        assert_eq!(route_scope("POST", "/models/{id}/activate", false), Some(Scope::Admin));
        assert_eq!(route_scope("POST", "/keys", false), Some(Scope::Admin));
        assert_eq!(route_scope("GET", "/audit", false), Some(Scope::Admin));
        assert_eq!(route_scope("GET", "/models", false), Some(Scope::Inference));
        assert_eq!(route_scope("GET", "/docs/{_:.*}", false), None);
        assert_eq!(route_scope("DELETE", "/feedback/{id}", false), Some(Scope::Inference));
        assert_eq!(route_scope("GET", "/", false), None);
        assert_eq!(route_scope("GET", "/assets/{file}", false), None);
        assert_eq!(route_scope("POST", "/", false), Some(Scope::Admin));
    }
}
