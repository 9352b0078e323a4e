//! Findings out as FHIR R4: ImagingStudy, Observation and DiagnosticReport resources built
//! from the stored findings rows, the jobs that wrote them and the study's EMR link.
//!
//! Pure functions from plain inputs to `serde_json::Value`, so the HTTP layer
//! ([`crate::api::fhir`]) only gathers rows and the tests can build resources from
//! hand-made findings and check them against HL7's R4 JSON Schema
//! (`scripts/fhir/fhir-r4-subset.schema.json`, validated by `scripts/fhir/validate.py`).
//!
//! Choices, and why:
//! - **Status `preliminary`** on every Observation and DiagnosticReport: the findings come
//!   from a model no radiologist has verified yet; `final` would tell the EMR a clinician
//!   stands behind them. A later sign-off workflow would amend them to `final`.
//! - **Subject**: a study the EMR join linked points at `Patient/<EMR id>` and its order at
//!   `ServiceRequest/<EMR id>`. An unlinked study still has a subject (R4 requires one on
//!   ImagingStudy, Observation and DiagnosticReport can carry one): a *logical* reference,
//!   `{"identifier": {system, value}}`, made of the DICOM Patient ID and its issuer. It
//!   points at no resource we invent and it is what a receiving system can match on. The
//!   search API answers `patient=` only for linked studies (the id is the EMR's).
//! - **One DiagnosticReport per job**, i.e. per (study, series, model, result version): the
//!   unit a DICOM SR (and SEG) is written for, so the report's identifiers and
//!   `presentedForm` name exactly one SR; a study with two series read by one model gets
//!   two reports. Only each (series, model)'s newest finished result is reported.
//! - **Stable ids**: ImagingStudy = the Study Instance UID, Observation = the finding's
//!   Tracking UID (both DICOM UIDs, always valid FHIR ids; anything else is hashed),
//!   DiagnosticReport = `job-<job id>`. A new result version keeps the Observation ids of
//!   findings it tracks again, as a FHIR update would.
//! - **Codes**: DICOM coding scheme designators map to FHIR system URIs (`SCT` →
//!   `http://snomed.info/sct`, `DCM` → DICOM's ontology, `UCUM`, `LN`, `RADLEX`); an
//!   unknown designator keeps the code and meaning without a system rather than guessing.
//! - **The model** is named in `method` (name, version, weights SHA-256) and in `device`, a
//!   logical reference whose identifier is the weights hash, so an Observation says which
//!   exact weights produced it without a Device resource to maintain.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::emr::StudyFacts;
use crate::results::CodedConcept;
use crate::store::jobs::{JobRecord, StoredFinding};

/// The media type of every FHIR answer.
pub const CONTENT_TYPE: &str = "application/fhir+json";
/// `Identifier.system` for DICOM UIDs (values are `urn:oid:<uid>`), as FHIR's ImagingStudy
/// examples use it.
pub const DICOM_UID_SYSTEM: &str = "urn:dicom:uid";
pub const SNOMED: &str = "http://snomed.info/sct";
pub const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
pub const UCUM: &str = "http://unitsofmeasure.org";
pub const LOINC: &str = "http://loinc.org";
const RADLEX: &str = "http://radlex.org";
const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const V2_0074: &str = "http://terminology.hl7.org/CodeSystem/v2-0074";
const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
/// Identifier system of a model's weights (value: hex SHA-256 of the weights file).
const WEIGHTS_SYSTEM: &str = "urn:radserve:model-weights-sha256";

/// Why a resource could not be built from stored rows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FhirOutError {
    /// A finding or job of another study was passed in: a caller bug, refused rather than
    /// written into the wrong patient's record.
    #[error("{what} belongs to study {found}, not {expected}")]
    WrongStudy {
        what: String,
        found: String,
        expected: String,
    },
}

/// The study's tie to the EMR, when the join linked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmrLink {
    /// EMR Patient resource id.
    pub patient: String,
    /// EMR ServiceRequest resource id.
    pub order: Option<String>,
}

/// One study, as the resources about it need it.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyContext {
    pub facts: StudyFacts,
    /// `None`: not linked (ambiguous, unmatched, or no EMR data yet).
    pub link: Option<EmrLink>,
}

