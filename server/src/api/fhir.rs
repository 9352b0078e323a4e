//! Findings as FHIR R4 over HTTP (`application/fhir+json`), read-only:
//!
//! - `GET /fhir/DiagnosticReport?patient=|based-on=|identifier=` — a searchset Bundle;
//! - `GET /fhir/DiagnosticReport/{id}`;
//! - `GET /fhir/Observation?patient=|subject=|derived-from=` — a searchset Bundle;
//! - `GET /fhir/ImagingStudy/{id}`.
//!
//! The resources are built on each request from the findings rows, the jobs and the EMR
//! link ([`crate::emr::fhir_out`]); nothing FHIR-shaped is stored, so what is served is
//! always the current result. Errors are OperationOutcomes, as FHIR clients expect, not
//! our usual `{"error"}`. A search needs at least one parameter (else 400: an unbounded
//! dump of every patient's findings is not a search), unknown parameters are refused
//! rather than silently ignored (a typo would otherwise widen the result), and `_count`
//! (default 50) is capped at [`MAX_COUNT`]. Searches are by the EMR's ids: a study the
//! join has not linked is found by `identifier` (its Study Instance UID) only.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use dicom_dictionary_std::tags;
use serde_json::Value;

use super::AppState;
use crate::emr::fhir_out::{self, FhirOutError, FindingSites, JobResult, StudyContext};
use crate::emr::ingest::ORDER;
use crate::emr::{EmrOrder, report_source};
use crate::store::{Condition, Include, MatchKey, Query as DicomQuery, QueryLevel};

/// The most resources one search page returns (`_count` above it is lowered to it).
pub const MAX_COUNT: usize = 500;
/// `_count` when the client gives none.
pub const DEFAULT_COUNT: usize = 50;
/// The most studies one search looks at (a patient's whole history fits; a bound keeps a
/// wild search from reading the whole archive).
const MAX_STUDIES: u32 = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/DiagnosticReport", get(search_reports))
        .route("/fhir/DiagnosticReport/{id}", get(read_report))
        .route("/fhir/Observation", get(search_observations))
        .route("/fhir/ImagingStudy/{id}", get(read_imaging_study))
        .route("/fhir/{*rest}", any(unsupported))
}

/// Why a FHIR request failed; answered as an OperationOutcome.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    MissingParameter(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotSupported(String),
    #[error("{context}: internal error")]
    Store {
        context: &'static str,
        #[source]
        source: crate::store::StoreError,
    },
    #[error("building the FHIR resources: internal error")]
    Build(#[from] FhirOutError),
}

impl FhirError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            FhirError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            FhirError::MissingParameter(_) => (StatusCode::BAD_REQUEST, "required"),
            FhirError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            FhirError::NotSupported(_) => (StatusCode::NOT_FOUND, "not-supported"),
            FhirError::Store { .. } | FhirError::Build(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "exception")
            }
        }
    }
}

fn store(context: &'static str) -> impl Fn(crate::store::StoreError) -> FhirError {
    move |source| FhirError::Store { context, source }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            // The detail goes to the log, not to the client.
            match &self {
                FhirError::Store { source, .. } => tracing::error!(error = %source, "{self}"),
                other => tracing::error!(error = ?other, "{self}"),
            }
        }
        fhir_response(
            status,
            &fhir_out::operation_outcome(code, &self.to_string()),
        )
    }
}

fn fhir_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(fhir_out::CONTENT_TYPE),
    );
    response
}

/// Search parameters as given, repeated ones kept (each must match).
#[derive(Debug, Default)]
struct Params {
    values: BTreeMap<String, Vec<String>>,
    count: usize,
}

