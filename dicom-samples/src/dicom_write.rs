//! The DICOM objects the generator writes: CT Image, Digital X-Ray (for presentation) and
//! Computed Radiography, each with every module its IOD requires (checked by `dciodvfy` in
//! the tests), written in explicit VR little endian. Transfer-syntax variants are made from
//! these files by `scripts/make-transfer-syntax-variants.sh` with dcmtk and GDCM.

use std::path::Path;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

use crate::ct::{CtGeometry, RESCALE_INTERCEPT, RESCALE_SLOPE};
use crate::ground_truth::{Modality, StudyRecord};
use crate::patient::Patient;

/// ImplementationClassUID of files we write (a fixed `2.25` UID of this generator).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.160385730197328946331276530745473271846";
pub const IMPLEMENTATION_VERSION_NAME: &str = "RADSERVE_SAMPLES";
const MANUFACTURER: &str = "radserve dicom-samples (synthetic)";
const INSTITUTION: &str = "Radserve Demo Hospital";

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    // Boxed: dicom-rs's errors are large and this one travels through every write.
    #[error("could not build the file meta group: {0}")]
    Meta(Box<dicom_object::WithMetaError>),
    #[error("could not write {path}")]
    Write {
        path: String,
        #[source]
        source: Box<dicom_object::WriteError>,
    },
}

/// Study-level facts every instance of a study carries.
#[derive(Debug, Clone)]
pub struct StudyContext<'a> {
    pub patient: &'a Patient,
    pub study: &'a StudyRecord,
    pub series_number: u32,
    pub series_description: &'a str,
}

/// One CT slice.
pub struct CtSlice<'a> {
    pub geometry: &'a CtGeometry,
    pub frame_of_reference_uid: &'a str,
    pub sop_instance_uid: &'a str,
    pub index: usize,
    pub stored: &'a [i16],
}

/// One radiograph's pixels and display facts.
pub struct Radiograph<'a> {
    pub sop_instance_uid: &'a str,
    pub rows: u32,
    pub columns: u32,
    pub pixel_spacing_mm: f64,
    pub bits_stored: u16,
    pub monochrome1: bool,
    pub pixels: &'a [u16],
    pub window_center: f64,
    pub window_width: f64,
}

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, value.into()));
}

fn put_empty(obj: &mut InMemDicomObject, tag: Tag, vr: VR) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
}

