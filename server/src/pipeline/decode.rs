//! Decode: a stored instance → modality values (Modality LUT applied), what preprocessing
//! needs (photometric, VOI window), where the slice lies, and the dataset without its
//! pixel data (for the SR and SEG to copy and reference).

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_pixeldata::PixelDecoder;
use radserve_models::postprocess::SliceGeometry;

use crate::dicomweb::wado::parse_part10;

/// Largest image accepted for inference, per edge (a DX detector reaches ~4300 px).
pub const MAX_EDGE: u32 = radserve_models::preprocess::MAX_SOURCE_EDGE as u32;

/// One decoded image (the first frame of its instance).
#[derive(Debug, Clone)]
pub struct DecodedImage {
    pub sop_instance_uid: String,
    pub rows: usize,
    pub columns: usize,
    /// Modality values, row-major.
    pub values: Vec<f32>,
    pub monochrome1: bool,
    pub voi_window: Option<(f64, f64)>,
    /// Present when the instance has ImagePositionPatient, ImageOrientationPatient and
    /// PixelSpacing.
    pub geometry: Option<SliceGeometry>,
    /// The dataset without PixelData.
    pub dataset: InMemDicomObject,
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let values = obj.element(tag).ok()?.to_multi_float64().ok()?;
    values.iter().all(|v| v.is_finite()).then_some(values)
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.element(tag)
        .ok()?
        .to_str()
        .ok()
        .map(|s| s.trim_matches(|c: char| c == ' ' || c == '\0').to_owned())
}

/// Decodes a stored Part 10 file. Errors are the input's fault and say why.
pub fn decode_instance(bytes: &[u8]) -> Result<DecodedImage, String> {
    let object = parse_part10(bytes, false).map_err(|e| format!("not readable DICOM: {e}"))?;
    let sop_instance_uid = text(&object, tags::SOP_INSTANCE_UID)
        .filter(|s| !s.is_empty())
        .ok_or("no SOPInstanceUID")?;
    if object.element(tags::PIXEL_DATA).is_err() {
        return Err(format!("instance {sop_instance_uid} has no pixel data"));
    }
    let decoded = object
        .decode_pixel_data_frame(0)
        .map_err(|e| format!("cannot decode the pixel data of {sop_instance_uid}: {e}"))?;
    let (rows, columns) = (decoded.rows(), decoded.columns());
    if rows == 0 || columns == 0 || rows > MAX_EDGE || columns > MAX_EDGE {
        return Err(format!(
            "image {sop_instance_uid} is {rows}×{columns}: outside 1..={MAX_EDGE} per edge"
        ));
    }
    if decoded.samples_per_pixel() != 1 {
        return Err(format!(
            "image {sop_instance_uid} has {} samples per pixel; the models take greyscale",
            decoded.samples_per_pixel()
        ));
    }
    let values: Vec<f32> = decoded
        .to_vec_frame::<f32>(0)
        .map_err(|e| format!("cannot convert the pixel data of {sop_instance_uid}: {e}"))?;
    let monochrome1 = decoded.photometric_interpretation().as_str() == "MONOCHROME1";
    let mut dataset = object.into_inner();
    dataset.remove_element(tags::PIXEL_DATA);
    let voi_window = match (
        floats(&dataset, tags::WINDOW_CENTER),
        floats(&dataset, tags::WINDOW_WIDTH),
    ) {
        (Some(c), Some(w)) if !c.is_empty() && !w.is_empty() => Some((c[0], w[0])),
        _ => None,
    };
    let geometry = match (
        floats(&dataset, tags::IMAGE_POSITION_PATIENT),
        floats(&dataset, tags::IMAGE_ORIENTATION_PATIENT),
        floats(&dataset, tags::PIXEL_SPACING),
    ) {
        (Some(p), Some(o), Some(s)) if p.len() == 3 && o.len() == 6 && s.len() == 2 => {
            Some(SliceGeometry {
                position_mm: [p[0], p[1], p[2]],
                row_direction: [o[0], o[1], o[2]],
                column_direction: [o[3], o[4], o[5]],
                pixel_spacing_mm: [s[0], s[1]],
            })
        }
        _ => None,
    };
    Ok(DecodedImage {
        sop_instance_uid,
        rows: rows as usize,
        columns: columns as usize,
        values,
        monochrome1,
        voi_window,
        geometry,
        dataset,
    })
}
