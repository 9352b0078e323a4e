//! From modality values to the network's input, as a package's `[input]` table says.
//!
//! Order: intensity (window or HU clip to 0..1), inversion of MONOCHROME1, resize to the target
//! size, normalisation. This is the plain-Rust reference; the GPU kernels in `radserve-kernels`
//! must match it.

use crate::package::{InputSpec, Intensity, Photometric};

/// One image as decoded: modality values (after the Modality LUT / rescale), row-major.
#[derive(Debug, Clone, Copy)]
pub struct SourceImage<'a> {
    pub rows: usize,
    pub columns: usize,
    pub values: &'a [f32],
    /// MONOCHROME1: high values are dark.
    pub monochrome1: bool,
    /// The image's own VOI window (center, width), when it has one.
    pub voi_window: Option<(f64, f64)>,
}

/// Largest image edge accepted (DX detectors reach ~4300 px).
pub const MAX_SOURCE_EDGE: usize = 16_384;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PreprocessError {
    #[error("image is {rows}×{columns} but holds {values} values")]
    LengthMismatch {
        rows: usize,
        columns: usize,
        values: usize,
    },
    #[error("image size {rows}×{columns} is outside 1..={MAX_SOURCE_EDGE} per edge")]
    BadSize { rows: usize, columns: usize },
    #[error(
        "the model windows with the image's VOI window, and the image has none (WindowCenter/WindowWidth)"
    )]
    NoVoiWindow,
    #[error("the image's VOI window width {0} is not positive")]
    BadVoiWindow(f64),
}

/// Applies `spec` to `image` and appends `target rows × target columns` values to `out`.
pub fn prepare(
    image: &SourceImage<'_>,
    spec: &InputSpec,
    out: &mut Vec<f32>,
) -> Result<(), PreprocessError> {
    let (rows, columns) = (image.rows, image.columns);
    if rows == 0 || columns == 0 || rows > MAX_SOURCE_EDGE || columns > MAX_SOURCE_EDGE {
        return Err(PreprocessError::BadSize { rows, columns });
    }
    if image.values.len() != rows * columns {
        return Err(PreprocessError::LengthMismatch {
            rows,
            columns,
            values: image.values.len(),
        });
    }
    let (low, high) = match spec.intensity {
        Intensity::VoiWindow => {
            let (center, width) = image.voi_window.ok_or(PreprocessError::NoVoiWindow)?;
            if !(width.is_finite() && width > 0.0 && center.is_finite()) {
                return Err(PreprocessError::BadVoiWindow(width));
            }
            (center - width / 2.0, center + width / 2.0)
        }
        Intensity::Window { center, width } => (center - width / 2.0, center + width / 2.0),
        Intensity::HuClip { min, max } => (min, max),
    };
    let invert = image.monochrome1 && spec.photometric == Photometric::Monochrome2;
    let scale = (1.0 / (high - low)) as f32;
    let low = low as f32;
    let scaled: Vec<f32> = image
        .values
        .iter()
        .map(|&v| {
            let unit = ((v - low) * scale).clamp(0.0, 1.0);
            if invert { 1.0 - unit } else { unit }
        })
        .collect();
    let [target_rows, target_columns] = spec.target_size;
    let resized = resize(&scaled, rows, columns, target_rows, target_columns);
    let mean = spec.normalisation.mean as f32;
    let inv_std = (1.0 / spec.normalisation.std) as f32;
    out.extend(resized.into_iter().map(|v| (v - mean) * inv_std));
    Ok(())
}

