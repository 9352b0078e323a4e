//! The DICOM SR writer: a Comprehensive 3D SR document following TID 1500 "Measurement
//! Report", shaped as highdicom's `Comprehensive3DSR` + `MeasurementReport` shape it, so that
//! viewers and libraries that read TID 1500 (OHIF, highdicom, dcmqi) find the findings.
//!
//! Content tree:
//! ```text
//! CONTAINER  Imaging Measurement Report (DCM 126000), TID 1500
//!   HAS CONCEPT MOD  Language of Content Item and Descendants = en-US          (TID 1204)
//!   HAS OBS CONTEXT  Observer Type = Device, Device Observer UID/Name/...     (TID 1002/1004)
//!   HAS CONCEPT MOD  Procedure reported = code from the sources' Modality
//!   CONTAINS         Image Library (TID 1600): one group per modality and frame of reference
//!   CONTAINS         Imaging Measurements: one Measurement Group per finding
//!                      TID 1411 with a Referenced Segment when the finding has a SEG segment,
//!                      TID 1410 with a SCOORD3D POINT when it is localised by a centre only,
//!                      TID 1501 with its source images otherwise (whole-image classification)
//!   CONTAINS         Qualitative Evaluations: "Clinical finding absent", when there are no
//!                      findings (TID 1500 needs measurements or evaluations)
//! ```
//! Each Measurement Group: Tracking Identifier and UID (TID 4108), Finding, Finding Site,
//! Algorithm Identification (TID 4019), the model's probability (DCM 111012 "Certainty of
//! Finding", unit `1`) and one NUM (TID 300) per measurement.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::seg::SEGMENTATION_STORAGE;
use super::{
    AlgorithmInfo, Finding, Measurement, NewInstance, ResultError, SourceIds, SourceImage,
    check_algorithm, check_concept, check_instance, check_uid, code_item, concept_item,
    derived_uid, ds, new_result_object, put_equipment, put_seq, put_str, source_ids,
};

/// Where the SEG written for the same result lies, so the SR can reference its segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegReference {
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
}

/// SOP class of the SR we write: Comprehensive 3D SR, the SR class that allows SCOORD3D.
pub const COMPREHENSIVE_3D_SR: &str = "1.2.840.10008.5.1.4.1.1.88.34";