impl Params {
    fn parse(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        allowed: &[&str],
    ) -> Result<Params, FhirError> {
        let Query(pairs) = query.map_err(|e| FhirError::Invalid(e.body_text()))?;
        let mut params = Params {
            count: DEFAULT_COUNT,
            ..Params::default()
        };
        for (name, value) in pairs {
            match name.as_str() {
                "_count" => {
                    let n: usize = value.trim().parse().map_err(|_| {
                        FhirError::Invalid(format!("_count {value:?}: expected a whole number"))
                    })?;
                    params.count = n.min(MAX_COUNT);
                }
                // Only JSON is served; asking for it is harmless.
                "_format" if value.contains("json") => {}
                name if allowed.contains(&name) => {
                    let value = value.trim();
                    if value.is_empty() {
                        return Err(FhirError::Invalid(format!("{name}: empty value")));
                    }
                    params
                        .values
                        .entry(name.to_owned())
                        .or_default()
                        .push(value.to_owned());
                }
                other => {
                    return Err(FhirError::Invalid(format!(
                        "unsupported search parameter {other:?}; supported: {}, _count",
                        allowed.join(", ")
                    )));
                }
            }
        }
        if params.values.is_empty() {
            return Err(FhirError::MissingParameter(format!(
                "at least one search parameter is required: {}",
                allowed.join(", ")
            )));
        }
        Ok(params)
    }

    fn all(&self, names: &[&str]) -> Vec<&str> {
        names
            .iter()
            .filter_map(|n| self.values.get(*n))
            .flatten()
            .map(String::as_str)
            .collect()
    }
}

/// `Type/id` or `id` → `id` (a reference to another type is refused).
fn reference_id<'a>(value: &'a str, resource_type: &str) -> Result<&'a str, FhirError> {
    match value.rsplit_once('/') {
        None => Ok(value),
        Some((prefix, id))
            if prefix == resource_type || prefix.ends_with(&format!("/{resource_type}")) =>
        {
            Ok(id)
        }
        Some(_) => Err(FhirError::Invalid(format!(
            "{value:?}: expected a {resource_type} reference"
        ))),
    }
}

fn finding_sites(state: &AppState) -> FindingSites {
    report_source::finding_sites(&state.models)
}

async fn study_context(state: &AppState, study: &str) -> Result<Option<StudyContext>, FhirError> {
    report_source::study_context(&state.archive, study)
        .await
        .map_err(store("reading the study and its EMR link"))
}

async fn job_results(state: &AppState, study: &str) -> Result<Vec<JobResult>, FhirError> {
    report_source::job_results(&state.archive, study)
        .await
        .map_err(store("reading the study's results"))
}

/// The study holding the instance `sop` (an SR or SEG of ours, typically).
async fn study_of_instance(state: &AppState, sop: &str) -> Result<Option<String>, FhirError> {
    if !crate::store::attributes::valid_uid(sop) {
        return Ok(None);
    }
    let query = DicomQuery {
        level: QueryLevel::Instance,
        keys: vec![MatchKey {
            tag: tags::SOP_INSTANCE_UID,
            condition: Condition::Exact(sop.to_owned()),
        }],
        include: Include::Default,
        fuzzy_matching: false,
        combined_datetime: false,
        limit: Some(1),
        offset: 0,
    };
    let found = state
        .archive
        .query(&query)
        .await
        .map_err(store("looking the instance up"))?;
    Ok(found
        .first()
        .and_then(|a| a.get(&tags::STUDY_INSTANCE_UID))
        .and_then(|a| a.values.first().cloned()))
}

/// Studies linked to the EMR patient `patient`.
async fn studies_of_patient(state: &AppState, patient: &str) -> Result<Vec<String>, FhirError> {
    Ok(state
        .archive
        .emr()
        .links(&["linked"], Some(patient), MAX_STUDIES)
        .await
        .map_err(store("reading the patient's studies"))?
        .into_iter()
        .map(|l| l.study_instance_uid)
        .collect())
}

/// Studies linked to the order `order` (through its patient when the order names one).
async fn studies_of_order(state: &AppState, order: &str) -> Result<Vec<String>, FhirError> {
    let emr = state.archive.emr();
    let found: Option<(EmrOrder, i64)> = emr
        .get(ORDER, order)
        .await
        .map_err(store("reading the order"))?;
    let Some((order_record, _)) = found else {
        return Ok(Vec::new());
    };
    Ok(emr
        .links(&["linked"], order_record.patient.as_deref(), MAX_STUDIES)
        .await
        .map_err(store("reading the order's studies"))?
        .into_iter()
        .filter(|l| l.order.as_deref() == Some(order))
        .map(|l| l.study_instance_uid)
        .collect())
}