/// Resamples a row-major image: area averaging when shrinking (no aliasing of fine detail),
/// bilinear with half-pixel centres (PyTorch's `align_corners=False`) when enlarging.
pub fn resize(
    values: &[f32],
    rows: usize,
    columns: usize,
    target_rows: usize,
    target_columns: usize,
) -> Vec<f32> {
    if rows == target_rows && columns == target_columns {
        return values.to_vec();
    }
    let row_weights = axis_weights(rows, target_rows);
    let column_weights = axis_weights(columns, target_columns);
    // Columns first, then rows: separable, so one pass each.
    let mut horizontal = vec![0.0f32; rows * target_columns];
    for r in 0..rows {
        let source = &values[r * columns..(r + 1) * columns];
        for (c, taps) in column_weights.iter().enumerate() {
            horizontal[r * target_columns + c] = taps.iter().map(|&(i, w)| source[i] * w).sum();
        }
    }
    let mut out = vec![0.0f32; target_rows * target_columns];
    for (r, taps) in row_weights.iter().enumerate() {
        let row = &mut out[r * target_columns..(r + 1) * target_columns];
        for &(i, w) in taps {
            let source = &horizontal[i * target_columns..(i + 1) * target_columns];
            for (o, s) in row.iter_mut().zip(source) {
                *o += s * w;
            }
        }
    }
    out
}

/// For each output index, the source indices and weights (summing to 1) along one axis.
fn axis_weights(source: usize, target: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = source as f64 / target as f64;
    (0..target)
        .map(|o| {
            if scale >= 1.0 {
                let start = o as f64 * scale;
                let end = start + scale;
                let mut taps = Vec::new();
                let mut i = start.floor() as usize;
                while (i as f64) < end && i < source {
                    let overlap = (end.min(i as f64 + 1.0) - start.max(i as f64)).max(0.0);
                    if overlap > 0.0 {
                        taps.push((i, (overlap / scale) as f32));
                    }
                    i += 1;
                }
                taps
            } else {
                let centre = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (centre.floor() as usize).min(source - 1);
                let i1 = (i0 + 1).min(source - 1);
                let t = (centre - i0 as f64) as f32;
                if i0 == i1 {
                    vec![(i0, 1.0)]
                } else {
                    vec![(i0, 1.0 - t), (i1, t)]
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::Normalisation;

    fn spec(intensity: Intensity, size: [usize; 2]) -> InputSpec {
        InputSpec {
            modalities: vec!["DX".into()],
            body_part: "CHEST".into(),
            photometric: Photometric::Monochrome2,
            target_size: size,
            intensity,
            normalisation: Normalisation {
                mean: 0.0,
                std: 1.0,
            },
            slice_by_slice: false,
        }
    }

    #[test]
    fn area_downscale_averages_blocks() {
        let values: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let out = resize(&values, 4, 4, 2, 2);
        assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5]);
    }

    #[test]
    fn bilinear_upscale_keeps_constant_and_range() {
        let out = resize(&[1.0, 3.0], 1, 2, 1, 4);
        assert_eq!(out, vec![1.0, 1.5, 2.5, 3.0]);
    }

    #[test]
    fn window_clips_and_monochrome1_inverts() {
        let values = [0.0, 50.0, 100.0, 200.0];
        let image = SourceImage {
            rows: 2,
            columns: 2,
            values: &values,
            monochrome1: true,
            voi_window: None,
        };
        let mut out = Vec::new();
        let window = Intensity::Window {
            center: 50.0,
            width: 100.0,
        };
        prepare(&image, &spec(window, [2, 2]), &mut out).unwrap();
        assert_eq!(out, vec![1.0, 0.5, 0.0, 0.0]);
    }

    #[test]
    fn missing_voi_window_and_bad_lengths_are_errors() {
        let values = [0.0; 3];
        let image = SourceImage {
            rows: 2,
            columns: 2,
            values: &values,
            monochrome1: false,
            voi_window: None,
        };
        let mut out = Vec::new();
        let err = prepare(&image, &spec(Intensity::VoiWindow, [2, 2]), &mut out).unwrap_err();
        assert!(matches!(err, PreprocessError::LengthMismatch { .. }));
        let values = [0.0; 4];
        let image = SourceImage {
            values: &values,
            ..image
        };
        let err = prepare(&image, &spec(Intensity::VoiWindow, [2, 2]), &mut out).unwrap_err();
        assert_eq!(err, PreprocessError::NoVoiWindow);
    }
}
