//! The HTTP side: one axum [`Router`] for the whole server.
//!
//! - [`health`]: `/health/live` and `/health/ready` (no authentication, by contract);
//! - `/metrics` ([`crate::metrics`]);
//! - DICOMweb under `/dicomweb` ([`crate::dicomweb`]);
//! - `/api/v1/audit` ([`audit`]) and `/api/v1/openapi.json` ([`openapi`]);
//! - findings as FHIR R4 under `/fhir` ([`fhir`]).
//!
//! Every route goes through [`crate::auth::require`] (bearer tokens, roles, audit; the
//! health probes are public in its table) and [`crate::metrics::track_http`]. Every other
//! path answers 404 and every other method 405, both with a JSON body `{"error": "..."}`
//! like all our errors.

pub mod audit;
pub mod emr;
pub mod fhir;
pub mod health;
pub mod openapi;
pub mod pipeline;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth::{self, Auth};
use crate::config::Settings;
use crate::infer::Models;
use crate::pipeline::Pipeline;
use crate::store::Archive;

/// What the handlers share. Cheap to clone (the archive and settings are shared).
#[derive(Clone)]
pub struct AppState {
    /// The data directory (readiness checks that it is writable).
    pub data_dir: PathBuf,
    pub archive: Archive,
    pub settings: Arc<Settings>,
    /// The served models (empty when none are configured).
    pub models: Models,
    /// The study pipeline, when it runs.
    pub pipeline: Option<Pipeline>,
    /// The EMR records and join, when they run.
    pub emr: Option<crate::emr::Emr>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(settings: &Settings, archive: Archive) -> Self {
        AppState {
            data_dir: settings.data.clone(),
            archive,
            settings: Arc::new(settings.clone()),
            models: Models::default(),
            pipeline: None,
            emr: None,
        }
    }

    /// The same state, serving `pipeline` and its models.
    pub fn with_pipeline(mut self, pipeline: Pipeline) -> Self {
        self.models = pipeline.models.clone();
        self.emr = pipeline.emr.clone();
        self.pipeline = Some(pipeline);
        self
    }

    /// The largest request body accepted (`http.max_body_mb`), in bytes.
    pub fn max_body_bytes(&self) -> u64 {
        self.settings.http.max_body_mb.saturating_mul(1 << 20)
    }
}

/// Handlers written against `State<Arc<AppState>>` keep working.
impl FromRef<AppState> for Arc<AppState> {
    fn from_ref(state: &AppState) -> Self {
        Arc::new(state.clone())
    }
}

/// Builds the router. `max_body_bytes` bounds every buffered request body (STOW-RS
/// streams its body and enforces the same bound itself).
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let auth = Auth::from_env(state.archive.clone());
    Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .merge(crate::metrics::routes())
        .merge(audit::routes(auth.clone()))
        .merge(openapi::routes())
        .merge(pipeline::routes())
        .merge(emr::routes())
        .merge(fhir::routes())
        .nest("/dicomweb", crate::dicomweb::routes())
        .route_layer(axum::middleware::from_fn_with_state(auth, auth::require))
        .route_layer(axum::middleware::from_fn(crate::metrics::track_http))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// A query string read into `T`; one that does not fit is a 400 with our JSON error saying
/// why (axum's own rejection is plain text).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(query)| ApiQuery(query))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
    }
}

/// A list's `limit`: `default` when absent, else within 1..=`max`.
pub fn bounded_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(format!(
            "limit {limit}: expected 1 to {max}"
        )))
    }
}

/// A filter `name` that must be one of `allowed` when given.
pub fn one_of(name: &str, value: Option<&str>, allowed: &[&str]) -> Result<(), ApiError> {
    match value {
        Some(v) if !allowed.contains(&v) => Err(ApiError::bad_request(format!(
            "{name} {v:?}: expected one of {}",
            allowed.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// An error answered as `{"error": message}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_ACCEPTABLE, message)
    }

    /// A failure of ours (store, task): logged here with its detail, answered as 500.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "{context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{context}: internal error"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        // Overload and not-yet-ready are temporary: say when to come back.
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no route for {method} {}", uri.path()),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("method {method} not allowed on {}", uri.path()),
    }
}
