//! `emr`: orders and patients from the EMR, and the join that ties each study to the order
//! it answers and the patient record it belongs to.
//!
//! - [`fhir`]: FHIR R4 Bundles in (Patient, ServiceRequest, Encounter), checked entry by
//!   entry;
//! - [`fhir_out`]: findings out as FHIR R4 (ImagingStudy, Observation, DiagnosticReport);
//! - [`join`]: the matching — accession number, then normalised patient identifier, then
//!   demographics with study date and modality — with a method and a confidence per link,
//!   and ambiguous cases left for review, never guessed;
//! - [`ingest`]: records stored with versions, the join run again when either side arrives,
//!   and the data-quality report;
//! - [`csv_import`]: `radserve emr import`, CSV (with a mapping), HL7 v2 and FHIR files;
//! - [`hl7`]: HL7 v2 ADT and orders (ORM^O01, OMI^O23) parsed and mapped to the same
//!   records, and [`mllp`]: the MLLP listener that takes them in;
//! - [`report_source`]: a study's current results and EMR link, as reports read them;
//! - [`oru`]: findings out as HL7 v2 ORU^R01, and [`deliver`]: the senders that push each
//!   result to a FHIR server and/or an HL7 v2 receiver, retried, their outcome recorded.

pub mod csv_import;
pub mod deliver;
pub mod fhir;
pub mod fhir_out;
pub mod hl7;
pub mod ingest;
pub mod join;
pub mod mllp;
pub mod oru;
pub mod report_source;

pub use ingest::Emr;

use serde::{Deserialize, Serialize};

/// The `[emr]` table: the join's settings ([`join::JoinConfig`], at the same place:
/// `patient_id_prefixes`, `date_window_days`), the HL7 v2 listener's, and the senders of
/// results (`[emr.fhir_push]`, `[emr.hl7_out]`, [`deliver::DeliveryConfig`]).
#[derive(Debug, Clone, PartialEq)]
pub struct EmrConfig {
    pub join: join::JoinConfig,
    /// `mllp_port`: the HL7 v2 MLLP listener's port; absent, no listener; 0, a free port.
    pub mllp_port: Option<u16>,
    /// `max_message_bytes`: the largest HL7 v2 message accepted (default 1 MiB).
    pub max_message_bytes: usize,
    /// Where results go (none by default).
    pub delivery: deliver::DeliveryConfig,
}

impl Default for EmrConfig {
    fn default() -> Self {
        EmrConfig {
            join: join::JoinConfig::default(),
            mllp_port: None,
            max_message_bytes: hl7::DEFAULT_MAX_MESSAGE_BYTES,
            delivery: deliver::DeliveryConfig::default(),
        }
    }
}

/// Why the `[emr]` table was refused.
#[derive(Debug, thiserror::Error)]
pub enum EmrConfigError {
    #[error("{}", .0.message())]
    Toml(#[from] toml::de::Error),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerKeys {
    mllp_port: Option<u16>,
    max_message_bytes: Option<usize>,
}

impl EmrConfig {
    /// Reads the `[emr]` table; unknown keys are refused.
    pub fn from_table(table: &toml::Table) -> Result<EmrConfig, EmrConfigError> {
        let mut join_keys = table.clone();
        let fhir_push = join_keys.remove("fhir_push");
        let hl7_out = join_keys.remove("hl7_out");
        let delivery = deliver::DeliveryConfig::from_tables(fhir_push.as_ref(), hl7_out.as_ref())
            .map_err(EmrConfigError::Invalid)?;
        let mut listener = toml::Table::new();
        for key in ["mllp_port", "max_message_bytes"] {
            if let Some(value) = join_keys.remove(key) {
                listener.insert(key.to_string(), value);
            }
        }
        let listener: ListenerKeys = listener.try_into()?;
        let join: join::JoinConfig = join_keys.try_into()?;
        Ok(EmrConfig {
            join,
            mllp_port: listener.mllp_port,
            max_message_bytes: listener
                .max_message_bytes
                .unwrap_or(hl7::DEFAULT_MAX_MESSAGE_BYTES)
                .max(64),
            delivery,
        })
    }
}

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

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn emr_table_holds_join_and_listener_keys() {
        let table: toml::Table = toml::from_str(
            "patient_id_prefixes = [\"MRN\"]\ndate_window_days = 2\nmllp_port = 0\nmax_message_bytes = 4096\n",
        )
        .unwrap();
        let config = EmrConfig::from_table(&table).unwrap();
        assert_eq!(config.join.patient_id_prefixes, vec!["MRN".to_string()]);
        assert_eq!(config.join.date_window_days, 2);
        assert_eq!(config.mllp_port, Some(0));
        assert_eq!(config.max_message_bytes, 4096);
        let empty = EmrConfig::from_table(&toml::Table::new()).unwrap();
        assert_eq!(empty, EmrConfig::default());
        let typo: toml::Table = toml::from_str("mllp_prot = 1\n").unwrap();
        assert!(EmrConfig::from_table(&typo).is_err());
        let bad: toml::Table = toml::from_str("mllp_port = 70000\n").unwrap();
        assert!(EmrConfig::from_table(&bad).is_err());
    }
}