/// A code known at compile time: (value, scheme, meaning).
type Code = (&'static str, &'static str, &'static str);

const IMAGING_MEASUREMENT_REPORT: Code = ("126000", "DCM", "Imaging Measurement Report");
const LANGUAGE: Code = ("121049", "DCM", "Language of Content Item and Descendants");
const ENGLISH_US: Code = ("en-US", "RFC5646", "English (United States)");
const OBSERVER_TYPE: Code = ("121005", "DCM", "Observer Type");
const DEVICE: Code = ("121007", "DCM", "Device");
const DEVICE_OBSERVER_UID: Code = ("121012", "DCM", "Device Observer UID");
const DEVICE_OBSERVER_NAME: Code = ("121013", "DCM", "Device Observer Name");
const DEVICE_OBSERVER_MANUFACTURER: Code = ("121014", "DCM", "Device Observer Manufacturer");
const DEVICE_OBSERVER_MODEL_NAME: Code = ("121015", "DCM", "Device Observer Model Name");
const PROCEDURE_REPORTED: Code = ("121058", "DCM", "Procedure reported");
const IMAGE_LIBRARY: Code = ("111028", "DCM", "Image Library");
const IMAGE_LIBRARY_GROUP: Code = ("126200", "DCM", "Image Library Group");
const MODALITY: Code = ("121139", "DCM", "Modality");
const FRAME_OF_REFERENCE_UID: Code = ("112227", "DCM", "Frame of Reference UID");
const IMAGING_MEASUREMENTS: Code = ("126010", "DCM", "Imaging Measurements");
const MEASUREMENT_GROUP: Code = ("125007", "DCM", "Measurement Group");
const TRACKING_IDENTIFIER: Code = ("112039", "DCM", "Tracking Identifier");
const TRACKING_UID: Code = ("112040", "DCM", "Tracking Unique Identifier");
const FINDING: Code = ("121071", "DCM", "Finding");
const FINDING_SITE: Code = ("363698007", "SCT", "Finding Site");
const ALGORITHM_NAME: Code = ("111001", "DCM", "Algorithm Name");
const ALGORITHM_VERSION: Code = ("111003", "DCM", "Algorithm Version");
const ALGORITHM_PARAMETERS: Code = ("111002", "DCM", "Algorithm Parameters");
const REFERENCED_SEGMENT: Code = ("121191", "DCM", "Referenced Segment");
const SOURCE_IMAGE_FOR_SEGMENTATION: Code = ("121233", "DCM", "Source image for segmentation");
const SOURCE_OF_MEASUREMENT: Code = ("121112", "DCM", "Source of Measurement");
const IMAGE_REGION: Code = ("111030", "DCM", "Image Region");
/// TID 320's concept for coordinates a measurement was inferred from (highdicom's default).
const SOURCE: Code = ("260753009", "SCT", "Source");
/// The model's output probability: CAD's "Certainty of Finding", as a fraction (UCUM `1`).
const CERTAINTY_OF_FINDING: Code = ("111012", "DCM", "Certainty of Finding");
const NO_UNITS: Code = ("1", "UCUM", "no units");
const QUALITATIVE_EVALUATIONS: Code = ("C0034375", "UMLS", "Qualitative Evaluations");
const CLINICAL_FINDING_ABSENT: Code = ("373572006", "SCT", "Clinical finding absent");

/// Builds a Comprehensive 3D SR (SOP class 1.2.840.10008.5.1.4.1.1.88.34) following TID 1500 and
/// returns the Part 10 file bytes (Explicit VR Little Endian).
///
/// Errors: [`ResultError::NoSources`]; [`ResultError::Source`] when a source lacks the UIDs a
/// reference needs; [`ResultError::Finding`] when a finding is inconsistent (bad code or UID,
/// probability outside 0..=1, non-finite value, a unit not in UCUM, an instance that is not
/// among the sources, a segment number without `seg`, a centre without a frame of reference);
/// [`ResultError::Encode`] for bad `instance`/`algorithm` values or a failed encoding.
pub fn build_sr(
    sources: &[SourceImage],
    algorithm: &AlgorithmInfo,
    findings: &[Finding],
    seg: Option<&SegReference>,
    instance: &NewInstance,
) -> Result<Vec<u8>, ResultError> {
    let ids = source_ids(sources)?;
    check_instance(instance)?;
    check_algorithm(algorithm)?;
    if let Some(seg) = seg {
        for (what, uid) in [
            ("SEG SeriesInstanceUID", &seg.series_instance_uid),
            ("SEG SOPInstanceUID", &seg.sop_instance_uid),
        ] {
            check_uid(uid).map_err(|reason| ResultError::Encode(format!("{what}: {reason}")))?;
        }
    }
    for (index, finding) in findings.iter().enumerate() {
        check_finding(finding, &ids, seg.is_some())
            .map_err(|reason| ResultError::Finding { index, reason })?;
    }

    let first = &sources[0].dataset;
    // SR Document Series
    let mut obj = new_result_object(
        first,
        COMPREHENSIVE_3D_SR,
        "SR",
        &format!("{} findings", algorithm.name),
        algorithm,
        instance,
    );
    put_seq(
        &mut obj,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    );

    // General Equipment + Enhanced General Equipment
    put_equipment(&mut obj, algorithm);

    // SR Document General
    let procedure = procedure_code(ids[0].modality.as_deref());
    put_str(
        &mut obj,
        tags::INSTANCE_NUMBER,
        VR::IS,
        &instance.instance_number.to_string(),
    );
    put_str(&mut obj, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put_str(&mut obj, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &instance.content_date);
    put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &instance.content_time);
    put_seq(
        &mut obj,
        tags::PERFORMED_PROCEDURE_CODE_SEQUENCE,
        vec![code(procedure)],
    );
    put_seq(
        &mut obj,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        evidence(&ids, seg),
    );

    // SR Document Content: the root content item's attributes live in the data set itself.
    put_str(&mut obj, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(
        &mut obj,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code(IMAGING_MEASUREMENT_REPORT)],
    );
    put_str(&mut obj, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(
        &mut obj,
        tags::CONTENT_TEMPLATE_SEQUENCE,
        vec![template("1500")],
    );
    put_seq(
        &mut obj,
        tags::CONTENT_SEQUENCE,
        report_content(&ids, algorithm, findings, seg, procedure),
    );

    super::part10_bytes(obj)
}

/// Everything a finding must satisfy before it is written; the reason goes to
/// [`ResultError::Finding`].
fn check_finding(finding: &Finding, ids: &[SourceIds], has_seg: bool) -> Result<(), String> {
    check_concept(&finding.code, "finding code")?;
    if let Some(site) = &finding.finding_site {
        check_concept(site, "finding site")?;
    }
    check_uid(&finding.tracking_uid).map_err(|r| format!("tracking UID: {r}"))?;
    let tracking_id = finding.tracking_id.trim();
    if tracking_id.is_empty() {
        return Err("the tracking identifier is empty".into());
    }
    if !finding.probability.is_finite() || !(0.0..=1.0).contains(&finding.probability) {
        return Err(format!(
            "probability {} is not within 0..=1",
            finding.probability
        ));
    }
    for (m, measurement) in finding.measurements.iter().enumerate() {
        check_concept(&measurement.concept, &format!("measurement {m} concept"))?;
        check_concept(&measurement.unit, &format!("measurement {m} unit"))?;
        if measurement.unit.scheme != "UCUM" {
            return Err(format!(
                "measurement {m}: unit scheme is `{}`, units must be UCUM",
                measurement.unit.scheme
            ));
        }
        if !measurement.value.is_finite() {
            return Err(format!(
                "measurement {m}: value {} is not finite",
                measurement.value
            ));
        }
    }
    for uid in &finding.source_instances {
        if !ids.iter().any(|id| &id.sop_instance_uid == uid) {
            return Err(format!(
                "source instance {uid} is not among the source images"
            ));
        }
    }
    if let Some(number) = finding.segment_number {
        if !has_seg {
            return Err(format!(
                "refers to segment {number} but no SEG reference was given"
            ));
        }
        if number == 0 {
            return Err("segment numbers start at 1".into());
        }
    }
    if let Some(center) = finding.center_mm {
        if center
            .iter()
            .any(|c| !c.is_finite() || c.abs() > f32::MAX as f64)
        {
            return Err(format!(
                "centre {center:?} is not a finite 32-bit coordinate"
            ));
        }
        if frame_of_reference(finding, ids).is_none() {
            return Err("has a centre but its source images have no FrameOfReferenceUID".into());
        }
    }
    Ok(())
}

/// The source images a finding lies on: the ones it names, or all sources when it names none.
fn finding_sources<'a>(finding: &Finding, ids: &'a [SourceIds]) -> Vec<&'a SourceIds> {
    if finding.source_instances.is_empty() {
        return ids.iter().collect();
    }
    finding
        .source_instances
        .iter()
        .filter_map(|uid| ids.iter().find(|id| &id.sop_instance_uid == uid))
        .collect()
}