/// A stored DICOM object the report points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRef {
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
}

/// One finished job and what it wrote: the input of one DiagnosticReport.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    pub job: JobRecord,
    /// The job's current findings (as [`crate::store::jobs::JobStore::findings`] returns
    /// them; superseded ones are skipped here anyway).
    pub findings: Vec<StoredFinding>,
    /// The SR and SEG with their series, when stored (`None` when the job wrote none or
    /// the instance is not in the archive).
    pub sr: Option<InstanceRef>,
    pub seg: Option<InstanceRef>,
}

/// Finding sites by (model, label), from the model packages' labels.
pub type FindingSites = BTreeMap<(String, String), CodedConcept>;

/// FHIR system URI of a DICOM coding scheme designator; `None` when we know no URI.
pub fn system_uri(scheme: &str) -> Option<&'static str> {
    match scheme.trim().to_ascii_uppercase().as_str() {
        "SCT" | "SNM3" | "SRT" => Some(SNOMED),
        "DCM" => Some(DCM),
        "UCUM" => Some(UCUM),
        "LN" => Some(LOINC),
        "RADLEX" | "RADLEX_" => Some(RADLEX),
        _ => None,
    }
}

/// A Coding from DICOM's (scheme, value, meaning).
fn coding(scheme: &str, value: &str, meaning: &str) -> Value {
    let mut c = Map::new();
    if let Some(system) = system_uri(scheme) {
        c.insert("system".into(), json!(system));
    }
    c.insert("code".into(), json!(value));
    if !meaning.is_empty() {
        c.insert("display".into(), json!(meaning));
    }
    Value::Object(c)
}

fn concept(scheme: &str, value: &str, meaning: &str) -> Value {
    let mut c = json!({ "coding": [coding(scheme, value, meaning)] });
    if !meaning.is_empty() {
        c["text"] = json!(meaning);
    }
    c
}

/// Whether `text` is a valid FHIR `id` (`[A-Za-z0-9\-\.]{1,64}`).
pub fn is_fhir_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `text` itself when it is a valid id, else `<prefix>-<first 40 hex of its SHA-256>`.
fn stable_id(prefix: &str, text: &str) -> String {
    if is_fhir_id(text) {
        return text.to_owned();
    }
    let digest = format!("{:x}", Sha256::digest(text.as_bytes()));
    format!("{prefix}-{}", &digest[..40])
}

/// The id of the ImagingStudy of a study.
pub fn imaging_study_id(study_instance_uid: &str) -> String {
    stable_id("study", study_instance_uid)
}

/// The id of the Observation of a finding.
pub fn observation_id(tracking_uid: &str) -> String {
    stable_id("obs", tracking_uid)
}

/// The id of the DiagnosticReport of a job.
pub fn report_id(job_id: i64) -> String {
    format!("job-{job_id}")
}

/// The job id in a DiagnosticReport id, when it is one of ours.
pub fn job_of_report_id(id: &str) -> Option<i64> {
    id.strip_prefix("job-")?
        .parse()
        .ok()
        .filter(|n: &i64| *n > 0)
}

/// A DICOM UID as an Identifier.
pub fn uid_identifier(uid: &str) -> Value {
    json!({ "system": DICOM_UID_SYSTEM, "value": format!("urn:oid:{uid}") })
}

/// The UID in a search token: `urn:dicom:uid|urn:oid:1.2.3`, `urn:oid:1.2.3` or `1.2.3`.
pub fn uid_from_token(token: &str) -> &str {
    let value = token.rsplit_once('|').map_or(token, |(_, v)| v);
    value.strip_prefix("urn:oid:").unwrap_or(value).trim()
}

/// DICOM `YYYYMMDD` as a FHIR date; `None` when it is not one.
pub fn fhir_date(da: &str) -> Option<String> {
    let da = da.trim();
    let ok = da.len() == 8 && da.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return None;
    }
    let (y, m, d) = (&da[..4], &da[4..6], &da[6..]);
    chrono::NaiveDate::parse_from_str(&format!("{y}-{m}-{d}"), "%Y-%m-%d")
        .ok()
        .map(|_| format!("{y}-{m}-{d}"))
}

