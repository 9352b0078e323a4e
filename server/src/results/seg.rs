//! The DICOM SEG writer: a binary Segmentation (PS3.3 A.51) with one segment per finding
//! class, one frame per (segment, source image) whose mask is not empty, laid out as
//! highdicom lays out its segmentations (frames sorted by segment, then by position along the
//! slice normal; dimensions ReferencedSegmentNumber and ImagePositionPatient), so that
//! viewers and libraries that read highdicom's SEGs read ours.
//!
//! Geometry is copied from the source images — a SEG frame is a source slice's grid — so
//! every source a frame lies on needs ImagePositionPatient, ImageOrientationPatient,
//! PixelSpacing and FrameOfReferenceUID; projection radiographs have none and cannot be
//! segmented in this form.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::{
    AlgorithmInfo, CodedConcept, NewInstance, ResultError, SourceIds, SourceImage, check_algorithm,
    check_concept, check_instance, check_uid, code_item, concept_item, derived_uid, ds,
    new_result_object, put_empty, put_equipment, put_seq, put_str, source_ids, source_str,
};

/// SOP class of the SEG we write: Segmentation Storage.
pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// Largest pixel count of one SEG: Pixel Data is a 32-bit length in bytes, 8 pixels a byte.
const MAX_TOTAL_PIXELS: u64 = (u32::MAX as u64 - 1) * 8;

/// One segment of the SEG (a finding class of a segmentation model).
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// 1-based; segments are given in order 1, 2, … n.
    pub number: u16,
    pub label: String,
    pub property_type: CodedConcept,
    pub property_category: CodedConcept,
    pub tracking_id: String,
    pub tracking_uid: String,
}

/// One segment's mask on one source image.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentFrame {
    pub segment_number: u16,
    /// index into `sources`
    pub source_index: usize,
    /// rows × columns of that source image, row-major
    pub mask: Vec<bool>,
}

/// A source image's grid, as a SEG frame on it needs.
#[derive(Debug, Clone)]
struct Geometry {
    rows: u16,
    columns: u16,
    position: [f64; 3],
    orientation: [f64; 6],
    pixel_spacing: [f64; 2],
    slice_thickness: Option<f64>,
    frame_of_reference_uid: String,
}