/// The frame of reference a finding's centre is expressed in: that of its first source image
/// that has one.
fn frame_of_reference<'a>(finding: &Finding, ids: &'a [SourceIds]) -> Option<&'a str> {
    finding_sources(finding, ids)
        .into_iter()
        .find_map(|id| id.frame_of_reference_uid.as_deref())
}

/// Procedure reported (TID 1500 row 4), from the Modality of the first source: SNOMED CT
/// imaging procedures as listed in CID 100 and its parents.
fn procedure_code(modality: Option<&str>) -> Code {
    match modality {
        Some("CT") => ("77477000", "SCT", "Computerized axial tomography"),
        Some("MR") => ("113091000", "SCT", "Magnetic resonance imaging"),
        Some("PT") => ("82918005", "SCT", "Positron emission tomography"),
        Some("NM") => ("373205008", "SCT", "Nuclear medicine imaging procedure"),
        Some("US") => ("16310003", "SCT", "Ultrasonography"),
        Some("MG") => ("71651007", "SCT", "Mammography"),
        Some("DX" | "CR" | "DR" | "RG") => ("363680008", "SCT", "Radiographic imaging procedure"),
        _ => ("363679005", "SCT", "Imaging"),
    }
}

/// DICOM's own code for a modality (CID 29), for the Image Library's Modality descriptor.
fn modality_code(modality: &str) -> Option<Code> {
    Some(match modality {
        "CT" => ("CT", "DCM", "Computed Tomography"),
        "MR" => ("MR", "DCM", "Magnetic Resonance"),
        "DX" => ("DX", "DCM", "Digital Radiography"),
        "CR" => ("CR", "DCM", "Computed Radiography"),
        "MG" => ("MG", "DCM", "Mammography"),
        "US" => ("US", "DCM", "Ultrasound"),
        "PT" => ("PT", "DCM", "Positron emission tomography"),
        "NM" => ("NM", "DCM", "Nuclear Medicine"),
        "RG" => ("RG", "DCM", "Radiographic imaging"),
        _ => return None,
    })
}