/// A stored timestamp (RFC 3339) as a FHIR `instant`; `None` when it does not parse.
fn fhir_instant(text: &str) -> Option<String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

impl StudyContext {
    /// The Reference to the patient: the EMR Patient when linked, else a logical reference
    /// by the DICOM Patient ID (see the module doc).
    pub fn subject(&self) -> Value {
        if let Some(link) = &self.link {
            return json!({ "reference": format!("Patient/{}", link.patient) });
        }
        let id = self.facts.patient_id.trim();
        if id.is_empty() {
            return json!({ "display": "patient not identified (no Patient ID, not linked to the EMR)" });
        }
        let mut identifier = json!({ "value": id });
        let issuer = self.facts.issuer_of_patient_id.trim();
        if !issuer.is_empty() {
            // A DICOM issuer is a local namespace name, not a URI: carried as the assigner.
            identifier["assigner"] = json!({ "display": issuer });
        }
        identifier["type"] = json!({ "coding": [{ "system": V2_0203, "code": "MR" }] });
        json!({ "identifier": identifier })
    }

    /// `basedOn`: the order, when the link has one.
    fn based_on(&self) -> Option<Value> {
        let order = self.link.as_ref()?.order.as_ref()?;
        Some(json!([{ "reference": format!("ServiceRequest/{order}") }]))
    }

    fn study_reference(&self) -> Value {
        json!({
            "reference": format!("ImagingStudy/{}", imaging_study_id(&self.facts.study_instance_uid))
        })
    }
}

/// The ImagingStudy of a study.
pub fn imaging_study(study: &StudyContext) -> Value {
    let facts = &study.facts;
    let mut identifiers = vec![uid_identifier(&facts.study_instance_uid)];
    if !facts.accession_number.trim().is_empty() {
        identifiers.push(json!({
            "type": { "coding": [{ "system": V2_0203, "code": "ACSN" }] },
            "value": facts.accession_number.trim(),
        }));
    }
    let mut resource = json!({
        "resourceType": "ImagingStudy",
        "id": imaging_study_id(&facts.study_instance_uid),
        "identifier": identifiers,
        "status": "available",
        "subject": study.subject(),
    });
    let modalities: Vec<Value> = facts
        .modalities
        .iter()
        .filter(|m| !m.trim().is_empty())
        .map(|m| json!({ "system": DCM, "code": m.trim() }))
        .collect();
    if !modalities.is_empty() {
        resource["modality"] = json!(modalities);
    }
    if let Some(based_on) = study.based_on() {
        resource["basedOn"] = based_on;
    }
    if let Some(started) = fhir_date(&facts.study_date) {
        resource["started"] = json!(started);
    }
    resource
}

fn check_study(study: &StudyContext, what: String, found: &str) -> Result<(), FhirOutError> {
    if found == study.facts.study_instance_uid {
        Ok(())
    } else {
        Err(FhirOutError::WrongStudy {
            what,
            found: found.to_owned(),
            expected: study.facts.study_instance_uid.clone(),
        })
    }
}

/// A measurement of a findings row (`{concept, value, unit}`) as an Observation
/// component; `None` when the entry is malformed or its value is not a finite number.
fn component(measurement: &Value) -> Option<Value> {
    let code = measurement.get("concept")?;
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let (scheme, value, meaning) = (
        text(code, "scheme")?,
        text(code, "value")?,
        text(code, "meaning").unwrap_or_default(),
    );
    let number = measurement
        .get("value")?
        .as_f64()
        .filter(|v| v.is_finite())?;
    let mut quantity = json!({ "value": number });
    if let Some(unit) = measurement.get("unit") {
        let unit_code = text(unit, "value").unwrap_or_default();
        if !unit_code.is_empty() {
            quantity["unit"] = json!(unit_code);
            quantity["code"] = json!(unit_code);
            let scheme = text(unit, "scheme").unwrap_or_default();
            if let Some(system) = system_uri(&scheme) {
                quantity["system"] = json!(system);
            }
        }
    }
    Some(json!({
        "code": concept(&scheme, &value, &meaning),
        "valueQuantity": quantity,
    }))
}