/// Builds a binary Segmentation (1.2.840.10008.5.1.4.1.1.66.4) and returns Part 10 bytes.
///
/// Frames whose mask is empty are skipped. Errors:
/// - [`ResultError::NoSources`] when `sources` is empty;
/// - [`ResultError::Source`] when a source a frame lies on has no Rows/Columns,
///   ImagePositionPatient, ImageOrientationPatient, PixelSpacing or FrameOfReferenceUID, is
///   multi-frame, or differs from the other frames' sources in frame of reference, study,
///   grid size, orientation or pixel spacing (one SEG holds one grid);
/// - [`ResultError::Mask`] (index into `frames`) when a frame names an unknown segment or
///   source, its mask length is not Rows×Columns, or it repeats a (segment, source) pair —
///   and, with index `frames.len()`, when no frame has any pixel set: a SEG needs at least
///   one frame;
/// - [`ResultError::Encode`] for segments that are not numbered 1..=n in order or have bad
///   codes, labels or UIDs, for bad `instance`/`algorithm` values, or a failed encoding.
pub fn build_seg(
    sources: &[SourceImage],
    algorithm: &AlgorithmInfo,
    segments: &[Segment],
    frames: &[SegmentFrame],
    instance: &NewInstance,
) -> Result<Vec<u8>, ResultError> {
    let ids = source_ids(sources)?;
    check_instance(instance)?;
    check_algorithm(algorithm)?;
    check_segments(segments)?;

    // Validate every frame against its segment and source before anything is built.
    let mut geometries: Vec<Option<Geometry>> = vec![None; sources.len()];
    let mut seen: Vec<(u16, usize)> = Vec::new();
    for (index, frame) in frames.iter().enumerate() {
        let mask_error = |reason: String| ResultError::Mask { index, reason };
        if frame.segment_number == 0 || usize::from(frame.segment_number) > segments.len() {
            return Err(mask_error(format!(
                "segment {} does not exist (segments are 1..={})",
                frame.segment_number,
                segments.len()
            )));
        }
        if frame.source_index >= sources.len() {
            return Err(mask_error(format!(
                "source index {} is out of range ({} sources)",
                frame.source_index,
                sources.len()
            )));
        }
        if seen.contains(&(frame.segment_number, frame.source_index)) {
            return Err(mask_error(format!(
                "segment {} on source {} is given twice",
                frame.segment_number, frame.source_index
            )));
        }
        seen.push((frame.segment_number, frame.source_index));
        let geometry = match &geometries[frame.source_index] {
            Some(geometry) => geometry.clone(),
            None => {
                let geometry =
                    geometry(&sources[frame.source_index].dataset).map_err(|reason| {
                        ResultError::Source {
                            index: frame.source_index,
                            reason,
                        }
                    })?;
                geometries[frame.source_index] = Some(geometry.clone());
                geometry
            }
        };
        let expected = usize::from(geometry.rows) * usize::from(geometry.columns);
        if frame.mask.len() != expected {
            return Err(mask_error(format!(
                "mask has {} pixels, source {} has {}×{} = {expected}",
                frame.mask.len(),
                frame.source_index,
                geometry.rows,
                geometry.columns
            )));
        }
    }

    // The frames written: non-empty masks only.
    let kept: Vec<&SegmentFrame> = frames
        .iter()
        .filter(|f| f.mask.iter().any(|&p| p))
        .collect();
    if kept.is_empty() {
        return Err(ResultError::Mask {
            index: frames.len(),
            reason: "no mask has any pixel set: a SEG needs at least one frame".into(),
        });
    }
    let grid = common_grid(&kept, &geometries, &ids)?;
    let total_pixels = kept.len() as u64 * u64::from(grid.rows) * u64::from(grid.columns);
    if total_pixels > MAX_TOTAL_PIXELS {
        return Err(ResultError::Encode(format!(
            "{total_pixels} pixels do not fit one Pixel Data element"
        )));
    }

    // Position index: rank of each distinct plane position along the slice normal, as
    // highdicom's second dimension (ImagePositionPatient) counts them.
    let normal = cross(&grid.orientation);
    let mut positions: Vec<(f64, [f64; 3])> = Vec::new();
    for frame in &kept {
        if let Some(g) = &geometries[frame.source_index]
            && !positions.iter().any(|(_, p)| same_position(p, &g.position))
        {
            positions.push((dot(&normal, &g.position), g.position));
        }
    }
    positions.sort_by(|a, b| a.0.total_cmp(&b.0));
    let position_index = |p: &[f64; 3]| {
        positions
            .iter()
            .position(|(_, q)| same_position(p, q))
            .map_or(1, |i| i + 1)
    };

    // Frame order: by segment, then by position.
    let mut ordered: Vec<(&SegmentFrame, &Geometry, usize)> = kept
        .iter()
        .filter_map(|frame| {
            let g = geometries[frame.source_index].as_ref()?;
            Some((*frame, g, position_index(&g.position)))
        })
        .collect();
    ordered.sort_by_key(|(frame, _, position)| (frame.segment_number, *position));

    let first = &sources[0].dataset;
    // General Series + Segmentation Series
    let mut obj = new_result_object(
        first,
        SEGMENTATION_STORAGE,
        "SEG",
        &format!("{} segmentation", algorithm.name),
        algorithm,
        instance,
    );

    // Frame of Reference
    put_str(
        &mut obj,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        &grid.frame_of_reference_uid,
    );
    match first.get(tags::POSITION_REFERENCE_INDICATOR) {
        Some(element) => {
            obj.put(element.clone());
        }
        None => put_empty(&mut obj, tags::POSITION_REFERENCE_INDICATOR, VR::LO),
    }

    // General Equipment + Enhanced General Equipment
    put_equipment(&mut obj, algorithm);

    // General Image + Segmentation Image
    put_str(
        &mut obj,
        tags::INSTANCE_NUMBER,
        VR::IS,
        &instance.instance_number.to_string(),
    );
    put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &instance.content_date);
    put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &instance.content_time);
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY");
    put_str(
        &mut obj,
        tags::CONTENT_LABEL,
        VR::CS,
        &content_label(&algorithm.name),
    );
    put_str(
        &mut obj,
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        &format!("{} {}", algorithm.name, algorithm.version),
    );
    put_str(
        &mut obj,
        tags::CONTENT_CREATOR_NAME,
        VR::PN,
        // A device, not a person: the name as the family-name component.
        &format!("{}^", super::MANUFACTURER),
    );
    put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_str(&mut obj, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_str(
        &mut obj,
        tags::SEGMENTS_OVERLAP,
        VR::CS,
        if overlap(&ordered) { "YES" } else { "NO" },
    );
    put_seq(
        &mut obj,
        tags::SEGMENT_SEQUENCE,
        segments
            .iter()
            .map(|s| segment_item(s, algorithm))
            .collect(),
    );

    // Image Pixel: 1 bit per pixel
    put_u16(&mut obj, tags::SAMPLES_PER_PIXEL, 1);
    put_str(
        &mut obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put_u16(&mut obj, tags::ROWS, grid.rows);
    put_u16(&mut obj, tags::COLUMNS, grid.columns);
    put_u16(&mut obj, tags::BITS_ALLOCATED, 1);
    put_u16(&mut obj, tags::BITS_STORED, 1);
    put_u16(&mut obj, tags::HIGH_BIT, 0);
    put_u16(&mut obj, tags::PIXEL_REPRESENTATION, 0);

    // Multi-frame Dimension: segment number, then plane position (as highdicom).
    let dimension_organization_uid =
        derived_uid(&["radserve-seg-dimensions", &instance.sop_instance_uid]);
    let mut organization = InMemDicomObject::new_empty();
    put_str(
        &mut organization,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        &dimension_organization_uid,
    );
    put_seq(
        &mut obj,
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![organization],
    );
    put_str(&mut obj, tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D");
    put_seq(
        &mut obj,
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            dimension(
                &dimension_organization_uid,
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "Segment Number",
            ),
            dimension(
                &dimension_organization_uid,
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "Image Position Patient",
            ),
        ],
    );

    // Multi-frame Functional Groups
    put_str(
        &mut obj,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &ordered.len().to_string(),
    );
    put_seq(
        &mut obj,
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared_groups(&grid)],
    );
    let per_frame = ordered
        .iter()
        .map(|(frame, g, position)| per_frame_groups(frame, g, *position, &ids[frame.source_index]))
        .collect();
    put_seq(
        &mut obj,
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        per_frame,
    );

    // Common Instance Reference: every source, by series.
    put_seq(
        &mut obj,
        tags::REFERENCED_SERIES_SEQUENCE,
        referenced_series(&ids),
    );

    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(
            pack_bits(ordered.iter().map(|(frame, _, _)| frame.mask.as_slice())).into(),
        ),
    ));

    super::part10_bytes(obj)
}