fn code((value, scheme, meaning): Code) -> InMemDicomObject {
    code_item(value, scheme, meaning)
}

fn template(identifier: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put_str(&mut item, tags::TEMPLATE_IDENTIFIER, VR::CS, identifier);
    item
}

/// Current Requested Procedure Evidence: every source image, and the SEG (same study) that
/// the content tree references, grouped by study and series as the macro requires.
fn evidence(ids: &[SourceIds], seg: Option<&SegReference>) -> Vec<InMemDicomObject> {
    let mut refs: Vec<Reference> = ids
        .iter()
        .map(|id| Reference {
            study: &id.study_instance_uid,
            series: &id.series_instance_uid,
            class: &id.sop_class_uid,
            instance: &id.sop_instance_uid,
        })
        .collect();
    if let Some(seg) = seg {
        refs.push(Reference {
            study: &ids[0].study_instance_uid,
            series: &seg.series_instance_uid,
            class: SEGMENTATION_STORAGE,
            instance: &seg.sop_instance_uid,
        });
    }
    // Studies, then series, in first-seen order; each instance once.
    let mut studies: Vec<&str> = Vec::new();
    for r in &refs {
        if !studies.contains(&r.study) {
            studies.push(r.study);
        }
    }
    studies
        .into_iter()
        .map(|study| {
            let in_study: Vec<&Reference> = refs.iter().filter(|r| r.study == study).collect();
            let mut series: Vec<&str> = Vec::new();
            for r in &in_study {
                if !series.contains(&r.series) {
                    series.push(r.series);
                }
            }
            let series_items = series
                .into_iter()
                .map(|uid| {
                    let mut instances: Vec<&str> = Vec::new();
                    let mut sops = Vec::new();
                    for r in in_study.iter().filter(|r| r.series == uid) {
                        if !instances.contains(&r.instance) {
                            instances.push(r.instance);
                            sops.push(sop_reference(r.class, r.instance));
                        }
                    }
                    let mut series_item = InMemDicomObject::new_empty();
                    put_str(&mut series_item, tags::SERIES_INSTANCE_UID, VR::UI, uid);
                    put_seq(&mut series_item, tags::REFERENCED_SOP_SEQUENCE, sops);
                    series_item
                })
                .collect();
            let mut study_item = InMemDicomObject::new_empty();
            put_str(&mut study_item, tags::STUDY_INSTANCE_UID, VR::UI, study);
            put_seq(
                &mut study_item,
                tags::REFERENCED_SERIES_SEQUENCE,
                series_items,
            );
            study_item
        })
        .collect()
}