/// The Observation of one finding (`None` for a superseded one: only current results go
/// out).
pub fn observation(
    study: &StudyContext,
    finding: &StoredFinding,
    sites: &FindingSites,
) -> Result<Option<Value>, FhirOutError> {
    check_study(
        study,
        format!("finding {}", finding.id),
        &finding.study_instance_uid,
    )?;
    if finding.superseded {
        return Ok(None);
    }
    let f = &finding.finding;
    let model = format!(
        "{} version {} (weights sha256 {})",
        finding.model, finding.model_version, finding.weights_sha256
    );
    let mut resource = json!({
        "resourceType": "Observation",
        "id": observation_id(&f.tracking_uid),
        "identifier": [uid_identifier(&f.tracking_uid)],
        "status": "preliminary",
        "category": [{
            "coding": [{ "system": OBSERVATION_CATEGORY, "code": "imaging", "display": "Imaging" }]
        }],
        "code": concept(&f.code_scheme, &f.code_value, &f.code_meaning),
        "subject": study.subject(),
        "derivedFrom": [study.study_reference()],
        "method": { "text": format!("AI model {model}; not verified by a radiologist") },
        "device": {
            "identifier": { "system": WEIGHTS_SYSTEM, "value": finding.weights_sha256 },
            "display": format!("radserve model {} {}", finding.model, finding.model_version),
        },
        "interpretation": [{
            "coding": [if f.positive {
                json!({ "system": INTERPRETATION, "code": "POS", "display": "Positive" })
            } else {
                json!({ "system": INTERPRETATION, "code": "NEG", "display": "Negative" })
            }]
        }],
    });
    if f.probability.is_finite() {
        resource["valueQuantity"] = json!({
            "value": f.probability,
            "unit": "probability",
            "system": UCUM,
            "code": "1",
        });
    }
    if let Some(based_on) = study.based_on() {
        resource["basedOn"] = based_on;
    }
    if let Some(date) = fhir_date(&study.facts.study_date) {
        resource["effectiveDateTime"] = json!(date);
    }
    if let Some(issued) = fhir_instant(&finding.created_at) {
        resource["issued"] = json!(issued);
    }
    if let Some(site) = sites.get(&(finding.model.clone(), f.label.clone())) {
        resource["bodySite"] = concept(&site.scheme, &site.value, &site.meaning);
    }
    let components: Vec<Value> = f
        .measurements
        .as_array()
        .map(|m| m.iter().filter_map(component).collect())
        .unwrap_or_default();
    if !components.is_empty() {
        resource["component"] = json!(components);
    }
    Ok(Some(resource))
}

/// A result's one-line conclusion (a report's `conclusion`, an ORU's TX observation): the
/// model and its positive findings, said to be preliminary.
pub fn conclusion(model: &str, positives: &[String]) -> String {
    if positives.is_empty() {
        format!(
            "AI model {model}: no positive findings. Preliminary, not verified by a radiologist."
        )
    } else {
        format!(
            "AI model {model}: {}. Preliminary, not verified by a radiologist.",
            positives.join("; ")
        )
    }
}

/// The WADO-RS path of a stored instance (relative to the server's base URL).
pub fn wado_path(study: &str, instance: &InstanceRef) -> String {
    format!(
        "/dicomweb/studies/{study}/series/{}/instances/{}",
        instance.series_instance_uid, instance.sop_instance_uid
    )
}