/// The candidate studies of a search: from its most selective parameter.
async fn candidate_studies(
    state: &AppState,
    patients: &[&str],
    orders: &[&str],
    studies: &[&str],
    instances: &[&str],
) -> Result<Vec<String>, FhirError> {
    let mut out = Vec::new();
    if let Some(uid) = studies.first() {
        out.push((*uid).to_owned());
    } else if let Some(uid) = instances.first() {
        if state
            .archive
            .emr()
            .study_facts(Some(uid))
            .await
            .map_err(store("reading the study"))?
            .is_empty()
        {
            out.extend(study_of_instance(state, uid).await?);
        } else {
            out.push((*uid).to_owned());
        }
    } else if let Some(order) = orders.first() {
        out = studies_of_order(state, order).await?;
    } else if let Some(patient) = patients.first() {
        out = studies_of_patient(state, patient).await?;
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn link_matches(study: &StudyContext, patients: &[&str], orders: &[&str]) -> bool {
    let link = study.link.as_ref();
    patients
        .iter()
        .all(|p| link.is_some_and(|l| l.patient == *p))
        && orders
            .iter()
            .all(|o| link.is_some_and(|l| l.order.as_deref() == Some(*o)))
}

fn self_url(path: &str, query: Option<String>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    }
}

/// Resources found, all of them: the page is cut here so `total` stays true.
fn page(path: &str, query: Option<String>, found: Vec<Value>, count: usize) -> Response {
    let total = found.len();
    let resources = found.into_iter().take(count).collect();
    fhir_response(
        StatusCode::OK,
        &fhir_out::searchset(&self_url(path, query), resources, total),
    )
}

#[utoipa::path(
    get,
    path = "/fhir/DiagnosticReport",
    tag = "fhir",
    params(
        ("patient" = Option<String>, Query, description = "EMR Patient id (or Patient/<id>)"),
        ("based-on" = Option<String>, Query, description = "EMR ServiceRequest id (or ServiceRequest/<id>)"),
        ("identifier" = Option<String>, Query, description = "Study Instance UID, or SOP Instance UID of the SR or SEG (plain, urn:oid:, or urn:dicom:uid|urn:oid:)"),
        ("_count" = Option<usize>, Query, description = "Page size, default 50, at most 500"),
    ),
    responses(
        (status = 200, description = "FHIR R4 searchset Bundle of DiagnosticReports (status preliminary: AI results not verified by a radiologist)", content_type = "application/fhir+json"),
        (status = 400, description = "No or unsupported search parameter (OperationOutcome)", content_type = "application/fhir+json"),
    )
)]
pub async fn search_reports(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, FhirError> {
    let params = Params::parse(query, &["patient", "subject", "based-on", "identifier"])?;
    let patients = params
        .all(&["patient", "subject"])
        .into_iter()
        .map(|p| reference_id(p, "Patient"))
        .collect::<Result<Vec<_>, _>>()?;
    let orders = params
        .all(&["based-on"])
        .into_iter()
        .map(|o| reference_id(o, "ServiceRequest"))
        .collect::<Result<Vec<_>, _>>()?;
    let identifiers: Vec<&str> = params
        .all(&["identifier"])
        .into_iter()
        .map(fhir_out::uid_from_token)
        .collect();
    let sites = finding_sites(&state);
    let mut found = Vec::new();
    for uid in candidate_studies(&state, &patients, &orders, &[], &identifiers).await? {
        let Some(study) = study_context(&state, &uid).await? else {
            continue;
        };
        if !link_matches(&study, &patients, &orders) {
            continue;
        }
        for result in job_results(&state, &uid).await? {
            let ids = [
                Some(uid.clone()),
                result.job.sr_sop_instance_uid.clone(),
                result.job.seg_sop_instance_uid.clone(),
            ];
            if !identifiers
                .iter()
                .all(|wanted| ids.iter().flatten().any(|id| id == wanted))
            {
                continue;
            }
            let (report, _) = fhir_out::diagnostic_report(&study, &result, &sites)?;
            found.push(report);
        }
    }
    Ok(page("/fhir/DiagnosticReport", raw, found, params.count))
}

#[utoipa::path(
    get,
    path = "/fhir/DiagnosticReport/{id}",
    tag = "fhir",
    params(("id" = String, Path, description = "DiagnosticReport id (job-<n>)")),
    responses(
        (status = 200, description = "FHIR R4 DiagnosticReport", content_type = "application/fhir+json"),
        (status = 404, description = "No such current report (OperationOutcome)", content_type = "application/fhir+json"),
    )
)]
pub async fn read_report(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    let not_found = || FhirError::NotFound(format!("no DiagnosticReport {id}"));
    let job_id = fhir_out::job_of_report_id(&id).ok_or_else(not_found)?;
    let job = state
        .archive
        .jobs()
        .job(job_id)
        .await
        .map_err(store("reading the job"))?
        .ok_or_else(not_found)?;
    let study = study_context(&state, &job.study_instance_uid)
        .await?
        .ok_or_else(not_found)?;
    // Only a current result has a report: a superseded one is gone, as is an unfinished one.
    let result = job_results(&state, &job.study_instance_uid)
        .await?
        .into_iter()
        .find(|r| r.job.id == job_id)
        .ok_or_else(|| {
            FhirError::NotFound(format!(
                "no current DiagnosticReport {id} (job {} is {}, or a newer result replaced it)",
                job.id, job.state
            ))
        })?;
    let (report, _) = fhir_out::diagnostic_report(&study, &result, &finding_sites(&state))?;
    Ok(fhir_response(StatusCode::OK, &report))
}