/// One instance the SR references, with the study and series it belongs to.
struct Reference<'a> {
    study: &'a str,
    series: &'a str,
    class: &'a str,
    instance: &'a str,
}

fn sop_reference(class: &str, instance: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
    put_str(
        &mut item,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        instance,
    );
    item
}

// --- content items ------------------------------------------------------------------------

/// The attributes every content item has: relationship, value type and concept name.
fn item(relationship: &str, value_type: &str, name: Option<Code>) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::RELATIONSHIP_TYPE, VR::CS, relationship);
    put_str(&mut item, tags::VALUE_TYPE, VR::CS, value_type);
    if let Some(name) = name {
        put_seq(
            &mut item,
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code(name)],
        );
    }
    item
}

fn container(
    relationship: &str,
    name: Code,
    template_id: Option<&str>,
    children: Vec<InMemDicomObject>,
) -> InMemDicomObject {
    let mut container = item(relationship, "CONTAINER", Some(name));
    put_str(
        &mut container,
        tags::CONTINUITY_OF_CONTENT,
        VR::CS,
        "SEPARATE",
    );
    if let Some(id) = template_id {
        put_seq(
            &mut container,
            tags::CONTENT_TEMPLATE_SEQUENCE,
            vec![template(id)],
        );
    }
    if !children.is_empty() {
        put_seq(&mut container, tags::CONTENT_SEQUENCE, children);
    }
    container
}

fn text(relationship: &str, name: Code, value: &str) -> InMemDicomObject {
    let mut text = item(relationship, "TEXT", Some(name));
    put_str(&mut text, tags::TEXT_VALUE, VR::UT, value);
    text
}

fn uidref(relationship: &str, name: Code, value: &str) -> InMemDicomObject {
    let mut uidref = item(relationship, "UIDREF", Some(name));
    put_str(&mut uidref, tags::UID, VR::UI, value);
    uidref
}

fn code_value(relationship: &str, name: Code, value: InMemDicomObject) -> InMemDicomObject {
    let mut code_item = item(relationship, "CODE", Some(name));
    put_seq(&mut code_item, tags::CONCEPT_CODE_SEQUENCE, vec![value]);
    code_item
}

/// A NUM item; the value goes both as DS (at most 16 characters) and as the exact FD
/// FloatingPointValue, which readers such as highdicom prefer.
fn num(name: InMemDicomObject, value: f64, unit: InMemDicomObject) -> InMemDicomObject {
    let mut num = item("CONTAINS", "NUM", None);
    put_seq(&mut num, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![name]);
    let mut measured = InMemDicomObject::new_empty();
    put_seq(
        &mut measured,
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        vec![unit],
    );
    put_str(&mut measured, tags::NUMERIC_VALUE, VR::DS, &ds(value));
    measured.put(DataElement::new(
        tags::FLOATING_POINT_VALUE,
        VR::FD,
        PrimitiveValue::from(value),
    ));
    put_seq(&mut num, tags::MEASURED_VALUE_SEQUENCE, vec![measured]);
    num
}

fn image(relationship: &str, name: Option<Code>, class: &str, instance: &str) -> InMemDicomObject {
    let mut image = item(relationship, "IMAGE", name);
    put_seq(
        &mut image,
        tags::REFERENCED_SOP_SEQUENCE,
        vec![sop_reference(class, instance)],
    );
    image
}

fn point3d(relationship: &str, name: Code, center: [f64; 3], frame: &str) -> InMemDicomObject {
    let mut point = item(relationship, "SCOORD3D", Some(name));
    put_str(&mut point, tags::GRAPHIC_TYPE, VR::CS, "POINT");
    // GraphicData is FL: the coordinates were checked to fit 32 bits.
    let data: Vec<f32> = center.iter().map(|&c| c as f32).collect();
    point.put(DataElement::new(
        tags::GRAPHIC_DATA,
        VR::FL,
        PrimitiveValue::F32(data.into()),
    ));
    put_str(
        &mut point,
        tags::REFERENCED_FRAME_OF_REFERENCE_UID,
        VR::UI,
        frame,
    );
    point
}

