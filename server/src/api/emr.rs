//! The EMR's JSON API, and the clinician's view of a study with its EMR context.
//!
//! - `POST /api/v1/emr/fhir` — a FHIR R4 Bundle (transaction, batch or collection) of
//!   Patient, ServiceRequest, Encounter; per-entry errors, the rest stored;
//! - `GET  /api/v1/emr/unmatched` — studies the join left ambiguous or unmatched, with why;
//! - `POST /api/v1/emr/links` — resolve one by hand (audited);
//! - `GET  /api/v1/emr/quality[?stale_days=N]` — the data-quality report;
//! - `GET  /api/v1/studies/{uid}` — the study, its findings, their deliveries to the EMR and
//!   its EMR context;
//! - `GET  /api/v1/patients/{id}/studies` — a patient's timeline;
//! - `GET  /api/v1/emr/outbox[?state=&destination=&study=&limit=&offset=]` — results sent
//!   (or being sent) to the EMR, with the destination's answer;
//! - `POST /api/v1/emr/outbox/{id}/retry` — send one again now (audited).

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiQuery, AppState, bounded_limit, one_of};
use crate::emr::ingest::{ENCOUNTER, IngestError, ORDER, PATIENT};
use crate::emr::{Emr, EmrEncounter, EmrOrder, EmrPatient};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/emr/fhir", post(ingest_fhir))
        .route("/api/v1/emr/unmatched", get(unmatched))
        .route("/api/v1/emr/links", post(link))
        .route("/api/v1/emr/quality", get(quality))
        .route("/api/v1/emr/outbox", get(outbox))
        .route("/api/v1/emr/outbox/{id}/retry", post(retry_delivery))
        .route("/api/v1/studies/{study}", get(study))
        .route("/api/v1/patients/{patient}/studies", get(patient_studies))
}

fn emr(state: &AppState) -> Result<&Emr, ApiError> {
    state.emr.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the EMR join is not running",
        )
    })
}

fn store_error(context: &'static str) -> impl Fn(crate::store::StoreError) -> ApiError {
    move |e| ApiError::internal(context, e)
}

#[utoipa::path(
    post,
    path = "/api/v1/emr/fhir",
    tag = "emr",
    request_body(description = "FHIR R4 Bundle (application/fhir+json or application/json)"),
    responses(
        (status = 200, description = "Counts of created, updated and unchanged records, ignored types, per-entry errors, the join's outcome", content_type = "application/json"),
        (status = 400, description = "Not a Bundle we can read", content_type = "application/json"),
    )
)]
pub async fn ingest_fhir(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let report = emr(&state)?.ingest_fhir(&body).await.map_err(|e| match e {
        IngestError::Bundle(reason) => ApiError::bad_request(reason),
        IngestError::Store(e) => ApiError::internal("storing EMR records", e),
    })?;
    Ok(Json(json!(report)))
}

