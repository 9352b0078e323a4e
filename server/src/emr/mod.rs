//! `emr`: orders and patients from the EMR, and the join that ties each study to the order
//! it answers and the patient record it belongs to.
//!
//! - [`fhir`]: FHIR R4 Bundles in (Patient, ServiceRequest, Encounter), checked entry by
//!   entry;
//! - [`join`]: the matching — accession number, then normalised patient identifier, then
//!   demographics with study date and modality — with a method and a confidence per link,
//!   and ambiguous cases left for review, never guessed;
//! - [`ingest`]: records stored with versions, the join run again when either side arrives,
//!   and the data-quality report.

pub mod fhir;
pub mod ingest;
pub mod join;

pub use ingest::Emr;

use serde::{Deserialize, Serialize};

/// A FHIR Identifier, reduced to what matching reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identifier {
    /// `Identifier.system` (a URI; `urn:oid:...` for issuers).
    pub system: Option<String>,
    pub value: String,
    /// `Identifier.type.coding[0].code` (v2-0203: `MR`, `ACSN`, `PLAC`, ...).
    pub type_code: Option<String>,
}

/// A FHIR HumanName.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HumanName {
    pub family: Option<String>,
    pub given: Vec<String>,
    pub text: Option<String>,
}

/// A Patient as the EMR sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmrPatient {
    /// The resource id.
    pub id: String,
    pub identifiers: Vec<Identifier>,
    pub names: Vec<HumanName>,
    /// `YYYY-MM-DD` (or `YYYY` / `YYYY-MM` as FHIR allows).
    pub birth_date: Option<String>,
    /// `male`, `female`, `other`, `unknown`.
    pub gender: Option<String>,
}

/// A ServiceRequest (an imaging order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmrOrder {
    pub id: String,
    pub identifiers: Vec<Identifier>,
    /// Resource id of the Patient (`subject`), when it is a Patient reference.
    pub patient: Option<String>,
    /// Resource id of the Encounter.
    pub encounter: Option<String>,
    pub status: String,
    /// The procedure: first coding (system, code, display) and the text.
    pub code_system: Option<String>,
    pub code: Option<String>,
    pub code_display: Option<String>,
    /// `occurrenceDateTime` (FHIR dateTime, with offset).
    pub occurrence: Option<String>,
    pub authored_on: Option<String>,
    pub requester: Option<String>,
    /// `reasonCode[].text` / `reasonCode[].coding[].display`, joined.
    pub reason: Option<String>,
}

/// An Encounter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmrEncounter {
    pub id: String,
    pub patient: Option<String>,
    pub status: String,
    pub class_code: Option<String>,
    pub period_start: Option<String>,
}

/// What matching reads of a stored study (from the archive's index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyFacts {
    pub study_instance_uid: String,
    pub accession_number: String,
    pub patient_id: String,
    pub issuer_of_patient_id: String,
    /// DICOM PN as stored, UTF-8, with its `=` component groups (alphabetic, ideographic,
    /// phonetic) and `^` components.
    pub patient_name: String,
    /// `YYYYMMDD` or empty.
    pub patient_birth_date: String,
    /// `M`, `F`, `O` or empty.
    pub patient_sex: String,
    /// `YYYYMMDD` or empty.
    pub study_date: String,
    /// Modalities of the study's series (`CT`, `DX`, `CR`, ...).
    pub modalities: Vec<String>,
}

/// How a study was tied to its order and patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchMethod {
    Accession,
    PatientId,
    Demographics,
    Manual,
}

impl MatchMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchMethod::Accession => "accession",
            MatchMethod::PatientId => "patient_id",
            MatchMethod::Demographics => "demographics",
            MatchMethod::Manual => "manual",
        }
    }
}

/// A study tied to an EMR patient and (when one answers it) an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyLink {
    pub study_instance_uid: String,
    /// EMR Patient resource id.
    pub patient: String,
    /// EMR ServiceRequest resource id, when an order was found.
    pub order: Option<String>,
    pub method: MatchMethod,
    /// 0..=1.
    pub confidence: f64,
}

#[cfg(test)]
mod join_tests;