/// The root's children, in TID 1500 order.
fn report_content(
    ids: &[SourceIds],
    algorithm: &AlgorithmInfo,
    findings: &[Finding],
    seg: Option<&SegReference>,
    procedure: Code,
) -> Vec<InMemDicomObject> {
    let mut content = vec![
        code_value("HAS CONCEPT MOD", LANGUAGE, code(ENGLISH_US)),
        code_value("HAS OBS CONTEXT", OBSERVER_TYPE, code(DEVICE)),
        uidref(
            "HAS OBS CONTEXT",
            DEVICE_OBSERVER_UID,
            &device_observer_uid(algorithm),
        ),
        text("HAS OBS CONTEXT", DEVICE_OBSERVER_NAME, &algorithm.name),
        text(
            "HAS OBS CONTEXT",
            DEVICE_OBSERVER_MANUFACTURER,
            super::MANUFACTURER,
        ),
        text(
            "HAS OBS CONTEXT",
            DEVICE_OBSERVER_MODEL_NAME,
            &algorithm.name,
        ),
        code_value("HAS CONCEPT MOD", PROCEDURE_REPORTED, code(procedure)),
        image_library(ids),
    ];
    if findings.is_empty() {
        // TID 1500 needs Imaging Measurements with at least one group, or evaluations: an
        // empty result is the evaluation "no finding", with the algorithm that said so.
        let mut absent = code_value("CONTAINS", FINDING, code(CLINICAL_FINDING_ABSENT));
        put_seq(
            &mut absent,
            tags::CONTENT_SEQUENCE,
            algorithm_identification(algorithm),
        );
        content.push(container(
            "CONTAINS",
            QUALITATIVE_EVALUATIONS,
            None,
            vec![absent],
        ));
    } else {
        let groups = findings
            .iter()
            .map(|finding| measurement_group(finding, ids, algorithm, seg))
            .collect();
        content.push(container("CONTAINS", IMAGING_MEASUREMENTS, None, groups));
    }
    content
}

/// The Device Observer UID: derived from the model's identity (name, version, weights), so it
/// names the same "device" in every report that model writes.
fn device_observer_uid(algorithm: &AlgorithmInfo) -> String {
    derived_uid(&[
        "radserve-device-observer",
        &algorithm.name,
        &algorithm.version,
        &algorithm.weights_sha256,
    ])
}

/// TID 1600: one Image Library Group per (modality, frame of reference), with those two as the
/// group's shared descriptors (TID 1602), then one IMAGE item per source image.
fn image_library(ids: &[SourceIds]) -> InMemDicomObject {
    // (modality, frame of reference) → its images, in first-seen order.
    type Key<'a> = (Option<&'a str>, Option<&'a str>);
    let mut groups: Vec<(Key, Vec<&SourceIds>)> = Vec::new();
    for id in ids {
        let key = (id.modality.as_deref(), id.frame_of_reference_uid.as_deref());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(id),
            None => groups.push((key, vec![id])),
        }
    }
    let groups = groups
        .into_iter()
        .map(|((modality, frame), members)| {
            let mut children = Vec::new();
            if let Some(modality) = modality.and_then(modality_code) {
                children.push(code_value("HAS ACQ CONTEXT", MODALITY, code(modality)));
            }
            if let Some(frame) = frame {
                children.push(uidref("HAS ACQ CONTEXT", FRAME_OF_REFERENCE_UID, frame));
            }
            children.extend(
                members
                    .iter()
                    .map(|id| image("CONTAINS", None, &id.sop_class_uid, &id.sop_instance_uid)),
            );
            container("CONTAINS", IMAGE_LIBRARY_GROUP, None, children)
        })
        .collect();
    container("CONTAINS", IMAGE_LIBRARY, None, groups)
}

