//! `results`: what a model's output becomes — findings rows, a DICOM SR (TID 1500) and, for
//! segmentation models, a DICOM SEG — all built from the types below.
//!
//! Modules:
//! - [`sr`]: the Comprehensive 3D SR document following TID 1500 (Measurement Report);
//! - [`seg`]: the binary Segmentation object, one segment per finding class.
//!
//! Both writers take the source images' own datasets (pixel data excluded) so that the
//! patient, study and geometry they copy are exactly what the PACS sent.

pub mod forward;
pub mod seg;
pub mod sr;

use dicom_object::InMemDicomObject;
use serde::{Deserialize, Serialize};

pub use radserve_models::package::CodedConcept;

/// Why a result object could not be built (all faults of the input given to the writer).
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("no source images: a result needs at least one")]
    NoSources,
    #[error("source image {index}: {reason}")]
    Source { index: usize, reason: String },
    #[error("finding {index}: {reason}")]
    Finding { index: usize, reason: String },
    #[error("mask {index}: {reason}")]
    Mask { index: usize, reason: String },
    #[error("cannot encode the result object: {0}")]
    Encode(String),
}

/// The algorithm that produced the findings (TID 4019 and the SR's device observer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlgorithmInfo {
    /// Model name from its package, e.g. `ct-lung-nodule`.
    pub name: String,
    /// Model version from its package.
    pub version: String,
    /// SHA-256 of the weights file, hex.
    pub weights_sha256: String,
    /// The burn device it ran on, e.g. `wgpu (llvmpipe)` or `cpu`.
    pub device: String,
}

/// One source image the findings were derived from: its dataset without pixel data.
#[derive(Debug, Clone)]
pub struct SourceImage {
    pub dataset: InMemDicomObject,
}

/// A measurement of a finding: a NUM content item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Concept name, e.g. DCM 121211 "Path length" or SCT 118565006 "Volume".
    pub concept: CodedConcept,
    pub value: f64,
    /// UCUM unit (scheme `UCUM`), e.g. `mm`, `mm3`, `[hnsf'U]`, `1`.
    pub unit: CodedConcept,
}

/// One finding: a TID 1500 measurement group (and, for segmentation models, a segment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Model label name, e.g. `nodule`.
    pub label: String,
    /// Finding code from the model package (SNOMED CT / RadLex).
    pub code: CodedConcept,
    /// Finding site, e.g. SCT 39607008 "Lung", when the model knows it.
    pub finding_site: Option<CodedConcept>,
    /// Model output probability for this finding, 0..=1.
    pub probability: f64,
    /// Human-readable tracking identifier, e.g. `nodule 1`.
    pub tracking_id: String,
    /// Tracking Unique Identifier (a UID).
    pub tracking_uid: String,
    pub measurements: Vec<Measurement>,
    /// Centre in patient coordinates (mm), when the finding is localised.
    pub center_mm: Option<[f64; 3]>,
    /// SOP Instance UIDs of the source images this finding lies on (all sources when it is
    /// a whole-image classification).
    pub source_instances: Vec<String>,
    /// The SEG segment number holding this finding's voxels, when a SEG was written.
    pub segment_number: Option<u16>,
}

/// UIDs and numbering of a new result instance (chosen by the caller so that a retried job
/// writes the same UIDs again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInstance {
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    pub series_number: i32,
    pub instance_number: i32,
    /// Content date and time, `YYYYMMDD` and `HHMMSS`.
    pub content_date: String,
    pub content_time: String,
}

#[cfg(test)]
mod validation_tests;

// ---------------------------------------------------------------------------------------------
// Shared by the SR and SEG writers: both copy the same patient/study attributes, describe the
// same equipment and end as Part 10 bytes, so that code lives once, here.
// ---------------------------------------------------------------------------------------------

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use sha2::{Digest, Sha256};

/// Manufacturer of every result object (General and Enhanced General Equipment, Contributing
/// Equipment, the SR's device observer).
pub const MANUFACTURER: &str = "radserve";
/// ImplementationClassUID of the result files radserve writes (a fixed `2.25` UID).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.46833694090032614738454152283935802228";
/// ImplementationVersionName of the result files (at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = "RADSERVE";

