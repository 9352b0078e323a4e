//! The pipeline's JSON API (thin: the work is in [`crate::pipeline`] and [`crate::infer`]).
//!
//! - `GET  /api/v1/studies/{uid}/findings` — findings of the study's current results (and
//!   with `?include_superseded=true` the older ones), with its jobs;
//! - `POST /api/v1/studies/{uid}/process[?priority=stat]` — route the study now;
//! - `POST /api/v1/studies/{uid}/cancel` — cancel its queued and running jobs;
//! - `GET  /api/v1/jobs[?state=&study=&model=&limit=&offset=]`;
//! - `GET  /api/v1/models` — loaded models, device, adapter, batching, queue depth;
//! - `POST /api/v1/infer?model=NAME[&priority=stat]` — synchronous inference on an
//!   uploaded instance (`application/dicom`) or a stored series (`application/json`
//!   `{"study_instance_uid": …, "series_instance_uid": …}`); never stored. Answers carry a
//!   `Server-Timing` header with each stage; a full queue answers 429 with `Retry-After`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiQuery, AppState, bounded_limit, one_of};
use crate::infer::{CancelFlag, ModelState};
use crate::pipeline::analyse::{Admission, AnalysisError, analyse};
use crate::pipeline::decode::decode_instance;
use crate::store::Priority;
use crate::store::jobs::{JOB_STATES, JobFilter};

/// Largest `limit` of `GET /api/v1/jobs`.
pub const MAX_JOBS_LIMIT: u32 = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/studies/{study}/findings", get(findings))
        .route("/api/v1/studies/{study}/process", post(process))
        .route("/api/v1/studies/{study}/cancel", post(cancel))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/models", get(models))
        .route("/api/v1/infer", post(infer))
}

fn pipeline(state: &AppState) -> Result<&crate::pipeline::Pipeline, ApiError> {
    state.pipeline.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the inference pipeline is not running",
        )
    })
}

fn priority(params: &HashMap<String, String>) -> Result<Priority, ApiError> {
    match params.get("priority") {
        None => Ok(Priority::Routine),
        Some(p) => Priority::parse(p).ok_or_else(|| {
            ApiError::bad_request(format!("priority {p:?}: expected stat or routine"))
        }),
    }
}

fn check_uid(uid: &str) -> Result<(), ApiError> {
    if crate::store::attributes::valid_uid(uid) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("{uid:?} is not a valid UID")))
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/studies/{study}/findings",
    tag = "pipeline",
    params(
        ("study" = String, Path, description = "StudyInstanceUID"),
        ("include_superseded" = Option<bool>, Query, description = "Also earlier result versions"),
    ),
    responses(
        (status = 200, description = "Findings (label, code, probability, measurements with UCUM units, location, model name, version and weights hash) and the study's jobs", content_type = "application/json"),
        (status = 404, description = "No such study", content_type = "application/json"),
    )
)]
pub async fn findings(
    State(state): State<AppState>,
    Path(study): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_uid(&study)?;
    let include_superseded = match params.get("include_superseded").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "include_superseded={other:?}: expected true or false"
            )));
        }
    };
    let jobs = state.archive.jobs();
    let findings = jobs
        .findings(&study, include_superseded)
        .await
        .map_err(|e| ApiError::internal("reading findings", e))?;
    let study_jobs = jobs
        .list(&JobFilter {
            study_instance_uid: Some(study.clone()),
            limit: MAX_JOBS_LIMIT,
            ..JobFilter::default()
        })
        .await
        .map_err(|e| ApiError::internal("reading jobs", e))?;
    if findings.is_empty() && study_jobs.is_empty() && !study_exists(&state, &study).await? {
        return Err(ApiError::not_found(format!("no study {study}")));
    }
    Ok(Json(json!({
        "study_instance_uid": study,
        "findings": findings,
        "jobs": study_jobs,
    })))
}

async fn study_exists(state: &AppState, study: &str) -> Result<bool, ApiError> {
    let instances = state
        .archive
        .locate(&crate::store::Scope::Study {
            study: study.to_owned(),
        })
        .await
        .map_err(|e| ApiError::internal("locating the study", e))?;
    Ok(!instances.is_empty())
}