/// TID 4019 as HAS CONCEPT MOD items: name, version, and as parameters the weights' SHA-256
/// and the device the model ran on (what a reader needs to reproduce the result).
fn algorithm_identification(algorithm: &AlgorithmInfo) -> Vec<InMemDicomObject> {
    vec![
        text("HAS CONCEPT MOD", ALGORITHM_NAME, &algorithm.name),
        text("HAS CONCEPT MOD", ALGORITHM_VERSION, &algorithm.version),
        text(
            "HAS CONCEPT MOD",
            ALGORITHM_PARAMETERS,
            &format!("weights_sha256={}", algorithm.weights_sha256),
        ),
        text(
            "HAS CONCEPT MOD",
            ALGORITHM_PARAMETERS,
            &format!("device={}", algorithm.device),
        ),
    ]
}

/// One Measurement Group. Which template it follows depends on how the finding is located:
/// - a SEG segment → TID 1411 (volumetric ROI), Referenced Segment + its source images; a
///   centre, if any, is the SCOORD3D POINT the probability was inferred from (TID 300/320);
/// - a centre only → TID 1410 (planar ROI) with a SCOORD3D POINT Image Region;
/// - neither → TID 1501 with the source images as "Source of Measurement".
fn measurement_group(
    finding: &Finding,
    ids: &[SourceIds],
    algorithm: &AlgorithmInfo,
    seg: Option<&SegReference>,
) -> InMemDicomObject {
    let sources = finding_sources(finding, ids);
    let frame = frame_of_reference(finding, ids);
    let mut children = vec![
        text(
            "HAS OBS CONTEXT",
            TRACKING_IDENTIFIER,
            finding.tracking_id.trim(),
        ),
        uidref("HAS OBS CONTEXT", TRACKING_UID, &finding.tracking_uid),
        code_value("CONTAINS", FINDING, concept_item(&finding.code)),
    ];
    if let Some(site) = &finding.finding_site {
        children.push(code_value(
            "HAS CONCEPT MOD",
            FINDING_SITE,
            concept_item(site),
        ));
    }
    children.extend(algorithm_identification(algorithm));

    let mut probability = num(
        code(CERTAINTY_OF_FINDING),
        finding.probability,
        code(NO_UNITS),
    );
    let template_id = match (finding.segment_number, seg, finding.center_mm, frame) {
        (Some(number), Some(seg), center, frame) => {
            let mut reference = sop_reference(SEGMENTATION_STORAGE, &seg.sop_instance_uid);
            reference.put(DataElement::new(
                tags::REFERENCED_SEGMENT_NUMBER,
                VR::US,
                PrimitiveValue::from(number),
            ));
            let mut segment = item("CONTAINS", "IMAGE", Some(REFERENCED_SEGMENT));
            put_seq(&mut segment, tags::REFERENCED_SOP_SEQUENCE, vec![reference]);
            children.push(segment);
            children.extend(sources.iter().map(|id| {
                image(
                    "CONTAINS",
                    Some(SOURCE_IMAGE_FOR_SEGMENTATION),
                    &id.sop_class_uid,
                    &id.sop_instance_uid,
                )
            }));
            if let (Some(center), Some(frame)) = (center, frame) {
                put_seq(
                    &mut probability,
                    tags::CONTENT_SEQUENCE,
                    vec![point3d("INFERRED FROM", SOURCE, center, frame)],
                );
            }
            "1411"
        }
        (_, _, Some(center), Some(frame)) => {
            children.push(point3d("CONTAINS", IMAGE_REGION, center, frame));
            "1410"
        }
        _ => {
            children.extend(sources.iter().map(|id| {
                image(
                    "CONTAINS",
                    Some(SOURCE_OF_MEASUREMENT),
                    &id.sop_class_uid,
                    &id.sop_instance_uid,
                )
            }));
            "1501"
        }
    };
    children.push(probability);
    children.extend(finding.measurements.iter().map(measurement));
    container("CONTAINS", MEASUREMENT_GROUP, Some(template_id), children)
}

fn measurement(measurement: &Measurement) -> InMemDicomObject {
    num(
        concept_item(&measurement.concept),
        measurement.value,
        concept_item(&measurement.unit),
    )
}
