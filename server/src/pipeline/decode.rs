//! Decode: a stored instance → modality values (Modality LUT applied), what preprocessing
//! needs (photometric, VOI window), where the slice lies, and the dataset without its
//! pixel data (for the SR and SEG to copy and reference).

use std::sync::Arc;

use dicom_core::header::Header;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_pixeldata::{DecodedPixelData, PixelDecoder, Transcode};
use dicom_transfer_syntax_registry::entries::{EXPLICIT_VR_LITTLE_ENDIAN, JPEG_EXTENDED};
use radserve_models::postprocess::SliceGeometry;

use super::jpeg_extended;
use crate::dicomweb::wado::parse_part10;
use crate::infer::model_input::{StoredPixels, StoredValues};

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
    /// The stored values before the Modality LUT, for preprocessing on the model's device;
    /// `None` for pixel types the kernel does not take (then `values` are prepared on the host).
    pub stored: Option<Arc<StoredPixels>>,
    /// RescaleSlope and RescaleIntercept (1 and 0 when absent).
    pub rescale: (f64, f64),
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

/// Decodes frame `frame` (0-based) of an instance with dicom-pixeldata, or, for JPEG
/// Extended at 12 bits (which its JPEG decoder lacks), with [`jpeg_extended`]: the frame
/// is decoded into a native copy of the instance, so that the Modality LUT, photometric
/// and sign handling are dicom-pixeldata's in both cases. The result then holds that one
/// frame as frame 0.
pub fn decode_frame(
    object: &DefaultDicomObject,
    frame: u32,
) -> Result<DecodedPixelData<'_>, String> {
    let error = match object.decode_pixel_data_frame(frame) {
        Ok(decoded) => return Ok(decoded),
        Err(e) => e.to_string(),
    };
    let transfer_syntax = object.meta().transfer_syntax();
    if transfer_syntax.trim_end_matches(['\0', ' ']) != JPEG_EXTENDED.uid() {
        return Err(error);
    }
    decode_extended_frame(object, frame)
        .map_err(|e| format!("{e} (the JPEG Extended decoder said: {error})"))
}

/// The instance in Explicit VR Little Endian with its pixel data decoded (what PS3.18 asks
/// a WADO-RS origin server to offer whatever the stored transfer syntax): dicom-pixeldata's
/// transcoder, or, for 12-bit JPEG Extended, every frame through [`decode_frame`].
pub fn to_explicit_little_endian(
    mut object: DefaultDicomObject,
) -> Result<DefaultDicomObject, String> {
    let extended = object
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        == JPEG_EXTENDED.uid();
    if !extended {
        object
            .transcode(&EXPLICIT_VR_LITTLE_ENDIAN.erased())
            .map_err(|e| format!("cannot decode the pixel data: {e}"))?;
        return Ok(object);
    }
    let frames = object
        .element(tags::NUMBER_OF_FRAMES)
        .ok()
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let mut samples = Vec::new();
    for frame in 0..frames {
        let decoded = decode_frame(&object, frame)?;
        samples.extend(
            decoded
                .frame_data_ow(0)
                .map_err(|e| format!("frame {frame}: {e}"))?,
        );
    }
    object.remove_element(tags::ENCAPSULATED_PIXEL_DATA_VALUE_TOTAL_LENGTH);
    object.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(samples.into()),
    ));
    object.update_meta(|meta| meta.set_transfer_syntax(&EXPLICIT_VR_LITTLE_ENDIAN));
    Ok(object)
}

/// [`decode_frame`]'s JPEG Extended path.
fn decode_extended_frame(
    object: &DefaultDicomObject,
    frame: u32,
) -> Result<DecodedPixelData<'static>, String> {
    let number = |tag| {
        object
            .element(tag)
            .ok()
            .and_then(|e| e.to_int::<u32>().ok())
    };
    let rows = number(tags::ROWS).ok_or("no Rows")? as usize;
    let columns = number(tags::COLUMNS).ok_or("no Columns")? as usize;
    if number(tags::BITS_ALLOCATED) != Some(16) || number(tags::SAMPLES_PER_PIXEL) != Some(1) {
        return Err("12-bit JPEG needs BitsAllocated 16 and one sample per pixel".into());
    }
    let frames = number(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let stream = frame_stream(object, frame, frames)?;
    let image = jpeg_extended::decode(&stream, rows, columns).map_err(|e| e.to_string())?;
    // A copy of everything but the (compressed) pixel data, which the decoded frame replaces.
    let mut native = InMemDicomObject::from_element_iter(
        object
            .iter()
            .filter(|element| element.tag() != tags::PIXEL_DATA)
            .cloned(),
    )
    .with_exact_meta(object.meta().clone());
    native.update_meta(|meta| meta.set_transfer_syntax(&EXPLICIT_VR_LITTLE_ENDIAN));
    native.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from("1"),
    ));
    native.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(image.samples.into()),
    ));
    native
        .decode_pixel_data_frame(0)
        .map(|decoded| decoded.to_owned())
        .map_err(|e| e.to_string())
}