/// The DiagnosticReport of one job and the Observations it lists in `result` (returned
/// too, so a search can answer both from one pass).
pub fn diagnostic_report(
    study: &StudyContext,
    result: &JobResult,
    sites: &FindingSites,
) -> Result<(Value, Vec<Value>), FhirOutError> {
    let job = &result.job;
    check_study(study, format!("job {}", job.id), &job.study_instance_uid)?;
    let mut observations = Vec::new();
    let mut positives = Vec::new();
    let mut version = None;
    for finding in result.findings.iter().filter(|f| f.job_id == job.id) {
        if let Some(obs) = observation(study, finding, sites)? {
            if finding.finding.positive {
                positives.push(format!(
                    "{} (probability {:.2})",
                    finding.finding.code_meaning, finding.finding.probability
                ));
            }
            version.get_or_insert_with(|| finding.model_version.clone());
            observations.push(obs);
        }
    }
    let model = match &version {
        Some(v) => format!("{} {v}", job.model),
        None => job.model.clone(),
    };
    let conclusion = conclusion(&model, &positives);
    let mut identifiers = Vec::new();
    let mut forms = Vec::new();
    for (instance, title) in [
        (&result.sr, "DICOM SR (Comprehensive 3D, TID 1500)"),
        (&result.seg, "DICOM SEG"),
    ] {
        if let Some(instance) = instance {
            let mut identifier = uid_identifier(&instance.sop_instance_uid);
            identifier["type"] = json!({ "text": title });
            identifiers.push(identifier);
            forms.push(json!({
                "contentType": "application/dicom",
                "url": wado_path(&study.facts.study_instance_uid, instance),
                "title": title,
            }));
        }
    }
    let mut report = json!({
        "resourceType": "DiagnosticReport",
        "id": report_id(job.id),
        "status": "preliminary",
        "category": [{
            "coding": [{ "system": V2_0074, "code": "RAD", "display": "Radiology" }]
        }],
        "code": {
            "coding": [{ "system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study" }],
            "text": format!("AI analysis by {}", job.model),
        },
        "subject": study.subject(),
        "imagingStudy": [study.study_reference()],
        "conclusion": conclusion,
    });
    if !identifiers.is_empty() {
        report["identifier"] = json!(identifiers);
        report["presentedForm"] = json!(forms);
    }
    if let Some(based_on) = study.based_on() {
        report["basedOn"] = based_on;
    }
    if let Some(date) = fhir_date(&study.facts.study_date) {
        report["effectiveDateTime"] = json!(date);
    }
    if let Some(issued) = job.finished_at.as_deref().and_then(fhir_instant) {
        report["issued"] = json!(issued);
    }
    let references: Vec<Value> = observations
        .iter()
        .filter_map(|o| o["id"].as_str())
        .map(|id| json!({ "reference": format!("Observation/{id}") }))
        .collect();
    if !references.is_empty() {
        report["result"] = json!(references);
    }
    Ok((report, observations))
}

/// One result as a FHIR `transaction` Bundle for a FHIR server: its ImagingStudy,
/// Observations and DiagnosticReport, each a `PUT Type/id` so that sending it again (a
/// retry, or the study linked to its order later) updates rather than duplicates. `base` is
/// the server's base URL (the entries' `fullUrl`s are under it). The EMR's own Patient and
/// ServiceRequest are referenced, not sent.
pub fn transaction(
    base: &str,
    study: &StudyContext,
    result: &JobResult,
    sites: &FindingSites,
) -> Result<Value, FhirOutError> {
    let (report, observations) = diagnostic_report(study, result, sites)?;
    let base = base.trim_end_matches('/');
    let entries: Vec<Value> = std::iter::once(imaging_study(study))
        .chain(observations)
        .chain(std::iter::once(report))
        .map(|resource| {
            let path = format!(
                "{}/{}",
                resource["resourceType"].as_str().unwrap_or_default(),
                resource["id"].as_str().unwrap_or_default()
            );
            json!({
                "fullUrl": format!("{base}/{path}"),
                "resource": resource,
                "request": { "method": "PUT", "url": path },
            })
        })
        .collect();
    Ok(json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": entries,
    }))
}

/// The jobs whose results are current: finished (`done`), and for each (series, model)
/// only the newest result version.
pub fn current_jobs(jobs: &[JobRecord]) -> Vec<&JobRecord> {
    let mut newest: BTreeMap<(&str, &str), &JobRecord> = BTreeMap::new();
    for job in jobs.iter().filter(|j| j.state == "done") {
        let key = (job.series_instance_uid.as_str(), job.model.as_str());
        match newest.get(&key) {
            Some(seen) if seen.result_version >= job.result_version => {}
            _ => {
                newest.insert(key, job);
            }
        }
    }
    let mut out: Vec<&JobRecord> = newest.into_values().collect();
    out.sort_by_key(|j| j.id);
    out
}