#[utoipa::path(
    get,
    path = "/api/v1/emr/unmatched",
    tag = "emr",
    responses((status = 200, description = "Studies left for review: ambiguous (with candidates) or unmatched, with the reason", content_type = "application/json"))
)]
pub async fn unmatched(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let links = emr(&state)?
        .store()
        .links(&["ambiguous", "unmatched"], None, 1000)
        .await
        .map_err(store_error("reading the review queue"))?;
    Ok(Json(json!({ "studies": links })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualLink {
    study_instance_uid: String,
    patient: String,
    #[serde(default)]
    order: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/emr/links",
    tag = "emr",
    request_body(description = "{\"study_instance_uid\", \"patient\" (EMR Patient id), \"order\" (ServiceRequest id, optional)}"),
    responses(
        (status = 200, description = "The link as stored", content_type = "application/json"),
        (status = 404, description = "Unknown study, patient or order", content_type = "application/json"),
    )
)]
pub async fn link(
    State(state): State<AppState>,
    user: Option<axum::Extension<crate::auth::Principal>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: ManualLink = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let emr = emr(&state)?;
    let store = emr.store();
    if store
        .study_facts(Some(&request.study_instance_uid))
        .await
        .map_err(store_error("reading the study"))?
        .is_empty()
    {
        return Err(ApiError::not_found(format!(
            "no study {}",
            request.study_instance_uid
        )));
    }
    let patient: Option<(EmrPatient, i64)> = store
        .get(PATIENT, &request.patient)
        .await
        .map_err(store_error("reading the patient"))?;
    if patient.is_none() {
        return Err(ApiError::not_found(format!(
            "no EMR patient {}",
            request.patient
        )));
    }
    if let Some(order) = &request.order {
        let found: Option<(EmrOrder, i64)> = store
            .get(ORDER, order)
            .await
            .map_err(store_error("reading the order"))?;
        match found {
            None => return Err(ApiError::not_found(format!("no EMR order {order}"))),
            Some((o, _)) if o.patient.as_deref().is_some_and(|p| p != request.patient) => {
                return Err(ApiError::bad_request(format!(
                    "order {order} belongs to another patient"
                )));
            }
            Some(_) => {}
        }
    }
    let who = user.map_or_else(|| "unknown".to_owned(), |u| u.0.user.clone());
    store
        .link_by_hand(
            &request.study_instance_uid,
            &request.patient,
            request.order.as_deref(),
            &who,
        )
        .await
        .map_err(store_error("storing the link"))?;
    let stored = store
        .link(&request.study_instance_uid)
        .await
        .map_err(store_error("reading the link"))?;
    Ok(Json(json!(stored)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityQuery {
    stale_days: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/emr/quality",
    tag = "emr",
    params(("stale_days" = Option<i64>, Query, description = "Orders with no study after this many days (default 7)")),
    responses((status = 200, description = "Studies by match method and state, top reasons, orders without study, identifier conflicts", content_type = "application/json"))
)]
pub async fn quality(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<QualityQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let days = query.stale_days.unwrap_or(7);
    if !(0..=36_500).contains(&days) {
        return Err(ApiError::bad_request(format!(
            "stale_days {days}: expected 0 to 36500"
        )));
    }
    let report = emr(&state)?
        .quality(days)
        .await
        .map_err(store_error("building the quality report"))?;
    Ok(Json(report))
}

/// The most outbox rows one request lists.
pub const MAX_OUTBOX_LIMIT: u32 = 1000;
const OUTBOX_STATES: &[&str] = &["pending", "delivered", "failed"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxQuery {
    state: Option<String>,
    destination: Option<String>,
    study: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/api/v1/emr/outbox",
    tag = "emr",
    params(
        ("state" = Option<String>, Query, description = "pending, delivered or failed"),
        ("destination" = Option<String>, Query, description = "fhir or hl7"),
        ("study" = Option<String>, Query, description = "Study Instance UID"),
        ("limit" = Option<u32>, Query, description = "At most this many rows (default 100, at most 1000)"),
        ("offset" = Option<u32>, Query, description = "Rows skipped"),
    ),
    responses(
        (status = 200, description = "Results sent or queued for the EMR, newest first: state, attempts, last error, the destination's answer", content_type = "application/json"),
        (status = 400, description = "Unknown parameter or value", content_type = "application/json"),
    )
)]
pub async fn outbox(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<OutboxQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    one_of("state", query.state.as_deref(), OUTBOX_STATES)?;
    one_of(
        "destination",
        query.destination.as_deref(),
        &[crate::emr::deliver::FHIR, crate::emr::deliver::HL7],
    )?;
    let limit = bounded_limit(query.limit, 100, MAX_OUTBOX_LIMIT)?;
    let entries = state
        .archive
        .outbox()
        .list(&crate::store::outbox::OutboxFilter {
            state: query.state,
            destination: query.destination,
            study_instance_uid: query.study,
            limit,
            offset: query.offset.unwrap_or(0),
        })
        .await
        .map_err(store_error("reading the EMR outbox"))?;
    Ok(Json(json!({ "entries": entries })))
}

#[utoipa::path(
    post,
    path = "/api/v1/emr/outbox/{id}/retry",
    tag = "emr",
    params(("id" = i64, Path, description = "Outbox row id")),
    responses(
        (status = 200, description = "The row, queued again with its attempts reset", content_type = "application/json"),
        (status = 404, description = "No such row", content_type = "application/json"),
    )
)]
pub async fn retry_delivery(
    State(state): State<AppState>,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let outbox = state.archive.outbox();
    if !outbox
        .requeue(id)
        .await
        .map_err(store_error("queueing the result again"))?
    {
        return Err(ApiError::not_found(format!("no outbox row {id}")));
    }
    let entry = outbox
        .entry(id)
        .await
        .map_err(store_error("reading the outbox row"))?;
    Ok(Json(json!(entry)))
}

#[utoipa::path(
    get,
    path = "/api/v1/studies/{study}",
    tag = "emr",
    params(("study" = String, Path, description = "StudyInstanceUID")),
    responses(
        (status = 200, description = "The study, its current findings, their deliveries to the EMR (FHIR push, HL7 ORU) and its EMR context (link, patient, order with reason for exam, encounter)", content_type = "application/json"),
        (status = 404, description = "No such study", content_type = "application/json"),
    )
)]
pub async fn study(
    State(state): State<AppState>,
    Path(study): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !crate::store::attributes::valid_uid(&study) {
        return Err(ApiError::bad_request(format!(
            "{study:?} is not a valid UID"
        )));
    }
    let emr = emr(&state)?;
    let store = emr.store();
    let Some(facts) = store
        .study_facts(Some(&study))
        .await
        .map_err(store_error("reading the study"))?
        .into_iter()
        .next()
    else {
        return Err(ApiError::not_found(format!("no study {study}")));
    };
    let link = store
        .link(&study)
        .await
        .map_err(store_error("reading the link"))?;
    let patient: Option<(EmrPatient, i64)> = match link.as_ref().and_then(|l| l.patient.clone()) {
        Some(id) => store
            .get(PATIENT, &id)
            .await
            .map_err(store_error("reading the patient"))?,
        None => None,
    };
    let order: Option<(EmrOrder, i64)> = match link.as_ref().and_then(|l| l.order.clone()) {
        Some(id) => store
            .get(ORDER, &id)
            .await
            .map_err(store_error("reading the order"))?,
        None => None,
    };
    let encounter: Option<(EmrEncounter, i64)> =
        match order.as_ref().and_then(|(o, _)| o.encounter.clone()) {
            Some(id) => store
                .get(ENCOUNTER, &id)
                .await
                .map_err(store_error("reading the encounter"))?,
            None => None,
        };
    let findings = state
        .archive
        .jobs()
        .findings(&study, false)
        .await
        .map_err(store_error("reading findings"))?;
    // Whether the results reached the EMR: one row per (destination, job).
    let deliveries = state
        .archive
        .outbox()
        .list(&crate::store::outbox::OutboxFilter {
            study_instance_uid: Some(study.clone()),
            limit: MAX_OUTBOX_LIMIT,
            ..Default::default()
        })
        .await
        .map_err(store_error("reading the EMR outbox"))?;
    Ok(Json(json!({
        "study": facts,
        "findings": findings,
        "deliveries": deliveries,
        "emr": {
            "link": link,
            "patient": patient.map(|(p, v)| json!({"record": p, "version": v})),
            "order": order.map(|(o, v)| json!({"record": o, "version": v, "reason_for_exam": o.reason})),
            "encounter": encounter.map(|(e, v)| json!({"record": e, "version": v})),
        },
    })))
}

