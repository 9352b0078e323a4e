//! The ground-truth sidecar written beside every study (`ground_truth.json`), and the
//! manifest of a whole generated set (`manifest.json`). Models train on these and tests
//! score against them, so every position is given both in millimetres and in pixels.

use serde::{Deserialize, Serialize};

use crate::patient::{Patient, TextEncoding};

/// File name of the per-study sidecar.
pub const GROUND_TRUTH_FILE: &str = "ground_truth.json";
/// File name of the set's manifest at the output root.
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Modality {
    #[serde(rename = "CT")]
    Ct,
    #[serde(rename = "DX")]
    Dx,
    #[serde(rename = "CR")]
    Cr,
}

impl Modality {
    pub fn code(self) -> &'static str {
        match self {
            Modality::Ct => "CT",
            Modality::Dx => "DX",
            Modality::Cr => "CR",
        }
    }
}

/// What the generator wrote for one study: the facts the EMR export and the tests need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyRecord {
    pub study_instance_uid: String,
    pub accession_number: String,
    /// Index into [`Manifest::patients`].
    pub patient_index: usize,
    pub modality: Modality,
    /// DICOM DA, `YYYYMMDD`.
    pub study_date: String,
    /// DICOM TM, `HHMMSS`.
    pub study_time: String,
    pub study_description: String,
    pub body_part_examined: String,
    /// DICOM PN of the referring physician.
    pub referring_physician: String,
    pub encoding: TextEncoding,
    /// Directory of the study, relative to the output root.
    pub directory: String,
    pub series_instance_uid: String,
    pub instance_count: usize,
}

/// `manifest.json`: the whole set, enough to rebuild the EMR export or to score a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub generator: String,
    pub seed: u64,
    pub patients: Vec<Patient>,
    pub studies: Vec<StudyRecord>,
}

/// The sidecar of one study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyGroundTruth {
    pub study_instance_uid: String,
    pub accession_number: String,
    pub patient_id: String,
    pub modality: Modality,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct: Option<CtGroundTruth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub radiograph: Option<RadiographGroundTruth>,
}

/// Geometry of a CT series and its nodules, in the patient coordinate system (LPS, mm).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtGroundTruth {
    pub series_instance_uid: String,
    pub frame_of_reference_uid: String,
    pub rows: u32,
    pub columns: u32,
    /// PixelSpacing as DICOM orders it: row spacing, then column spacing (mm).
    pub pixel_spacing_mm: [f64; 2],
    pub slice_thickness_mm: f64,
    pub spacing_between_slices_mm: f64,
    pub image_orientation_patient: [f64; 6],
    /// ImagePositionPatient of every slice, in slice order (index = InstanceNumber - 1).
    pub slice_positions_mm: Vec<[f64; 3]>,
    /// SOP Instance UID of every slice, in the same order.
    pub sop_instance_uids: Vec<String>,
    pub nodules: Vec<NoduleTruth>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoduleKind {
    Solid,
    PartSolid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Left,
    Right,
}

/// One lung nodule: an ellipsoid (a sphere when its semi-axes are equal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoduleTruth {
    pub id: u32,
    pub label: String,
    pub kind: NoduleKind,
    pub spherical: bool,
    pub side: Side,
    /// Centre in patient coordinates (mm).
    pub center_mm: [f64; 3],
    /// Semi-axes (mm) along the ellipsoid's own axes, before rotation.
    pub semi_axes_mm: [f64; 3],
    /// Rotation of the ellipsoid about the patient's z axis (degrees).
    pub rotation_deg: f64,
    /// Longest diameter (mm): what a radiologist would measure.
    pub diameter_mm: f64,
    /// Diameter of the solid core of a part-solid nodule (mm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solid_core_diameter_mm: Option<f64>,
    /// Centre in voxel coordinates: column, row, slice index (fractional).
    pub center_voxel: [f64; 3],
    /// First and last slice index the nodule touches.
    pub slice_range: [usize; 2],
    /// Attenuation of the nodule's solid part (HU).
    pub solid_hu: f64,
}

/// Findings of one radiograph, positioned on the detector plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RadiographGroundTruth {
    pub sop_instance_uid: String,
    pub rows: u32,
    pub columns: u32,
    /// ImagerPixelSpacing: row spacing, then column spacing (mm).
    pub imager_pixel_spacing_mm: [f64; 2],
    pub photometric_interpretation: String,
    /// True when no finding was drawn.
    pub normal: bool,
    pub findings: Vec<XrayFinding>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XrayLabel {
    Nodule,
    Consolidation,
    PleuralEffusion,
    Cardiomegaly,
}

impl XrayLabel {
    pub const ALL: [XrayLabel; 4] = [
        XrayLabel::Nodule,
        XrayLabel::Consolidation,
        XrayLabel::PleuralEffusion,
        XrayLabel::Cardiomegaly,
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XrayFinding {
    pub label: XrayLabel,
    /// Patient side, for lateralised findings (the image shows the patient's right on its left).
    pub side: Option<Side>,
    /// Centre on the image: column, row (pixels).
    pub center_px: [f64; 2],
    /// Centre on the detector from the image's top-left corner: x along columns, y along rows (mm).
    pub center_mm: [f64; 2],
    /// Characteristic size (mm): diameter of a nodule, extent of an opacity or effusion,
    /// width of the cardiac silhouette.
    pub size_mm: f64,
    /// Bounding box: first column, first row, last column, last row (pixels, inclusive).
    pub bbox_px: [u32; 4],
    /// Cardiothoracic ratio, for cardiomegaly (and measured on every study's heart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cardiothoracic_ratio: Option<f64>,
}