/// A FHIR searchset Bundle of `resources` (all matches: `total` is their count).
pub fn searchset(self_url: &str, resources: Vec<Value>, total: usize) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|resource| json!({ "resource": resource, "search": { "mode": "match" } }))
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{ "relation": "self", "url": self_url }],
        "entry": entries,
    })
}

/// An OperationOutcome with one error issue. `code` is from FHIR's IssueType value set
/// (`invalid`, `required`, `not-found`, `not-supported`, `exception`, ...).
pub fn operation_outcome(code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "error", "code": code, "diagnostics": diagnostics }],
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::jobs::{FindingRow, Priority};
    use std::path::PathBuf;

    pub(crate) const STUDY: &str = "1.2.826.0.1.3680043.8.498.1";

    pub(crate) fn facts() -> StudyFacts {
        StudyFacts {
            study_instance_uid: STUDY.into(),
            accession_number: "ACC123".into(),
            patient_id: "MRN-77".into(),
            issuer_of_patient_id: "HOSP".into(),
            patient_name: "DOE^JANE".into(),
            patient_birth_date: "19700101".into(),
            patient_sex: "F".into(),
            study_date: "20260314".into(),
            modalities: vec!["CT".into()],
        }
    }

    pub(crate) fn linked() -> StudyContext {
        StudyContext {
            facts: facts(),
            link: Some(EmrLink {
                patient: "pat-1".into(),
                order: Some("sr-9".into()),
            }),
        }
    }

    pub(crate) fn unlinked() -> StudyContext {
        StudyContext {
            facts: facts(),
            link: None,
        }
    }

    pub(crate) fn job(id: i64, series: &str, model: &str, version: i64) -> JobRecord {
        JobRecord {
            id,
            study_instance_uid: STUDY.into(),
            series_instance_uid: series.into(),
            model: model.into(),
            priority: Priority::Routine,
            state: "done".into(),
            attempts: 1,
            max_attempts: 3,
            last_error: None,
            not_before: "2026-03-14T10:00:00.000Z".into(),
            created_at: "2026-03-14T10:00:00.000Z".into(),
            started_at: Some("2026-03-14T10:00:01.000Z".into()),
            finished_at: Some("2026-03-14T10:00:02.000Z".into()),
            result_version: version,
            timings: None,
            sr_sop_instance_uid: Some(format!("2.25.{id}1")),
            seg_sop_instance_uid: None,
        }
    }

    pub(crate) fn stored(job: &JobRecord, row: FindingRow) -> StoredFinding {
        StoredFinding {
            id: 1,
            job_id: job.id,
            study_instance_uid: STUDY.into(),
            series_instance_uid: job.series_instance_uid.clone(),
            model: job.model.clone(),
            model_version: "1.0.0".into(),
            weights_sha256: "ab".repeat(32),
            result_version: job.result_version,
            superseded: false,
            finding: row,
            created_at: "2026-03-14T10:00:02.000Z".into(),
        }
    }

    /// A segmentation finding with measurements (as ct-lung-nodule writes them).
    pub(crate) fn nodule(job: &JobRecord) -> StoredFinding {
        stored(
            job,
            FindingRow {
                label: "nodule".into(),
                code_scheme: "SCT".into(),
                code_value: "786838002".into(),
                code_meaning: "Pulmonary nodule".into(),
                probability: 0.93,
                positive: true,
                tracking_uid: "2.25.4242".into(),
                source_instances: vec!["1.2.3.4".into()],
                measurements: json!([
                    {"concept": {"scheme": "SCT", "value": "81827009", "meaning": "Diameter"},
                     "value": 7.5, "unit": {"scheme": "UCUM", "value": "mm", "meaning": "millimeter"}},
                    {"concept": {"scheme": "SCT", "value": "118565006", "meaning": "Volume"},
                     "value": 221.0, "unit": {"scheme": "UCUM", "value": "mm3", "meaning": "cubic millimeter"}},
                    {"concept": {"scheme": "DCM", "value": "112031", "meaning": "Attenuation Coefficient"},
                     "value": -20.5, "unit": {"scheme": "UCUM", "value": "[hnsf'U]", "meaning": "Hounsfield unit"}},
                    {"concept": {"scheme": "SCT"}, "value": "broken"}
                ]),
                location: json!({"patient_mm": [1.0, 2.0, 3.0]}),
            },
        )
    }

    /// Classification findings (as chest-xray-findings writes them): one positive, one not.
    pub(crate) fn classification(job: &JobRecord) -> Vec<StoredFinding> {
        let row = |label: &str, code: &str, meaning: &str, p: f64, uid: &str| FindingRow {
            label: label.into(),
            code_scheme: "SCT".into(),
            code_value: code.into(),
            code_meaning: meaning.into(),
            probability: p,
            positive: p >= 0.5,
            tracking_uid: uid.into(),
            source_instances: vec!["1.2.3.5".into()],
            measurements: json!([]),
            location: Value::Null,
        };
        vec![
            stored(
                job,
                row(
                    "consolidation",
                    "95436008",
                    "Lung consolidation",
                    0.81,
                    "2.25.51",
                ),
            ),
            stored(
                job,
                row(
                    "pleural_effusion",
                    "60046008",
                    "Pleural effusion",
                    0.12,
                    "2.25.52",
                ),
            ),
        ]
    }

    fn sites() -> FindingSites {
        let lung = CodedConcept {
            scheme: "SCT".into(),
            value: "39607008".into(),
            meaning: "Lung structure".into(),
        };
        [
            (("ct-lung-nodule".into(), "nodule".into()), lung.clone()),
            (("chest-xray-findings".into(), "consolidation".into()), lung),
        ]
        .into_iter()
        .collect()
    }

    fn workspace() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_owned()
    }

    /// Validates every resource with HL7's R4 schema (scripts/fhir/validate.py).
    fn validate(resources: &[Value]) {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (i, r) in resources.iter().enumerate() {
            let path = dir.path().join(format!("{i}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(r).unwrap()).unwrap();
            files.push(path);
        }
        let root = workspace();
        let output = std::process::Command::new("python3")
            .arg(root.join("scripts/fhir/validate.py"))
            .arg(root.join("scripts/fhir/fhir-r4-subset.schema.json"))
            .args(&files)
            .output()
            .expect("python3 runs (scripts/install-test-deps.sh installs jsonschema)");
        assert!(
            output.status.success(),
            "FHIR R4 schema validation failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            resources
                .iter()
                .map(|r| serde_json::to_string_pretty(r).unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    #[test]
    fn segmentation_findings_of_a_linked_study_are_valid_r4() {
        let study = linked();
        let j = job(7, "1.2.3", "ct-lung-nodule", 2);
        let result = JobResult {
            findings: vec![nodule(&j)],
            sr: Some(InstanceRef {
                series_instance_uid: "2.25.700".into(),
                sop_instance_uid: "2.25.71".into(),
            }),
            seg: Some(InstanceRef {
                series_instance_uid: "2.25.701".into(),
                sop_instance_uid: "2.25.72".into(),
            }),
            job: j,
        };
        let (report, observations) = diagnostic_report(&study, &result, &sites()).unwrap();
        let imaging = imaging_study(&study);
        assert_eq!(report["id"], "job-7");
        assert_eq!(report["status"], "preliminary");
        assert_eq!(report["subject"]["reference"], "Patient/pat-1");
        assert_eq!(report["basedOn"][0]["reference"], "ServiceRequest/sr-9");
        assert_eq!(
            report["imagingStudy"][0]["reference"],
            format!("ImagingStudy/{STUDY}")
        );
        assert_eq!(report["result"][0]["reference"], "Observation/2.25.4242");
        assert_eq!(
            report["presentedForm"][1]["url"],
            format!("/dicomweb/studies/{STUDY}/series/2.25.701/instances/2.25.72")
        );
        assert_eq!(report["identifier"][0]["value"], "urn:oid:2.25.71");
        assert!(
            report["conclusion"]
                .as_str()
                .unwrap()
                .contains("Pulmonary nodule")
        );

        let obs = &observations[0];
        assert_eq!(obs["code"]["coding"][0]["system"], SNOMED);
        assert_eq!(obs["interpretation"][0]["coding"][0]["code"], "POS");
        assert_eq!(obs["bodySite"]["coding"][0]["code"], "39607008");
        // Three well-formed measurements; the broken one is left out.
        let components = obs["component"].as_array().unwrap();
        assert_eq!(components.len(), 3);
        assert_eq!(components[0]["valueQuantity"]["system"], UCUM);
        assert_eq!(components[0]["valueQuantity"]["code"], "mm");
        assert_eq!(components[2]["code"]["coding"][0]["system"], DCM);
        assert!(obs["method"]["text"].as_str().unwrap().contains("1.0.0"));

        assert_eq!(imaging["identifier"][1]["value"], "ACC123");
        assert_eq!(imaging["started"], "2026-03-14");
        assert_eq!(imaging["modality"][0]["system"], DCM);

        let mut all = vec![report.clone(), imaging.clone()];
        all.extend(observations.iter().cloned());
        let mut entries = all.clone();
        entries.push(operation_outcome(
            "required",
            "a search parameter is needed",
        ));
        all.push(searchset(
            "/fhir/DiagnosticReport?based-on=sr-9",
            entries,
            4,
        ));
        validate(&all);
    }

    #[test]
    fn classification_findings_of_an_unlinked_study_are_valid_r4() {
        let study = unlinked();
        let j = job(3, "1.2.4", "chest-xray-findings", 1);
        let result = JobResult {
            findings: classification(&j),
            sr: None,
            seg: None,
            job: j,
        };
        let (report, observations) = diagnostic_report(&study, &result, &sites()).unwrap();
        // No link: a logical reference by the DICOM Patient ID, no order.
        assert_eq!(report["subject"]["identifier"]["value"], "MRN-77");
        assert!(report.get("basedOn").is_none());
        assert!(report.get("presentedForm").is_none());
        assert_eq!(observations.len(), 2);
        assert_eq!(
            observations[1]["interpretation"][0]["coding"][0]["code"],
            "NEG"
        );
        assert!(observations[1].get("bodySite").is_none());
        assert!(observations[0].get("component").is_none());
        let conclusion = report["conclusion"].as_str().unwrap();
        assert!(conclusion.contains("Lung consolidation"), "{conclusion}");
        assert!(!conclusion.contains("Pleural effusion"), "{conclusion}");

        let mut all = vec![report, imaging_study(&study)];
        all.extend(observations);
        validate(&all);
    }

    #[test]
    fn superseded_and_foreign_findings_do_not_go_out() {
        let study = linked();
        let j = job(4, "1.2.4", "chest-xray-findings", 1);
        let mut old = classification(&j);
        old[0].superseded = true;
        assert_eq!(observation(&study, &old[0], &sites()).unwrap(), None);
        old[1].study_instance_uid = "9.9.9".into();
        assert!(matches!(
            observation(&study, &old[1], &sites()),
            Err(FhirOutError::WrongStudy { .. })
        ));
    }

    #[test]
    fn ids_are_stable_and_valid() {
        assert_eq!(imaging_study_id(STUDY), STUDY);
        assert_eq!(observation_id("2.25.1"), "2.25.1");
        let long = "9".repeat(80);
        let id = observation_id(&long);
        assert!(is_fhir_id(&id) && id.starts_with("obs-"), "{id}");
        assert_eq!(id, observation_id(&long));
        assert_eq!(job_of_report_id(&report_id(12)), Some(12));
        assert_eq!(job_of_report_id("job-x"), None);
        assert_eq!(job_of_report_id("job--1"), None);
        assert_eq!(uid_from_token("urn:dicom:uid|urn:oid:1.2.3"), "1.2.3");
        assert_eq!(uid_from_token("1.2.3"), "1.2.3");
        assert_eq!(fhir_date("20260230"), None);
        assert_eq!(fhir_date("20260228").as_deref(), Some("2026-02-28"));
    }

    #[test]
    fn only_the_newest_finished_result_of_each_series_and_model_is_current() {
        let mut queued = job(5, "1.2.3", "m", 3);
        queued.state = "queued".into();
        let jobs = vec![
            job(1, "1.2.3", "m", 1),
            job(2, "1.2.3", "m", 2),
            job(3, "1.2.4", "m", 1),
            queued,
        ];
        let ids: Vec<i64> = current_jobs(&jobs).iter().map(|j| j.id).collect();
        assert_eq!(ids, [2, 3]);
    }
}