#[utoipa::path(
    get,
    path = "/api/v1/patients/{patient}/studies",
    tag = "emr",
    params(("patient" = String, Path, description = "EMR Patient resource id")),
    responses(
        (status = 200, description = "The patient's linked studies, oldest first, with their findings", content_type = "application/json"),
        (status = 404, description = "No such patient", content_type = "application/json"),
    )
)]
pub async fn patient_studies(
    State(state): State<AppState>,
    Path(patient): Path<String>,
    Query(_params): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let emr = emr(&state)?;
    let store = emr.store();
    let record: Option<(EmrPatient, i64)> = store
        .get(PATIENT, &patient)
        .await
        .map_err(store_error("reading the patient"))?;
    let Some((record, _)) = record else {
        return Err(ApiError::not_found(format!("no EMR patient {patient}")));
    };
    let links = store
        .links(&["linked"], Some(&patient), 10_000)
        .await
        .map_err(store_error("reading links"))?;
    let mut timeline = Vec::with_capacity(links.len());
    for link in links {
        let facts = store
            .study_facts(Some(&link.study_instance_uid))
            .await
            .map_err(store_error("reading a study"))?;
        let findings = state
            .archive
            .jobs()
            .findings(&link.study_instance_uid, false)
            .await
            .map_err(store_error("reading findings"))?;
        timeline.push(json!({
            "study": facts.into_iter().next(),
            "link": link,
            "positive_findings": findings.iter().filter(|f| f.finding.positive).collect::<Vec<_>>(),
        }));
    }
    timeline.sort_by(|a, b| {
        a["study"]["study_date"]
            .as_str()
            .cmp(&b["study"]["study_date"].as_str())
    });
    Ok(Json(json!({ "patient": record, "studies": timeline })))
}