/// Segments must be numbered 1..=n in the order given, with codes and identifiers that fit
/// their attributes.
fn check_segments(segments: &[Segment]) -> Result<(), ResultError> {
    if segments.is_empty() {
        return Err(ResultError::Encode(
            "a SEG needs at least one segment".into(),
        ));
    }
    for (i, segment) in segments.iter().enumerate() {
        let bad = |reason: String| ResultError::Encode(format!("segment {}: {reason}", i + 1));
        if usize::from(segment.number) != i + 1 {
            return Err(bad(format!(
                "is numbered {}; segments must be numbered 1..={} in order",
                segment.number,
                segments.len()
            )));
        }
        check_concept(&segment.property_type, "segmented property type").map_err(bad)?;
        check_concept(&segment.property_category, "segmented property category").map_err(bad)?;
        check_uid(&segment.tracking_uid).map_err(|r| bad(format!("tracking UID: {r}")))?;
        for (what, value) in [
            ("label", &segment.label),
            ("tracking ID", &segment.tracking_id),
        ] {
            if value.trim().is_empty() || value.chars().count() > 64 || value.contains('\\') {
                return Err(bad(format!(
                    "{what} `{value}` must have 1 to 64 characters and no backslash"
                )));
            }
        }
    }
    Ok(())
}