#[utoipa::path(
    post,
    path = "/api/v1/studies/{study}/process",
    tag = "pipeline",
    params(
        ("study" = String, Path, description = "StudyInstanceUID"),
        ("priority" = Option<String>, Query, description = "stat or routine (default)"),
    ),
    responses(
        (status = 202, description = "Routed now; the queued jobs", content_type = "application/json"),
        (status = 404, description = "No such study", content_type = "application/json"),
    )
)]
pub async fn process(
    State(state): State<AppState>,
    Path(study): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    check_uid(&study)?;
    let priority = priority(&params)?;
    let pipeline = pipeline(&state)?.clone();
    let found = state
        .archive
        .jobs()
        .request_processing(&study, priority)
        .await
        .map_err(|e| ApiError::internal("requesting processing", e))?;
    if !found {
        return Err(ApiError::not_found(format!("no study {study}")));
    }
    // Route now rather than at the next tick.
    if let Err(e) = crate::pipeline::stability::step(&pipeline).await {
        tracing::warn!(error = %e, "routing on request failed; the next tick retries");
    }
    let jobs = state
        .archive
        .jobs()
        .list(&JobFilter {
            study_instance_uid: Some(study.clone()),
            state: Some("queued".into()),
            limit: MAX_JOBS_LIMIT,
            ..JobFilter::default()
        })
        .await
        .map_err(|e| ApiError::internal("reading jobs", e))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "study_instance_uid": study, "queued_jobs": jobs })),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/studies/{study}/cancel",
    tag = "pipeline",
    params(("study" = String, Path, description = "StudyInstanceUID")),
    responses((status = 200, description = "How many queued or running jobs were cancelled", content_type = "application/json"))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(study): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_uid(&study)?;
    let cancelled = state
        .archive
        .jobs()
        .cancel_study(&study)
        .await
        .map_err(|e| ApiError::internal("cancelling jobs", e))?;
    Ok(Json(
        json!({ "study_instance_uid": study, "cancelled_jobs": cancelled }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    state: Option<String>,
    study: Option<String>,
    model: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "pipeline",
    params(
        ("state" = Option<String>, Query, description = "queued, running, done, failed or cancelled"),
        ("study" = Option<String>, Query, description = "StudyInstanceUID"),
        ("model" = Option<String>, Query, description = "Model name"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100"),
        ("offset" = Option<u32>, Query, description = "Jobs to skip"),
    ),
    responses(
        (status = 200, description = "Jobs, newest first, with per-stage timings, and counts by state", content_type = "application/json"),
        (status = 400, description = "Invalid filter", content_type = "application/json"),
    )
)]
pub async fn jobs(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<JobsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    one_of("state", query.state.as_deref(), &JOB_STATES)?;
    let limit = bounded_limit(query.limit, 100, MAX_JOBS_LIMIT)?;
    let store = state.archive.jobs();
    let list = store
        .list(&JobFilter {
            state: query.state,
            study_instance_uid: query.study,
            model: query.model,
            limit,
            offset: query.offset.unwrap_or(0),
        })
        .await
        .map_err(|e| ApiError::internal("listing jobs", e))?;
    let counts: serde_json::Map<String, serde_json::Value> = store
        .counts_by_state()
        .await
        .map_err(|e| ApiError::internal("counting jobs", e))?
        .into_iter()
        .map(|(s, n)| (s, json!(n)))
        .collect();
    Ok(Json(json!({ "jobs": list, "counts": counts })))
}

#[utoipa::path(
    get,
    path = "/api/v1/models",
    tag = "pipeline",
    responses((status = 200, description = "Served models: state, backend and adapter, batching, queue depth, labels, card metrics", content_type = "application/json"))
)]
pub async fn models(State(state): State<AppState>) -> Json<serde_json::Value> {
    let list: Vec<serde_json::Value> = state
        .models
        .list()
        .into_iter()
        .map(|m| {
            let policy = m.batcher.as_ref().map(|b| b.policy().clone());
            json!({
                "name": m.name,
                "version": m.manifest.model.version,
                "description": m.manifest.model.description,
                "disclaimer": m.manifest.model.disclaimer,
                "weights_sha256": m.manifest.weights.sha256,
                "state": m.state,
                "backend": m.backend,
                "adapter": m.adapter,
                "input": m.manifest.input,
                "labels": m.manifest.output.labels,
                "task": m.manifest.output.kind,
                "metrics": m.manifest.metrics,
                "queue_depth": m.batcher.as_ref().map_or(0, |b| b.queue_depth()),
                "max_batch_size": policy.as_ref().map(|p| p.max_batch_size),
                "max_queue_delay_ms": policy.as_ref().map(|p| p.max_queue_delay.as_secs_f64() * 1e3),
                "batch_sizes": policy.as_ref().map(|p| p.batch_sizes.clone()),
                "max_queue_size": policy.as_ref().map(|p| p.max_queue_size),
            })
        })
        .collect();
    Json(json!({ "models": list }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesReference {
    study_instance_uid: String,
    series_instance_uid: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/infer",
    tag = "pipeline",
    params(
        ("model" = String, Query, description = "Model name"),
        ("priority" = Option<String>, Query, description = "stat or routine (default)"),
    ),
    request_body(description = "One instance (application/dicom) or a stored series (application/json: study_instance_uid, series_instance_uid)"),
    responses(
        (status = 200, description = "Findings and per-stage timings (also in the Server-Timing header); nothing is stored", content_type = "application/json"),
        (status = 415, description = "Unsupported Content-Type", content_type = "application/json"),
        (status = 422, description = "The images do not suit the model", content_type = "application/json"),
        (status = 429, description = "The model's queue is full (Retry-After)", content_type = "application/json"),
        (status = 503, description = "The model is loading or failed (Retry-After)", content_type = "application/json"),
    )
)]
pub async fn infer(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let name = params
        .get("model")
        .ok_or_else(|| ApiError::bad_request("the query parameter `model` is required"))?;
    let priority = priority(&params)?;
    let model = state
        .models
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no model `{name}`")))?;
    let batcher = match (&model.state, &model.batcher) {
        (ModelState::Ready, Some(b)) => b.clone(),
        (ModelState::Failed(reason), _) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("model `{name}` failed to load: {reason}"),
            ));
        }
        _ => return Err(retry_later(format!("model `{name}` is still loading"))),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let started = std::time::Instant::now();
    let images = match content_type.as_str() {
        "application/dicom" => {
            let decoded = tokio::task::spawn_blocking(move || decode_instance(&body))
                .await
                .map_err(|e| ApiError::internal("decoding", e))?
                .map_err(|reason| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason))?;
            vec![decoded]
        }
        "application/json" => {
            let reference: SeriesReference = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
            check_uid(&reference.study_instance_uid)?;
            check_uid(&reference.series_instance_uid)?;
            crate::pipeline::worker::read_series(
                pipeline(&state)?,
                &reference.study_instance_uid,
                &reference.series_instance_uid,
            )
            .await
            .map_err(analysis_error)?
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type {other:?}: send application/dicom (one instance) or application/json (a stored series)"
                ),
            ));
        }
    };
    let decode = started.elapsed();
    let mut analysis = analyse(
        &model.manifest,
        &batcher,
        Arc::new(images),
        priority,
        &CancelFlag::default(),
        Admission::RefuseWhenFull,
    )
    .await
    .map_err(analysis_error)?;
    analysis.timings.decode_ms = decode.as_secs_f64() * 1e3;
    let body = json!({
        "model": model.name,
        "version": model.manifest.model.version,
        "weights_sha256": model.manifest.weights.sha256,
        "findings": analysis.findings,
        "timings": analysis.timings,
    });
    let mut response = Json(body).into_response();
    if let Ok(value) = HeaderValue::from_str(&analysis.timings.header()) {
        response.headers_mut().insert("server-timing", value);
    }
    Ok(response)
}

fn retry_later(message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
}

fn analysis_error(e: AnalysisError) -> ApiError {
    match e {
        AnalysisError::Unsuitable(reason) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason)
        }
        AnalysisError::Busy(reason) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, reason),
        AnalysisError::Cancelled => ApiError::new(StatusCode::CONFLICT, "cancelled"),
        AnalysisError::Transient(reason) => retry_later(reason),
    }
}
