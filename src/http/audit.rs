//! The audit log over HTTP (admin only): `GET /audit` lists who did what, newest first. Handlers write to it
//! through `record`: key creation and revocation, fine-tune jobs created and cancelled, activations.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::Result;
use crate::http::auth::Caller;
use crate::http::endpoint::{self, Access, Endpoint, Method};
use crate::http::error::ErrorBody;
use crate::http::extract::{page_limit, query_params};
use crate::http::AppState;
use crate::storage::{AuditRecord, NewAudit};

/// The routes this module serves, each with who may call it.
pub const ENDPOINTS: &[Endpoint] = &[Endpoint::new(Method::Get, "/audit", Access::Admin, |route| {
    route.to(list_audit)
})];

pub fn configure(cfg: &mut web::ServiceConfig) {
    endpoint::configure(cfg, ENDPOINTS);
}

/// Writes one line of the audit log for what `caller` just did. The action has happened by then, so a failed
/// write is logged (with everything it would have recorded) rather than undoing it.
pub async fn record(state: &AppState, caller: &Caller, action: &str, target: &str, detail: Option<serde_json::Value>) {
    let entry = NewAudit {
        key_name: caller.key_name.as_deref(),
        tenant: &caller.tenant,
        action,
        target,
        detail,
    };
    if let Err(err) = state.storage.audit(&entry).await {
        tracing::error!(
            error = %err,
            action,
            target,
            key = caller.key_name.as_deref().unwrap_or("(open mode)"),
            tenant = %caller.tenant,
            "cannot write the audit log"
        );
    }
}

/// The id of an audit entry (`id` in `GET /audit` answers).
#[derive(ToSchema)]
#[schema(value_type = String, format = "audit-id")]
#[allow(dead_code)]
pub struct AuditId(String);

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "aud_0f8fad5bd9cb469fa16570867728950e", "object": "audit_entry",
    "at": 1764900000000_i64, "key_name": "ops", "tenant": "acme", "action": "model.activate",
    "target": "shapes-sd-ft-5d41402a", "detail": null}))]
pub struct AuditOut {
    pub id: String,
    /// Always `audit_entry`.
    pub object: String,
    /// Unix milliseconds.
    pub at: i64,
    /// The acting key's name; null in open mode and for `t2i-align keys` on the command line.
    pub key_name: Option<String>,
    /// The acting key's tenant.
    pub tenant: String,
    /// `key.create`, `key.revoke`, `fine_tune.create`, `fine_tune.cancel` or `model.activate`.
    pub action: String,
    /// The id acted on.
    pub target: String,
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

impl From<AuditRecord> for AuditOut {
    fn from(entry: AuditRecord) -> AuditOut {
        AuditOut {
            id: entry.id,
            object: "audit_entry".into(),
            at: entry.at,
            key_name: entry.key_name,
            tenant: entry.tenant,
            action: entry.action,
            target: entry.target,
            detail: entry.detail.and_then(|text| serde_json::from_str(&text).ok()),
        }
    }
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub data: Vec<AuditOut>,
    pub has_more: bool,
    /// Pass as `before` for the next (older) page.
    pub last_id: Option<String>,
}

/// Paging and the tenant filter of `GET /audit`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// The last id of the previous page: list older entries.
    #[param(value_type = Option<AuditId>)]
    pub before: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only what this tenant's keys did.
    pub tenant: Option<String>,
}

/// Who did what: key changes, fine-tune jobs and activations, newest first.
#[utoipa::path(
    get,
    path = "/audit",
    tag = "keys",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of the audit log", body = AuditPage),
        (status = 404, description = "`before` names no audit entry", body = ErrorBody),
        (status = 422, description = "`limit` breaks a rule", body = ErrorBody),
    )
)]
pub async fn list_audit(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse> {
    let params: AuditParams = query_params(&request)?;
    let limit = page_limit(params.limit)?;
    let mut entries = state
        .storage
        .list_audit(params.tenant.as_deref(), params.before.as_deref(), limit + 1)
        .await?;
    let has_more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let last_id = entries.last().map(|entry| entry.id.clone());
    Ok(HttpResponse::Ok().json(AuditPage {
        data: entries.into_iter().map(AuditOut::from).collect(),
        has_more,
        last_id,
    }))
}