/// Reads the grid of one source image; the reason names what is missing.
fn geometry(dataset: &InMemDicomObject) -> Result<Geometry, String> {
    let floats = |tag: Tag, name: &str, count: usize| -> Result<Vec<f64>, String> {
        let element = dataset.get(tag).ok_or_else(|| format!("has no {name}"))?;
        let values = element
            .to_multi_float64()
            .map_err(|e| format!("{name} is not numeric: {e}"))?;
        if values.len() != count || values.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "{name} must have {count} finite values, has {values:?}"
            ));
        }
        Ok(values)
    };
    let size = |tag: Tag, name: &str| -> Result<u16, String> {
        let value: u16 = dataset
            .get(tag)
            .ok_or_else(|| format!("has no {name}"))?
            .to_int()
            .map_err(|e| format!("{name} is not a number: {e}"))?;
        if value == 0 {
            return Err(format!("{name} is 0"));
        }
        Ok(value)
    };
    if let Some(frames) = dataset.get(tags::NUMBER_OF_FRAMES) {
        let frames: i64 = frames.to_int().unwrap_or(0);
        if frames > 1 {
            return Err(format!(
                "is multi-frame ({frames} frames); single-frame sources only"
            ));
        }
    }
    let rows = size(tags::ROWS, "Rows")?;
    let columns = size(tags::COLUMNS, "Columns")?;
    let position = floats(tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient", 3)?;
    let orientation = floats(
        tags::IMAGE_ORIENTATION_PATIENT,
        "ImageOrientationPatient",
        6,
    )?;
    let spacing = floats(tags::PIXEL_SPACING, "PixelSpacing", 2)?;
    if spacing.iter().any(|s| *s <= 0.0) {
        return Err(format!("PixelSpacing {spacing:?} must be positive"));
    }
    let frame_of_reference_uid = source_str(dataset, tags::FRAME_OF_REFERENCE_UID)
        .ok_or_else(|| "has no FrameOfReferenceUID".to_string())?;
    check_uid(&frame_of_reference_uid).map_err(|r| format!("FrameOfReferenceUID: {r}"))?;
    let slice_thickness = dataset
        .get(tags::SLICE_THICKNESS)
        .and_then(|e| e.to_float64().ok())
        .filter(|t| t.is_finite() && *t > 0.0);
    Ok(Geometry {
        rows,
        columns,
        position: [position[0], position[1], position[2]],
        orientation: [
            orientation[0],
            orientation[1],
            orientation[2],
            orientation[3],
            orientation[4],
            orientation[5],
        ],
        pixel_spacing: [spacing[0], spacing[1]],
        slice_thickness,
        frame_of_reference_uid,
    })
}

/// The one grid all frames share (Rows/Columns, orientation, spacing, thickness, frame of
/// reference), taken from the first frame's source; a source that differs is an error.
fn common_grid(
    kept: &[&SegmentFrame],
    geometries: &[Option<Geometry>],
    ids: &[SourceIds],
) -> Result<Geometry, ResultError> {
    let geometry_of = |index: usize| {
        geometries[index]
            .clone()
            .ok_or_else(|| ResultError::Source {
                index,
                reason: "has no geometry".into(),
            })
    };
    let reference_index = kept[0].source_index;
    let grid = geometry_of(reference_index)?;
    let study = &ids[0].study_instance_uid;
    for frame in kept {
        let index = frame.source_index;
        let g = geometry_of(index)?;
        let differs = |what: &str| ResultError::Source {
            index,
            reason: format!(
                "{what} differs from source {reference_index}'s; one SEG holds one grid"
            ),
        };
        if &ids[index].study_instance_uid != study {
            return Err(ResultError::Source {
                index,
                reason: "belongs to another study than source 0".into(),
            });
        }
        if g.frame_of_reference_uid != grid.frame_of_reference_uid {
            return Err(differs("FrameOfReferenceUID"));
        }
        if (g.rows, g.columns) != (grid.rows, grid.columns) {
            return Err(differs("Rows×Columns"));
        }
        if g.orientation
            .iter()
            .zip(&grid.orientation)
            .any(|(a, b)| (a - b).abs() > 1e-4)
        {
            return Err(differs("ImageOrientationPatient"));
        }
        if g.pixel_spacing
            .iter()
            .zip(&grid.pixel_spacing)
            .any(|(a, b)| (a - b).abs() > 1e-4)
        {
            return Err(differs("PixelSpacing"));
        }
    }
    Ok(grid)
}

fn cross(orientation: &[f64; 6]) -> [f64; 3] {
    let (r, c) = (&orientation[..3], &orientation[3..]);
    [
        r[1] * c[2] - r[2] * c[1],
        r[2] * c[0] - r[0] * c[2],
        r[0] * c[1] - r[1] * c[0],
    ]
}