#[utoipa::path(
    get,
    path = "/fhir/Observation",
    tag = "fhir",
    params(
        ("patient" = Option<String>, Query, description = "EMR Patient id (or Patient/<id>)"),
        ("subject" = Option<String>, Query, description = "Same as patient"),
        ("derived-from" = Option<String>, Query, description = "ImagingStudy id (its Study Instance UID), or ImagingStudy/<id>"),
        ("_count" = Option<usize>, Query, description = "Page size, default 50, at most 500"),
    ),
    responses(
        (status = 200, description = "FHIR R4 searchset Bundle of Observations, one per current finding (status preliminary)", content_type = "application/fhir+json"),
        (status = 400, description = "No or unsupported search parameter (OperationOutcome)", content_type = "application/fhir+json"),
    )
)]
pub async fn search_observations(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, FhirError> {
    let params = Params::parse(query, &["patient", "subject", "derived-from"])?;
    let patients = params
        .all(&["patient", "subject"])
        .into_iter()
        .map(|p| reference_id(p, "Patient"))
        .collect::<Result<Vec<_>, _>>()?;
    let studies = params
        .all(&["derived-from"])
        .into_iter()
        .map(|s| reference_id(s, "ImagingStudy"))
        .collect::<Result<Vec<_>, _>>()?;
    let sites = finding_sites(&state);
    let mut found = Vec::new();
    for uid in candidate_studies(&state, &patients, &[], &studies, &[]).await? {
        if !studies
            .iter()
            .all(|s| *s == fhir_out::imaging_study_id(&uid))
        {
            continue;
        }
        let Some(study) = study_context(&state, &uid).await? else {
            continue;
        };
        if !link_matches(&study, &patients, &[]) {
            continue;
        }
        for result in job_results(&state, &uid).await? {
            let (_, observations) = fhir_out::diagnostic_report(&study, &result, &sites)?;
            found.extend(observations);
        }
    }
    Ok(page("/fhir/Observation", raw, found, params.count))
}

#[utoipa::path(
    get,
    path = "/fhir/ImagingStudy/{id}",
    tag = "fhir",
    params(("id" = String, Path, description = "ImagingStudy id: the Study Instance UID")),
    responses(
        (status = 200, description = "FHIR R4 ImagingStudy", content_type = "application/fhir+json"),
        (status = 404, description = "No such study (OperationOutcome)", content_type = "application/fhir+json"),
    )
)]
pub async fn read_imaging_study(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    let study = study_context(&state, &id)
        .await?
        .ok_or_else(|| FhirError::NotFound(format!("no ImagingStudy {id}")))?;
    Ok(fhir_response(
        StatusCode::OK,
        &fhir_out::imaging_study(&study),
    ))
}

/// Any other resource type or interaction under `/fhir`.
async fn unsupported(uri: axum::http::Uri) -> FhirError {
    FhirError::NotSupported(format!("{} is not served", uri.path()))
}