/// The JPEG stream of frame `frame`: its own fragment when there is one per frame, all
/// fragments of a single frame, else the fragments the Basic Offset Table assigns it.
fn frame_stream(object: &DefaultDicomObject, frame: u32, frames: u32) -> Result<Vec<u8>, String> {
    let pixel_data = object
        .element(tags::PIXEL_DATA)
        .map_err(|_| "no pixel data")?
        .value();
    let fragments = pixel_data
        .fragments()
        .ok_or("the pixel data is not encapsulated")?;
    if frame >= frames {
        return Err(format!("frame {frame} of {frames}"));
    }
    if fragments.len() == frames as usize {
        return Ok(fragments[frame as usize].clone());
    }
    if frames == 1 {
        return Ok(fragments.concat());
    }
    let offsets = pixel_data.offset_table().unwrap_or_default();
    let start = *offsets
        .get(frame as usize)
        .ok_or("no Basic Offset Table entry for the frame")?;
    let end = offsets.get(frame as usize + 1).copied().unwrap_or(u32::MAX);
    // Offsets count from the first fragment's item tag; each item has an 8-byte header.
    let mut stream = Vec::new();
    let mut offset = 0u64;
    for fragment in fragments {
        if offset >= u64::from(end) {
            break;
        }
        if offset >= u64::from(start) {
            stream.extend_from_slice(fragment);
        }
        offset += 8 + fragment.len() as u64;
    }
    Ok(stream)
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
    let decoded = decode_frame(&object, 0)
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
    let rescale = decoded
        .rescale()
        .ok()
        .and_then(|r| r.first().copied())
        .map_or((1.0, 0.0), |r| (r.slope, r.intercept));
    let stored = stored_pixels(&decoded).map(Arc::new);
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
        stored,
        rescale,
        monochrome1,
        voi_window,
        geometry,
        dataset,
    })
}