fn put_sequence(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

/// Decimal string value: DS allows at most 16 characters.
fn ds(value: f64) -> String {
    let mut text = format!("{value:.6}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if text.len() > 16 {
        text = format!("{value:.3e}");
    }
    if text == "-0" { "0".to_string() } else { text }
}

fn ds_multi(values: &[f64]) -> String {
    values.iter().map(|v| ds(*v)).collect::<Vec<_>>().join("\\")
}

/// A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning).
fn code_item(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put(&mut item, tags::CODE_VALUE, VR::SH, value);
    put(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
    put(&mut item, tags::CODE_MEANING, VR::LO, meaning);
    item
}

/// Patient, General Study, Patient Study, General Series, General Equipment and SOP Common
/// attributes shared by every IOD we write.
fn common_modules(ctx: &StudyContext<'_>, sop_class: &str, sop_instance: &str) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    let study = ctx.study;
    let patient = ctx.patient;
    put(
        &mut obj,
        tags::SPECIFIC_CHARACTER_SET,
        VR::CS,
        study.encoding.specific_character_set(),
    );
    put(&mut obj, tags::SOP_CLASS_UID, VR::UI, sop_class);
    put(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, sop_instance);
    put(
        &mut obj,
        tags::INSTANCE_CREATION_DATE,
        VR::DA,
        study.study_date.as_str(),
    );
    put(
        &mut obj,
        tags::INSTANCE_CREATION_TIME,
        VR::TM,
        study.study_time.as_str(),
    );
    // Patient module.
    put(
        &mut obj,
        tags::PATIENT_NAME,
        VR::PN,
        patient.name.to_dicom_pn(),
    );
    put(
        &mut obj,
        tags::PATIENT_ID,
        VR::LO,
        patient.patient_id.as_str(),
    );
    put(
        &mut obj,
        tags::ISSUER_OF_PATIENT_ID,
        VR::LO,
        patient.issuer.as_str(),
    );
    put(
        &mut obj,
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        patient.birth_date.format("%Y%m%d").to_string(),
    );
    put(
        &mut obj,
        tags::PATIENT_SEX,
        VR::CS,
        patient.sex.dicom_code(),
    );
    // General Study and Patient Study modules.
    put(
        &mut obj,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        study.study_instance_uid.as_str(),
    );
    put(
        &mut obj,
        tags::STUDY_DATE,
        VR::DA,
        study.study_date.as_str(),
    );
    put(
        &mut obj,
        tags::STUDY_TIME,
        VR::TM,
        study.study_time.as_str(),
    );
    put(
        &mut obj,
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        study.referring_physician.as_str(),
    );
    put(
        &mut obj,
        tags::STUDY_ID,
        VR::SH,
        study.accession_number.as_str(),
    );
    put(
        &mut obj,
        tags::ACCESSION_NUMBER,
        VR::SH,
        study.accession_number.as_str(),
    );
    put(
        &mut obj,
        tags::STUDY_DESCRIPTION,
        VR::LO,
        study.study_description.as_str(),
    );
    if let Ok(date) = chrono::NaiveDate::parse_from_str(&study.study_date, "%Y%m%d") {
        put(&mut obj, tags::PATIENT_AGE, VR::AS, patient.age_on(date));
    }
    // General Series module.
    put(&mut obj, tags::MODALITY, VR::CS, study.modality.code());
    put(
        &mut obj,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        study.series_instance_uid.as_str(),
    );
    put(
        &mut obj,
        tags::SERIES_NUMBER,
        VR::IS,
        ctx.series_number.to_string(),
    );
    put(
        &mut obj,
        tags::SERIES_DATE,
        VR::DA,
        study.study_date.as_str(),
    );
    put(
        &mut obj,
        tags::SERIES_TIME,
        VR::TM,
        study.study_time.as_str(),
    );
    put(
        &mut obj,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        ctx.series_description,
    );
    put(
        &mut obj,
        tags::BODY_PART_EXAMINED,
        VR::CS,
        study.body_part_examined.as_str(),
    );
    // General Equipment module.
    put(&mut obj, tags::MANUFACTURER, VR::LO, MANUFACTURER);
    put(&mut obj, tags::INSTITUTION_NAME, VR::LO, INSTITUTION);
    put(&mut obj, tags::STATION_NAME, VR::SH, "SYNTH01");
    put(
        &mut obj,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        "dicom-samples",
    );
    put(
        &mut obj,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        env!("CARGO_PKG_VERSION"),
    );
    // General Acquisition and General Image modules.
    put(&mut obj, tags::ACQUISITION_NUMBER, VR::IS, "1");
    put(
        &mut obj,
        tags::ACQUISITION_DATE,
        VR::DA,
        study.study_date.as_str(),
    );
    put(
        &mut obj,
        tags::ACQUISITION_TIME,
        VR::TM,
        study.study_time.as_str(),
    );
    put(
        &mut obj,
        tags::CONTENT_DATE,
        VR::DA,
        study.study_date.as_str(),
    );
    put(
        &mut obj,
        tags::CONTENT_TIME,
        VR::TM,
        study.study_time.as_str(),
    );
    put(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    put(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    obj
}

fn image_pixel_module(
    obj: &mut InMemDicomObject,
    rows: u32,
    columns: u32,
    bits_stored: u16,
    signed: bool,
    photometric: &str,
    pixels: Vec<u16>,
) {
    put(obj, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
    put(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric);
    put(obj, tags::ROWS, VR::US, rows as u16);
    put(obj, tags::COLUMNS, VR::US, columns as u16);
    put(obj, tags::BITS_ALLOCATED, VR::US, 16u16);
    put(obj, tags::BITS_STORED, VR::US, bits_stored);
    put(obj, tags::HIGH_BIT, VR::US, bits_stored - 1);
    put(obj, tags::PIXEL_REPRESENTATION, VR::US, u16::from(signed));
    put(
        obj,
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.into()),
    );
}

/// A CT Image Storage instance for one slice.
pub fn ct_slice_object(ctx: &StudyContext<'_>, slice: &CtSlice<'_>) -> InMemDicomObject {
    let g = slice.geometry;
    let mut obj = common_modules(ctx, uids::CT_IMAGE_STORAGE, slice.sop_instance_uid);
    let position = g.slice_position(slice.index);
    put(&mut obj, tags::PATIENT_POSITION, VR::CS, "HFS");
    put(
        &mut obj,
        tags::IMAGE_TYPE,
        VR::CS,
        "ORIGINAL\\PRIMARY\\AXIAL",
    );
    put(
        &mut obj,
        tags::INSTANCE_NUMBER,
        VR::IS,
        (slice.index + 1).to_string(),
    );
    // Frame of Reference module.
    put(
        &mut obj,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        slice.frame_of_reference_uid,
    );
    put_empty(&mut obj, tags::POSITION_REFERENCE_INDICATOR, VR::LO);
    // Image Plane module.
    put(
        &mut obj,
        tags::PIXEL_SPACING,
        VR::DS,
        ds_multi(&[g.pixel_spacing_mm, g.pixel_spacing_mm]),
    );
    put(
        &mut obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        "1\\0\\0\\0\\1\\0",
    );
    put(
        &mut obj,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        ds_multi(&position),
    );
    put(
        &mut obj,
        tags::SLICE_THICKNESS,
        VR::DS,
        ds(g.slice_thickness_mm),
    );
    put(
        &mut obj,
        tags::SPACING_BETWEEN_SLICES,
        VR::DS,
        ds(g.slice_thickness_mm),
    );
    put(&mut obj, tags::SLICE_LOCATION, VR::DS, ds(position[2]));
    // CT Image module.
    put(
        &mut obj,
        tags::RESCALE_INTERCEPT,
        VR::DS,
        ds(RESCALE_INTERCEPT),
    );
    put(&mut obj, tags::RESCALE_SLOPE, VR::DS, ds(RESCALE_SLOPE));
    put(&mut obj, tags::RESCALE_TYPE, VR::LO, "HU");
    put(&mut obj, tags::KVP, VR::DS, "120");
    put(&mut obj, tags::CONVOLUTION_KERNEL, VR::SH, "STANDARD");
    put(
        &mut obj,
        tags::RECONSTRUCTION_DIAMETER,
        VR::DS,
        ds(g.pixel_spacing_mm * f64::from(g.columns)),
    );
    put(&mut obj, tags::GANTRY_DETECTOR_TILT, VR::DS, "0");
    // VOI LUT module: mediastinal and lung windows.
    let windows = crate::ct::CtPhantom::windows();
    put(
        &mut obj,
        tags::WINDOW_CENTER,
        VR::DS,
        ds_multi(&windows.map(|w| w.0)),
    );
    put(
        &mut obj,
        tags::WINDOW_WIDTH,
        VR::DS,
        ds_multi(&windows.map(|w| w.1)),
    );
    put(
        &mut obj,
        tags::WINDOW_CENTER_WIDTH_EXPLANATION,
        VR::LO,
        windows.map(|w| w.2).join("\\"),
    );
    // Signed 16-bit pixels travel as OW words; the bit pattern is what PixelRepresentation 1 means.
    let words: Vec<u16> = slice.stored.iter().map(|v| *v as u16).collect();
    image_pixel_module(&mut obj, g.rows, g.columns, 16, true, "MONOCHROME2", words);
    obj
}

/// A chest radiograph as Digital X-Ray (for presentation) or Computed Radiography.
pub fn radiograph_object(ctx: &StudyContext<'_>, image: &Radiograph<'_>) -> InMemDicomObject {
    let sop_class = match ctx.study.modality {
        Modality::Dx => uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
        _ => uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
    };
    let mut obj = common_modules(ctx, sop_class, image.sop_instance_uid);
    let photometric = if image.monochrome1 {
        "MONOCHROME1"
    } else {
        "MONOCHROME2"
    };
    put(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    // PA chest: rows run towards the patient's left, columns towards the feet.
    put(&mut obj, tags::PATIENT_ORIENTATION, VR::CS, "L\\F");
    put(&mut obj, tags::VIEW_POSITION, VR::CS, "PA");
    let spacing = ds_multi(&[image.pixel_spacing_mm, image.pixel_spacing_mm]);
    put(
        &mut obj,
        tags::IMAGER_PIXEL_SPACING,
        VR::DS,
        spacing.as_str(),
    );
    put(&mut obj, tags::KVP, VR::DS, "125");
    put(
        &mut obj,
        tags::WINDOW_CENTER,
        VR::DS,
        ds(image.window_center),
    );
    put(&mut obj, tags::WINDOW_WIDTH, VR::DS, ds(image.window_width));
    match ctx.study.modality {
        Modality::Dx => {
            put(&mut obj, tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY");
            // DX Series module.
            put(
                &mut obj,
                tags::PRESENTATION_INTENT_TYPE,
                VR::CS,
                "FOR PRESENTATION",
            );
            // DX Anatomy Imaged module.
            put(&mut obj, tags::IMAGE_LATERALITY, VR::CS, "U");
            put_sequence(
                &mut obj,
                tags::ANATOMIC_REGION_SEQUENCE,
                vec![code_item("51185008", "SCT", "Chest")],
            );
            // DX Image module.
            put(&mut obj, tags::PIXEL_INTENSITY_RELATIONSHIP, VR::CS, "LOG");
            put(
                &mut obj,
                tags::PIXEL_INTENSITY_RELATIONSHIP_SIGN,
                VR::SS,
                1i16,
            );
            put(&mut obj, tags::RESCALE_INTERCEPT, VR::DS, "0");
            put(&mut obj, tags::RESCALE_SLOPE, VR::DS, "1");
            put(&mut obj, tags::RESCALE_TYPE, VR::LO, "US");
            let shape = if image.monochrome1 {
                "INVERSE"
            } else {
                "IDENTITY"
            };
            put(&mut obj, tags::PRESENTATION_LUT_SHAPE, VR::CS, shape);
            // DX Detector module.
            put(&mut obj, tags::DETECTOR_TYPE, VR::CS, "SCINTILLATOR");
            put(&mut obj, tags::PIXEL_SPACING, VR::DS, spacing.as_str());
            put(
                &mut obj,
                tags::PIXEL_SPACING_CALIBRATION_TYPE,
                VR::CS,
                "GEOMETRY",
            );
            put(
                &mut obj,
                tags::PIXEL_SPACING_CALIBRATION_DESCRIPTION,
                VR::LO,
                "Synthetic detector, no magnification",
            );
            // Acquisition Context module (type 2: present, may be empty).
            put_sequence(&mut obj, tags::ACQUISITION_CONTEXT_SEQUENCE, Vec::new());
            // DX Positioning module.
            put_empty(&mut obj, tags::POSITIONER_TYPE, VR::CS);
            put_sequence(
                &mut obj,
                tags::VIEW_CODE_SEQUENCE,
                vec![code_item("399348003", "SCT", "postero-anterior")],
            );
        }
        _ => {
            put(&mut obj, tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY");
            put(&mut obj, tags::PLATE_ID, VR::LO, "SYNTH-PLATE");
        }
    }
    image_pixel_module(
        &mut obj,
        image.rows,
        image.columns,
        image.bits_stored,
        false,
        photometric,
        image.pixels.to_vec(),
    );
    obj
}

/// Writes `obj` as a Part 10 file in explicit VR little endian.
pub fn write_part10(obj: InMemDicomObject, path: &Path) -> Result<(), WriteError> {
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                .implementation_version_name(IMPLEMENTATION_VERSION_NAME),
        )
        .map_err(|e| WriteError::Meta(Box::new(e)))?;
    file.write_to_file(path)
        .map_err(|source| WriteError::Write {
            path: path.display().to_string(),
            source: Box::new(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(ds(0.75), "0.75");
        assert_eq!(ds(-1024.0), "-1024");
        assert_eq!(ds(-0.0), "0");
        for v in [123456.789012345, -0.000001234567, 1e20, -187.62499999] {
            assert!(ds(v).len() <= 16, "{}", ds(v));
            let back: f64 = ds(v).parse().unwrap();
            assert!(
                (back - v).abs() <= v.abs() * 1e-3 + 1e-6,
                "{v} -> {}",
                ds(v)
            );
        }
    }
}