/// Patient and General Study attributes copied verbatim from the first source, so that the
/// result files into the same patient and study; `true` marks the Type 2 ones, written empty
/// when the source lacks them.
const PATIENT_STUDY_ATTRIBUTES: [(Tag, VR, bool); 12] = [
    (tags::SPECIFIC_CHARACTER_SET, VR::CS, false),
    (tags::PATIENT_NAME, VR::PN, true),
    (tags::PATIENT_ID, VR::LO, true),
    (tags::ISSUER_OF_PATIENT_ID, VR::LO, false),
    (tags::PATIENT_BIRTH_DATE, VR::DA, true),
    (tags::PATIENT_SEX, VR::CS, true),
    (tags::STUDY_INSTANCE_UID, VR::UI, false),
    (tags::STUDY_DATE, VR::DA, true),
    (tags::STUDY_TIME, VR::TM, true),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN, true),
    (tags::STUDY_ID, VR::SH, true),
    (tags::ACCESSION_NUMBER, VR::SH, true),
];

/// The identity of one source image, read (and checked) once.
#[derive(Debug, Clone)]
pub(crate) struct SourceIds {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub modality: Option<String>,
    pub frame_of_reference_uid: Option<String>,
}

/// Reads the UIDs every reference to a source needs; a source without them cannot be
/// referenced, so that is the caller's error ([`ResultError::Source`]).
pub(crate) fn source_ids(sources: &[SourceImage]) -> Result<Vec<SourceIds>, ResultError> {
    if sources.is_empty() {
        return Err(ResultError::NoSources);
    }
    sources
        .iter()
        .enumerate()
        .map(|(index, source)| {
            let required = |tag: Tag, name: &str| {
                let value =
                    source_str(&source.dataset, tag).ok_or_else(|| ResultError::Source {
                        index,
                        reason: format!("has no {name}"),
                    })?;
                check_uid(&value).map_err(|reason| ResultError::Source {
                    index,
                    reason: format!("{name}: {reason}"),
                })?;
                Ok::<String, ResultError>(value)
            };
            Ok(SourceIds {
                study_instance_uid: required(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
                series_instance_uid: required(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
                sop_class_uid: required(tags::SOP_CLASS_UID, "SOPClassUID")?,
                sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
                modality: source_str(&source.dataset, tags::MODALITY),
                frame_of_reference_uid: source_str(&source.dataset, tags::FRAME_OF_REFERENCE_UID),
            })
        })
        .collect()
}

/// A string attribute of a source, trimmed of DICOM padding; `None` when absent or empty.
pub(crate) fn source_str(dataset: &InMemDicomObject, tag: Tag) -> Option<String> {
    let value = dataset.get(tag)?.to_str().ok()?;
    let value = value.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!value.is_empty()).then(|| value.to_string())
}

/// Checks the syntax of a UID (PS3.5 §9.1): at most 64 characters, numeric components
/// without leading zeros, separated by single dots.
pub(crate) fn check_uid(uid: &str) -> Result<(), String> {
    if uid.is_empty() || uid.len() > 64 {
        return Err(format!(
            "`{uid}` is not a UID: it must have 1 to 64 characters"
        ));
    }
    let valid = uid.split('.').all(|component| {
        !component.is_empty()
            && component.bytes().all(|b| b.is_ascii_digit())
            && (component == "0" || !component.starts_with('0'))
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{uid}` is not a UID: digits and dots only, no leading zeros"
        ))
    }
}

/// Checks the caller-chosen UIDs and content date/time before anything is built, so that a
/// bad value is reported as such rather than as an unreadable file.
pub(crate) fn check_instance(instance: &NewInstance) -> Result<(), ResultError> {
    let bad = |what: &str, reason: String| ResultError::Encode(format!("{what}: {reason}"));
    check_uid(&instance.series_instance_uid).map_err(|r| bad("SeriesInstanceUID", r))?;
    check_uid(&instance.sop_instance_uid).map_err(|r| bad("SOPInstanceUID", r))?;
    let digits = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(&instance.content_date, 8) {
        return Err(bad(
            "content date",
            format!("`{}` is not YYYYMMDD", instance.content_date),
        ));
    }
    if !digits(&instance.content_time, 6) {
        return Err(bad(
            "content time",
            format!("`{}` is not HHMMSS", instance.content_time),
        ));
    }
    Ok(())
}

/// A new result object: patient and study copied from the first source, SOP Common, and
/// the series (Modality, SeriesInstanceUID, SeriesNumber, SeriesDescription) — what the SR
/// and the SEG both open with.
pub(crate) fn new_result_object(
    first_source: &InMemDicomObject,
    sop_class_uid: &str,
    modality: &str,
    series_description: &str,
    algorithm: &AlgorithmInfo,
    instance: &NewInstance,
) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    copy_patient_study(&mut obj, first_source);
    put_sop_common(&mut obj, sop_class_uid, algorithm, instance);
    put_str(&mut obj, tags::MODALITY, VR::CS, modality);
    put_str(
        &mut obj,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &instance.series_instance_uid,
    );
    put_str(
        &mut obj,
        tags::SERIES_NUMBER,
        VR::IS,
        &instance.series_number.to_string(),
    );
    put_str(
        &mut obj,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        series_description,
    );
    obj
}

/// A `2.25` UID derived from `parts` (SHA-256, first 128 bits): the same inputs always give
/// the same UID, so a retried job writes identical objects.
pub fn derived_uid(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

/// A Decimal String of at most 16 characters (PS3.5 Table 6.2-1). The exact value travels
/// in a companion FD attribute wherever the standard has one.
pub(crate) fn ds(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    // Shortest representation first, then fewer significant digits until it fits.
    let plain = format!("{value}");
    if plain.len() <= 16 {
        return plain;
    }
    for precision in (1..=15).rev() {
        let fixed = format!("{value:.precision$}");
        let fixed = if fixed.contains('.') {
            fixed
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        } else {
            fixed
        };
        if fixed.len() <= 16 && fixed.parse::<f64>().is_ok_and(|v| v != 0.0) {
            return fixed;
        }
        let scientific = format!("{value:.precision$e}");
        if scientific.len() <= 16 {
            return scientific;
        }
    }
    format!("{value:.1e}")
}

pub(crate) fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

pub(crate) fn put_empty(obj: &mut InMemDicomObject, tag: Tag, vr: VR) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
}

pub(crate) fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

/// A code sequence item. Code values longer than 16 characters (long SNOMED CT identifiers)
/// go to LongCodeValue and URNs/URLs to URNCodeValue, as PS3.3 §8.8 requires.
pub(crate) fn code_item(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    if value.contains(':') {
        put_str(&mut item, tags::URN_CODE_VALUE, VR::UR, value);
    } else if value.len() > 16 {
        put_str(&mut item, tags::LONG_CODE_VALUE, VR::UC, value);
    } else {
        put_str(&mut item, tags::CODE_VALUE, VR::SH, value);
    }
    // URN codes carry no designator of their own in DICOM; the others must have one.
    if !value.contains(':') {
        put_str(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
    }
    put_str(&mut item, tags::CODE_MEANING, VR::LO, meaning);
    item
}

pub(crate) fn concept_item(concept: &CodedConcept) -> InMemDicomObject {
    code_item(&concept.value, &concept.scheme, &concept.meaning)
}

/// Checks a caller-supplied code fits DICOM's code attributes; `what` names it in the error.
pub(crate) fn check_concept(concept: &CodedConcept, what: &str) -> Result<(), String> {
    if concept.value.trim().is_empty() || concept.meaning.trim().is_empty() {
        return Err(format!("{what} needs a code value and a meaning"));
    }
    if concept.scheme.trim().is_empty() || concept.scheme.len() > 16 {
        return Err(format!(
            "{what}: coding scheme `{}` must have 1 to 16 characters",
            concept.scheme
        ));
    }
    if concept.meaning.chars().count() > 64 {
        return Err(format!(
            "{what}: meaning `{}` is longer than 64 characters",
            concept.meaning
        ));
    }
    Ok(())
}

/// Copies the Patient and General Study attributes from `source` (with its character set,
/// so that non-ASCII names are written in the encoding they came in).
pub(crate) fn copy_patient_study(target: &mut InMemDicomObject, source: &InMemDicomObject) {
    for (tag, vr, type2) in PATIENT_STUDY_ATTRIBUTES {
        match source.get(tag) {
            Some(element) => {
                target.put(element.clone());
            }
            None if type2 => put_empty(target, tag, vr),
            None => {}
        }
    }
}

/// General Equipment and Enhanced General Equipment: the "device" is radserve running the
/// algorithm. DeviceSerialNumber (Type 1) is the start of the weights' SHA-256, which tells
/// deployed builds of one model apart.
pub(crate) fn put_equipment(obj: &mut InMemDicomObject, algorithm: &AlgorithmInfo) {
    put_str(obj, tags::MANUFACTURER, VR::LO, MANUFACTURER);
    put_str(obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, &algorithm.name);
    put_str(
        obj,
        tags::DEVICE_SERIAL_NUMBER,
        VR::LO,
        &device_serial_number(algorithm),
    );
    put_str(obj, tags::SOFTWARE_VERSIONS, VR::LO, &algorithm.version);
}

fn device_serial_number(algorithm: &AlgorithmInfo) -> String {
    let serial: String = algorithm.weights_sha256.chars().take(16).collect();
    if serial.is_empty() {
        "unknown".to_string()
    } else {
        serial
    }
}

/// Checks the algorithm's identity fits the LO attributes it is written to.
pub(crate) fn check_algorithm(algorithm: &AlgorithmInfo) -> Result<(), ResultError> {
    for (what, value) in [("name", &algorithm.name), ("version", &algorithm.version)] {
        if value.trim().is_empty() || value.chars().count() > 64 || value.contains('\\') {
            return Err(ResultError::Encode(format!(
                "algorithm {what} `{value}` must have 1 to 64 characters and no backslash"
            )));
        }
    }
    Ok(())
}

/// The Contributing Equipment item for the algorithm (IHE AI Results): radserve as the
/// Processing Equipment (DCM 109102) that created this object from the source images.
pub(crate) fn contributing_equipment(
    algorithm: &AlgorithmInfo,
    instance: &NewInstance,
) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_seq(
        &mut item,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code_item("109102", "DCM", "Processing Equipment")],
    );
    put_str(&mut item, tags::MANUFACTURER, VR::LO, MANUFACTURER);
    put_str(
        &mut item,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        &algorithm.name,
    );
    put_str(
        &mut item,
        tags::DEVICE_SERIAL_NUMBER,
        VR::LO,
        &device_serial_number(algorithm),
    );
    put_str(
        &mut item,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        &algorithm.version,
    );
    put_str(
        &mut item,
        tags::CONTRIBUTION_DATE_TIME,
        VR::DT,
        &format!("{}{}", instance.content_date, instance.content_time),
    );
    put_str(
        &mut item,
        tags::CONTRIBUTION_DESCRIPTION,
        VR::ST,
        &format!(
            "{} {} on {}",
            algorithm.name, algorithm.version, algorithm.device
        ),
    );
    item
}

/// SOP Common: class, instance, creation date/time and the contributing equipment.
pub(crate) fn put_sop_common(
    obj: &mut InMemDicomObject,
    sop_class_uid: &str,
    algorithm: &AlgorithmInfo,
    instance: &NewInstance,
) {
    put_str(obj, tags::SOP_CLASS_UID, VR::UI, sop_class_uid);
    put_str(
        obj,
        tags::SOP_INSTANCE_UID,
        VR::UI,
        &instance.sop_instance_uid,
    );
    put_str(
        obj,
        tags::INSTANCE_CREATION_DATE,
        VR::DA,
        &instance.content_date,
    );
    put_str(
        obj,
        tags::INSTANCE_CREATION_TIME,
        VR::TM,
        &instance.content_time,
    );
    put_seq(
        obj,
        tags::CONTRIBUTING_EQUIPMENT_SEQUENCE,
        vec![contributing_equipment(algorithm, instance)],
    );
}

/// The Part 10 file (preamble, meta group, Explicit VR Little Endian data set) as bytes.
pub(crate) fn part10_bytes(obj: InMemDicomObject) -> Result<Vec<u8>, ResultError> {
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                .implementation_version_name(IMPLEMENTATION_VERSION_NAME),
        )
        .map_err(|e| ResultError::Encode(e.to_string()))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .map_err(|e| ResultError::Encode(e.to_string()))?;
    Ok(bytes)
}