/// The first frame's stored values, masked to BitsStored (and sign-extended from it when
/// signed), when they are 8-bit unsigned or 16-bit: the kinds the preprocessing kernel reads.
fn stored_pixels(decoded: &dicom_pixeldata::DecodedPixelData<'_>) -> Option<StoredPixels> {
    let (rows, columns) = (decoded.rows() as usize, decoded.columns() as usize);
    let bytes = decoded.frame_data(0).ok()?;
    let count = rows * columns;
    let bits_stored = u32::from(decoded.bits_stored());
    let signed = decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
    let values = match (decoded.bits_allocated(), signed) {
        (8, false) if bytes.len() >= count => StoredValues::U8(bytes[..count].to_vec()),
        (16, _) if bytes.len() >= count * 2 && (1..=16).contains(&bits_stored) => {
            // Decoded pixel data is in the machine's byte order; bits above BitsStored may
            // hold overlays or garbage.
            let words = bytes[..count * 2]
                .chunks_exact(2)
                .map(|b| u16::from_ne_bytes([b[0], b[1]]));
            let unused = 16 - bits_stored;
            if signed {
                StoredValues::I16(words.map(|w| ((w << unused) as i16) >> unused).collect())
            } else {
                let mask = (u32::from(u16::MAX) >> unused) as u16;
                StoredValues::U16(words.map(|w| w & mask).collect())
            }
        }
        _ => return None,
    };
    Some(StoredPixels {
        rows,
        columns,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    /// A 2×2 CT slice with 12 of 16 bits stored and garbage above them (an overlay's bits).
    fn twelve_bit_ct(signed: bool, pixels: [u16; 4]) -> Vec<u8> {
        let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
        let text = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
        let obj = InMemDicomObject::from_element_iter([
            text(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.2"),
            text(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4"),
            text(tags::MODALITY, VR::CS, "CT"),
            us(tags::SAMPLES_PER_PIXEL, 1),
            text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
            us(tags::ROWS, 2),
            us(tags::COLUMNS, 2),
            us(tags::BITS_ALLOCATED, 16),
            us(tags::BITS_STORED, 12),
            us(tags::HIGH_BIT, 11),
            us(tags::PIXEL_REPRESENTATION, u16::from(signed)),
            text(tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
            text(tags::RESCALE_SLOPE, VR::DS, "1"),
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(pixels.into_iter().collect()),
            ),
        ]);
        crate::results::part10_bytes(obj).expect("part 10")
    }

    #[test]
    fn stored_pixels_are_masked_to_bits_stored_and_sign_extended() {
        // 0xF005 → 5 when unsigned; 0x0FFF → -1 and 0x0800 → -2048 when signed.
        let unsigned =
            decode_instance(&twelve_bit_ct(false, [0xF005, 0x0FFF, 0x0800, 7])).expect("decodes");
        let stored = unsigned.stored.as_ref().expect("16-bit is kept");
        assert_eq!(stored.values, StoredValues::U16(vec![5, 4095, 2048, 7]));
        assert_eq!(unsigned.rescale, (1.0, -1024.0));
        let signed =
            decode_instance(&twelve_bit_ct(true, [0xF005, 0x0FFF, 0x0800, 7])).expect("decodes");
        let stored = signed.stored.as_ref().expect("16-bit is kept");
        assert_eq!(stored.values, StoredValues::I16(vec![5, -1, -2048, 7]));
        assert_eq!((stored.rows, stored.columns), (2, 2));
    }

    fn run(program: &str, args: &[&std::path::Path]) {
        let output = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} (is dcmtk on PATH?): {e}"));
        assert!(
            output.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A 12-bit radiograph from dicom-samples, compressed by dcmtk's `dcmcjpeg +ee` (JPEG
    /// Extended, process 4) in one fragment and in 1 KiB fragments, decodes as dcmtk's own
    /// `dcmdjpeg` decompresses it, to within the two inverse DCTs' rounding.
    #[test]
    fn twelve_bit_jpeg_extended_decodes_as_dcmtk_decompresses_it() {
        use dicom_samples::generate::{GenerateOptions, generate};
        let dir = tempfile::tempdir().expect("temporary directory");
        let options = GenerateOptions {
            seed: 5,
            ct_studies: 0,
            xray_studies: 1,
            xray_size: 200,
            ..GenerateOptions::new(dir.path())
        };
        generate(&options, &|| {}).expect("dicom-samples generates a radiograph");
        let study = std::fs::read_dir(dir.path().join("studies"))
            .expect("studies")
            .next()
            .expect("one study")
            .expect("study entry")
            .path();
        let original = std::fs::read_dir(&study)
            .expect("study directory")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|e| e == "dcm"))
            .expect("the radiograph");
        let path = |name: &str| dir.path().join(name);
        let fs_1 = std::path::Path::new("+fs");
        let one_kib = std::path::Path::new("1");
        run(
            "dcmcjpeg",
            &[std::path::Path::new("+ee"), &original, &path("whole.dcm")],
        );
        run(
            "dcmcjpeg",
            &[
                std::path::Path::new("+ee"),
                fs_1,
                one_kib,
                &original,
                &path("fragments.dcm"),
            ],
        );
        run("dcmdjpeg", &[&path("whole.dcm"), &path("dcmtk.dcm")]);
        let read = |name: &str| std::fs::read(path(name)).expect("read back");
        let reference = decode_instance(&read("dcmtk.dcm")).expect("dcmtk's output decodes");
        let original =
            decode_instance(&std::fs::read(&original).expect("original")).expect("decodes");
        for name in ["whole.dcm", "fragments.dcm"] {
            let bytes = read(name);
            let object = parse_part10(&bytes, false).expect("parses");
            assert_eq!(
                object.meta().transfer_syntax(),
                JPEG_EXTENDED.uid(),
                "{name}"
            );
            let fragments = object
                .element(tags::PIXEL_DATA)
                .expect("pixel data")
                .value()
                .fragments()
                .map(<[Vec<u8>]>::len);
            if name == "fragments.dcm" {
                assert!(fragments > Some(1), "{name}: {fragments:?} fragments");
            }
            // dicom-pixeldata alone cannot: the fallback is what is being tested.
            assert!(object.decode_pixel_data_frame(0).is_err(), "{name}");
            let ours = decode_instance(&bytes).expect("decodes");
            assert_eq!(
                (ours.rows, ours.columns),
                (reference.rows, reference.columns)
            );
            assert_eq!(ours.monochrome1, reference.monochrome1);
            let worst = ours
                .values
                .iter()
                .zip(&reference.values)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 1.0, "{name}: off by {worst} from dcmdjpeg");
            // And the stored values reach the device path as 16-bit, as for any 12-bit image.
            assert!(ours.stored.is_some(), "{name}");
            // Lossy, but close to the uncompressed original: a real 12-bit decode, not 8.
            let mean_error = ours
                .values
                .iter()
                .zip(&original.values)
                .map(|(a, b)| f64::from((a - b).abs()))
                .sum::<f64>()
                / ours.values.len() as f64;
            assert!(
                mean_error < 8.0,
                "{name}: mean error {mean_error} from the original"
            );
        }
    }
}