fn dot(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Positions closer than a micrometre are the same plane.
fn same_position(a: &[f64; 3], b: &[f64; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3)
}

/// Whether two segments claim the same pixel of the same source image.
fn overlap(ordered: &[(&SegmentFrame, &Geometry, usize)]) -> bool {
    ordered.iter().enumerate().any(|(i, (a, _, _))| {
        ordered[i + 1..].iter().any(|(b, _, _)| {
            a.source_index == b.source_index
                && a.segment_number != b.segment_number
                && a.mask.iter().zip(&b.mask).any(|(x, y)| *x && *y)
        })
    })
}

/// ContentLabel is a CS: at most 16 characters of upper case letters, digits, space and `_`.
fn content_label(name: &str) -> String {
    let label: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_uppercase();
            if c.is_ascii_uppercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .take(16)
        .collect();
    if label.is_empty() {
        "SEGMENTATION".to_string()
    } else {
        label
    }
}

fn put_u16(obj: &mut InMemDicomObject, tag: Tag, value: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

fn segment_item(segment: &Segment, algorithm: &AlgorithmInfo) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_u16(&mut item, tags::SEGMENT_NUMBER, segment.number);
    put_str(&mut item, tags::SEGMENT_LABEL, VR::LO, &segment.label);
    put_seq(
        &mut item,
        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
        vec![concept_item(&segment.property_category)],
    );
    put_seq(
        &mut item,
        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
        vec![concept_item(&segment.property_type)],
    );
    put_str(&mut item, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
    put_str(
        &mut item,
        tags::SEGMENT_ALGORITHM_NAME,
        VR::LO,
        &algorithm.name,
    );
    // Segmentation Algorithm Identification: the algorithm family, name, version, and the
    // parameters a reader needs to reproduce the mask (weights hash, device).
    let mut identification = InMemDicomObject::new_empty();
    put_seq(
        &mut identification,
        tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
        vec![code_item("123110", "DCM", "Artificial Intelligence")],
    );
    put_str(
        &mut identification,
        tags::ALGORITHM_NAME,
        VR::LO,
        &algorithm.name,
    );
    put_str(
        &mut identification,
        tags::ALGORITHM_VERSION,
        VR::LO,
        &algorithm.version,
    );
    put_str(
        &mut identification,
        tags::ALGORITHM_PARAMETERS,
        VR::LT,
        &format!(
            "weights_sha256={} device={}",
            algorithm.weights_sha256, algorithm.device
        ),
    );
    put_seq(
        &mut item,
        tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
        vec![identification],
    );
    put_str(&mut item, tags::TRACKING_ID, VR::UT, &segment.tracking_id);
    put_str(&mut item, tags::TRACKING_UID, VR::UI, &segment.tracking_uid);
    item
}

fn dimension(organization: &str, index: Tag, group: Tag, label: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(
        &mut item,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        organization,
    );
    item.put(DataElement::new(
        tags::DIMENSION_INDEX_POINTER,
        VR::AT,
        PrimitiveValue::Tags(vec![index].into()),
    ));
    item.put(DataElement::new(
        tags::FUNCTIONAL_GROUP_POINTER,
        VR::AT,
        PrimitiveValue::Tags(vec![group].into()),
    ));
    put_str(&mut item, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
    item
}

fn ds_values(values: &[f64]) -> String {
    values.iter().map(|v| ds(*v)).collect::<Vec<_>>().join("\\")
}

/// Shared functional groups: Pixel Measures and Plane Orientation, equal for every frame.
fn shared_groups(grid: &Geometry) -> InMemDicomObject {
    let mut measures = InMemDicomObject::new_empty();
    put_str(
        &mut measures,
        tags::PIXEL_SPACING,
        VR::DS,
        &ds_values(&grid.pixel_spacing),
    );
    if let Some(thickness) = grid.slice_thickness {
        put_str(&mut measures, tags::SLICE_THICKNESS, VR::DS, &ds(thickness));
    }
    let mut orientation = InMemDicomObject::new_empty();
    put_str(
        &mut orientation,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        &ds_values(&grid.orientation),
    );
    let mut shared = InMemDicomObject::new_empty();
    put_seq(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
    put_seq(
        &mut shared,
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![orientation],
    );
    shared
}

/// Per-frame functional groups: Frame Content (dimension index values), Plane Position,
/// Derivation Image (the source slice) and Segment Identification.
fn per_frame_groups(
    frame: &SegmentFrame,
    geometry: &Geometry,
    position_index: usize,
    source: &SourceIds,
) -> InMemDicomObject {
    let mut content = InMemDicomObject::new_empty();
    content.put(DataElement::new(
        tags::DIMENSION_INDEX_VALUES,
        VR::UL,
        PrimitiveValue::U32(
            vec![
                u32::from(frame.segment_number),
                u32::try_from(position_index).unwrap_or(u32::MAX),
            ]
            .into(),
        ),
    ));
    let mut position = InMemDicomObject::new_empty();
    put_str(
        &mut position,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        &ds_values(&geometry.position),
    );
    let mut source_image = InMemDicomObject::new_empty();
    put_str(
        &mut source_image,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &source.sop_class_uid,
    );
    put_str(
        &mut source_image,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &source.sop_instance_uid,
    );
    put_seq(
        &mut source_image,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code_item(
            "121322",
            "DCM",
            "Source image for image processing operation",
        )],
    );
    // The mask lies on the source's own pixel grid (readers such as highdicom index frames
    // by source image only when this says so).
    put_str(
        &mut source_image,
        tags::SPATIAL_LOCATIONS_PRESERVED,
        VR::CS,
        "YES",
    );
    let mut derivation = InMemDicomObject::new_empty();
    put_seq(
        &mut derivation,
        tags::DERIVATION_CODE_SEQUENCE,
        vec![code_item("113076", "DCM", "Segmentation")],
    );
    put_seq(
        &mut derivation,
        tags::SOURCE_IMAGE_SEQUENCE,
        vec![source_image],
    );
    let mut identification = InMemDicomObject::new_empty();
    put_u16(
        &mut identification,
        tags::REFERENCED_SEGMENT_NUMBER,
        frame.segment_number,
    );

    let mut groups = InMemDicomObject::new_empty();
    put_seq(&mut groups, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
    put_seq(&mut groups, tags::PLANE_POSITION_SEQUENCE, vec![position]);
    put_seq(
        &mut groups,
        tags::DERIVATION_IMAGE_SEQUENCE,
        vec![derivation],
    );
    put_seq(
        &mut groups,
        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
        vec![identification],
    );
    groups
}

/// Referenced Series Sequence (Common Instance Reference): the source images by series.
fn referenced_series(ids: &[SourceIds]) -> Vec<InMemDicomObject> {
    let mut series: Vec<(&str, Vec<&SourceIds>)> = Vec::new();
    for id in ids {
        match series
            .iter_mut()
            .find(|(uid, _)| *uid == id.series_instance_uid)
        {
            Some((_, members)) => {
                if !members
                    .iter()
                    .any(|m| m.sop_instance_uid == id.sop_instance_uid)
                {
                    members.push(id);
                }
            }
            None => series.push((&id.series_instance_uid, vec![id])),
        }
    }
    series
        .into_iter()
        .map(|(uid, members)| {
            let mut item = InMemDicomObject::new_empty();
            put_str(&mut item, tags::SERIES_INSTANCE_UID, VR::UI, uid);
            let instances = members
                .iter()
                .map(|id| {
                    let mut instance = InMemDicomObject::new_empty();
                    put_str(
                        &mut instance,
                        tags::REFERENCED_SOP_CLASS_UID,
                        VR::UI,
                        &id.sop_class_uid,
                    );
                    put_str(
                        &mut instance,
                        tags::REFERENCED_SOP_INSTANCE_UID,
                        VR::UI,
                        &id.sop_instance_uid,
                    );
                    instance
                })
                .collect();
            put_seq(&mut item, tags::REFERENCED_INSTANCE_SEQUENCE, instances);
            item
        })
        .collect()
}

/// Packs the frames' pixels one bit each, least significant bit first, frames one after the
/// other with no padding between them (PS3.5 §8.1.1); the whole is padded to an even length.
fn pack_bits<'a>(masks: impl Iterator<Item = &'a [bool]>) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut bit = 0usize;
    for mask in masks {
        for &pixel in mask {
            if bit.is_multiple_of(8) {
                bytes.push(0);
            }
            if pixel && let Some(last) = bytes.last_mut() {
                *last |= 1 << (bit % 8);
            }
            bit += 1;
        }
    }
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_packed_lsb_first_across_frames() {
        let a = [
            true, false, false, false, false, false, false, false, false, true,
        ];
        let b = [true, true];
        assert_eq!(
            pack_bits([&a[..], &b[..]].into_iter()),
            vec![0b0000_0001, 0b0000_1110]
        );
        assert_eq!(pack_bits([&[true][..]].into_iter()), vec![1, 0]);
    }

    #[test]
    fn content_label_is_a_code_string() {
        assert_eq!(content_label("ct-lung-nodule v2"), "CT_LUNG_NODULE_V");
        assert_eq!(content_label(""), "SEGMENTATION");
    }
}
