//! `GET /api/v1/audit?limit=&offset=`: the audit trail, newest first, for admins (the
//! route table in [`crate::auth::routes`] enforces the role).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiQuery, bounded_limit};
use crate::auth::Auth;
use crate::store::AuditRecord;

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// How many records, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// How many of the newest records to skip (default 0).
    pub offset: Option<u32>,
}

/// One audited access to patient data.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// When, RFC 3339 UTC.
    pub at: String,
    /// Token label (or `token#<id>`, `env-admin`, `anonymous`).
    pub user: String,
    pub role: String,
    /// e.g. `qido.studies`, `wado.instance`, `stow.studies`.
    pub action: String,
    /// The resource, by UIDs only: e.g. `studies/1.2.3/series`.
    pub resource: String,
    /// Client address and port.
    pub client: String,
    /// `success`, `denied` or `error: <status>`.
    pub outcome: String,
}

impl From<AuditRecord> for AuditEntry {
    fn from(r: AuditRecord) -> Self {
        AuditEntry {
            at: r.at,
            user: r.user,
            role: r.role,
            action: r.action,
            resource: r.resource,
            client: r.client,
            outcome: r.outcome,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub limit: u32,
    pub offset: u32,
    pub records: Vec<AuditEntry>,
}

/// Lists audit records, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "Audit records, newest first", body = AuditPage),
        (status = 400, description = "Invalid limit or offset"),
    )
)]
pub async fn list(
    State(auth): State<Auth>,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = bounded_limit(params.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let offset = params.offset.unwrap_or(0);
    let records = auth
        .archive()
        .audit_records(limit, offset)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot read audit records");
            ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "cannot read the audit records".to_owned(),
            }
        })?;
    Ok(Json(AuditPage {
        limit,
        offset,
        records: records.into_iter().map(AuditEntry::from).collect(),
    }))
}

/// The `/api/v1/audit` route, mergeable into any router.
pub fn routes<S: Clone + Send + Sync + 'static>(auth: Auth) -> axum::Router<S> {
    axum::Router::new()
        .route("/api/v1/audit", axum::routing::get(list))
        .with_state(auth)
}
