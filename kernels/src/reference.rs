//! The plain-Rust reference of the preprocessing maths: what the CubeCL kernel must match, and
//! what runs when the model is on the CPU backend. Frames run in parallel (rayon); each pass is
//! a straight loop over contiguous rows that the compiler vectorises.

use rayon::prelude::*;

use crate::spec::{
    AxisPlan, Frames, Pixels, Plan, PreprocessError, PreprocessSpec, axis_taps, unit_intensity,
};

/// Stored pixels → model input, N×C×H×W f32 (N = frames), as `spec` says.
pub fn preprocess(input: &Frames<'_>, spec: &PreprocessSpec) -> Result<Vec<f32>, PreprocessError> {
    let plan = spec.plan(input)?;
    let mut out = vec![0.0f32; plan.output_len()];
    let per_frame = plan.channels * plan.target[0] * plan.target[1];
    out.par_chunks_mut(per_frame)
        .enumerate()
        .for_each(|(frame, out)| {
            let unit = resampled_frame(&plan, input, frame);
            let (first, rest) = out.split_at_mut(unit.len());
            for (o, u) in first.iter_mut().zip(&unit) {
                *o = u * plan.out_scale + plan.out_offset;
            }
            for channel in rest.chunks_mut(unit.len()) {
                channel.copy_from_slice(first);
            }
        });
    Ok(out)
}

/// Stored pixels → 8-bit display values, N×H×W, for thumbnails and WADO `rendered`: the same
/// VOI, inversion and resampling, then `round(unit × 255)` instead of the normalisation.
pub fn render_u8(input: &Frames<'_>, spec: &PreprocessSpec) -> Result<Vec<u8>, PreprocessError> {
    let plan = spec.plan(input)?;
    let per_frame = plan.target[0] * plan.target[1];
    let mut out = vec![0u8; plan.frames * per_frame];
    out.par_chunks_mut(per_frame)
        .enumerate()
        .for_each(|(frame, out)| {
            let unit = resampled_frame(&plan, input, frame);
            for (o, u) in out.iter_mut().zip(&unit) {
                *o = to_display(*u);
            }
        });
    Ok(out)
}

/// 0..1 → 0..255, rounded half up; the kernel uses the same expression.
#[inline]
pub fn to_display(unit: f32) -> u8 {
    (unit.clamp(0.0, 1.0) * 255.0 + 0.5).floor() as u8
}

/// One frame in the 0..1 domain at the target size, padding (letterbox) at 0. Rows run in
/// parallel: each source row is mapped and resampled horizontally in one go, then each output
/// row sums its source rows.
fn resampled_frame(plan: &Plan, input: &Frames<'_>, frame: usize) -> Vec<f32> {
    let (rows, columns) = (plan.rows.source, plan.columns.source);
    let start = frame * rows * columns;
    let [target_rows, target_columns] = plan.target;
    let column_taps = all_taps(&plan.columns);
    let row_taps = all_taps(&plan.rows);
    let span_c = plan.columns.span;
    let mut horizontal = vec![0.0f32; rows * span_c];
    horizontal.par_chunks_mut(span_c).enumerate().for_each_init(
        || vec![0.0f32; columns],
        |unit, (r, out)| {
            let range = start + r * columns..start + (r + 1) * columns;
            map_row(plan, &input.pixels, range, unit);
            for (o, taps) in out.iter_mut().zip(&column_taps) {
                *o = taps.iter().map(|&(i, w)| unit[i] * w).sum();
            }
        },
    );
    let mut out = vec![0.0f32; target_rows * target_columns];
    let first_row = plan.rows.offset * target_columns;
    out[first_row..first_row + plan.rows.span * target_columns]
        .par_chunks_mut(target_columns)
        .zip(&row_taps)
        .for_each(|(row, taps)| {
            let row = &mut row[plan.columns.offset..plan.columns.offset + span_c];
            for &(i, w) in taps {
                let source = &horizontal[i * span_c..(i + 1) * span_c];
                for (o, s) in row.iter_mut().zip(source) {
                    *o += s * w;
                }
            }
        });
    out
}

/// Stored pixels `range` → 0..1 values in `unit`.
fn map_row(plan: &Plan, pixels: &Pixels<'_>, range: std::ops::Range<usize>, unit: &mut [f32]) {
    match pixels {
        Pixels::U8(v) => map_values(plan, &v[range], unit),
        Pixels::U16(v) => map_values(plan, &v[range], unit),
        Pixels::I16(v) => map_values(plan, &v[range], unit),
    }
}

fn map_values<T: Copy + Into<f32>>(plan: &Plan, stored: &[T], unit: &mut [f32]) {
    for (u, &s) in unit.iter_mut().zip(stored) {
        *u = unit_intensity(plan, s.into());
    }
}

fn all_taps(axis: &AxisPlan) -> Vec<Vec<(usize, f32)>> {
    (0..axis.span)
        .map(|o| {
            let mut taps = Vec::new();
            axis_taps(axis, o, &mut taps);
            taps
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Intensity, Normalisation, Resample, VoiFunction};

    fn spec(intensity: Intensity, target: [usize; 2]) -> PreprocessSpec {
        PreprocessSpec {
            rescale_slope: 1.0,
            rescale_intercept: 0.0,
            intensity,
            invert: false,
            target,
            resample: Resample::Bilinear,
            letterbox: false,
            normalisation: Normalisation::MeanStd {
                mean: 0.0,
                std: 1.0,
            },
            channels: 1,
        }
    }

    fn frames(pixels: Pixels<'_>, rows: usize, columns: usize) -> Frames<'_> {
        let frames = pixels.len() / (rows * columns);
        Frames {
            rows,
            columns,
            frames,
            pixels,
        }
    }

    fn window(center: f32, width: f32, function: VoiFunction) -> Intensity {
        Intensity::Window {
            center,
            width,
            function,
        }
    }

    #[test]
    fn linear_window_follows_ps3_3() {
        // c = 100, w = 11: y = 0 at x ≤ 94.5, 1 above 104.5, linear between.
        let pixels = [90u16, 94, 95, 100, 104, 105];
        let out = preprocess(
            &frames(Pixels::U16(&pixels), 1, 6),
            &spec(window(100.0, 11.0, VoiFunction::Linear), [1, 6]),
        )
        .unwrap();
        let expected = [0.0, 0.0, 0.05, 0.55, 0.95, 1.0];
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn linear_exact_and_sigmoid_windows() {
        let pixels = [-10i16, 0, 5, 10];
        let input = frames(Pixels::I16(&pixels), 1, 4);
        let exact = preprocess(
            &input,
            &spec(window(0.0, 10.0, VoiFunction::LinearExact), [1, 4]),
        )
        .unwrap();
        assert_eq!(exact, vec![0.0, 0.5, 1.0, 1.0]);
        let sigmoid = preprocess(
            &input,
            &spec(window(0.0, 10.0, VoiFunction::Sigmoid), [1, 4]),
        )
        .unwrap();
        assert!((sigmoid[1] - 0.5).abs() < 1e-6);
        assert!((sigmoid[2] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
        assert!(sigmoid[0] < 0.02 && sigmoid[3] > 0.98);
    }

    #[test]
    fn width_one_linear_is_a_threshold() {
        let pixels = [99u8, 100, 101];
        let out = preprocess(
            &frames(Pixels::U8(&pixels), 1, 3),
            &spec(window(100.0, 1.0, VoiFunction::Linear), [1, 3]),
        )
        .unwrap();
        assert_eq!(out, vec![0.0, 1.0, 1.0]);
    }

    #[test]
    fn rescale_clip_invert_and_normalise() {
        // Stored 0..3 with slope 100, intercept −1000: −1000, −900, −800, −700 HU.
        let pixels = [0u16, 1, 2, 3];
        let mut s = spec(
            Intensity::Clip {
                min: -1000.0,
                max: -700.0,
            },
            [2, 2],
        );
        s.rescale_slope = 100.0;
        s.rescale_intercept = -1000.0;
        s.invert = true;
        s.normalisation = Normalisation::MinMax {
            low: -1.0,
            high: 1.0,
        };
        let out = preprocess(&frames(Pixels::U16(&pixels), 2, 2), &s).unwrap();
        let expected = [1.0, 1.0 / 3.0, -1.0 / 3.0, -1.0];
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn halving_averages_pairs_and_enlarging_interpolates() {
        let pixels: Vec<u8> = (0..16).collect();
        let clip = Intensity::Clip {
            min: 0.0,
            max: 255.0,
        };
        let out = preprocess(&frames(Pixels::U8(&pixels), 4, 4), &spec(clip, [2, 2])).unwrap();
        let expected = [2.5, 4.5, 10.5, 12.5].map(|v| v / 255.0);
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
        let out = preprocess(&frames(Pixels::U8(&[51, 153]), 1, 2), &spec(clip, [1, 4])).unwrap();
        let expected = [51.0, 76.5, 127.5, 153.0].map(|v| v / 255.0);
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn shrinking_a_stripe_pattern_by_four_does_not_alias() {
        // Alternating 0/255 columns: two-tap sampling at ¼ size would land on one phase and
        // give all 0 or all 255; the triangle filter gives the mean.
        let pixels: Vec<u8> = (0..64 * 64)
            .map(|i| if i % 2 == 0 { 0 } else { 255 })
            .collect();
        let clip = Intensity::Clip {
            min: 0.0,
            max: 255.0,
        };
        let out = preprocess(&frames(Pixels::U8(&pixels), 64, 64), &spec(clip, [16, 16])).unwrap();
        for v in out {
            assert!((v - 0.5).abs() < 0.07, "{v}");
        }
    }

    #[test]
    fn area_resampling_averages_the_covered_source() {
        let clip = Intensity::Clip {
            min: 0.0,
            max: 10.0,
        };
        let area = |pixels: &[u8], rows, columns, target| {
            let mut s = spec(clip, target);
            s.resample = Resample::Area;
            preprocess(&frames(Pixels::U8(pixels), rows, columns), &s).unwrap()
        };
        // ÷3 along a row: the mean of each block of three, in tenths.
        let out = area(&[0, 1, 2, 3, 4, 5], 1, 6, [1, 2]);
        for (o, e) in out.iter().zip([0.1, 0.4]) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
        // ÷1.5: the middle output covers the second pixel's right half and the third's left.
        let out = area(&[0, 6, 3], 1, 3, [1, 2]);
        for (o, e) in out.iter().zip([0.2, 0.4]) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
        // Enlarging is bilinear, as with `Resample::Bilinear`.
        let out = area(&[0, 10], 1, 2, [1, 4]);
        assert_eq!(out, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn letterbox_keeps_aspect_and_pads_black() {
        let pixels = vec![255u8; 2 * 8];
        let mut s = spec(
            Intensity::Clip {
                min: 0.0,
                max: 255.0,
            },
            [8, 8],
        );
        s.letterbox = true;
        let out = preprocess(&frames(Pixels::U8(&pixels), 2, 8), &s).unwrap();
        // 2×8 fits 8×8 as 2×8 centred: rows 3 and 4 white, the rest padding.
        for (r, row) in out.chunks(8).enumerate() {
            let want = if r == 3 || r == 4 { 1.0 } else { 0.0 };
            assert!(row.iter().all(|&v| v == want), "row {r}: {row:?}");
        }
    }

    #[test]
    fn frames_and_channels_are_laid_out_nchw() {
        let pixels = [0u8, 0, 0, 0, 255, 255, 255, 255];
        let mut s = spec(
            Intensity::Clip {
                min: 0.0,
                max: 255.0,
            },
            [1, 2],
        );
        s.channels = 3;
        let out = preprocess(&frames(Pixels::U8(&pixels), 2, 2), &s).unwrap();
        assert_eq!(out, [vec![0.0; 6], vec![1.0; 6]].concat());
    }

    #[test]
    fn render_rounds_to_display_values() {
        let pixels = [0u16, 1000, 2000, 4095];
        let out = render_u8(
            &frames(Pixels::U16(&pixels), 2, 2),
            &spec(window(2047.5, 4096.0, VoiFunction::LinearExact), [2, 2]),
        )
        .unwrap();
        assert_eq!(out, vec![0, 62, 125, 255]);
    }

    #[test]
    fn bad_input_is_refused_before_work() {
        let clip = Intensity::Clip { min: 0.0, max: 1.0 };
        let pixels = [0u8; 12];
        let cases: Vec<(Frames<'_>, PreprocessSpec)> = vec![
            (
                Frames {
                    rows: 0,
                    columns: 4,
                    frames: 1,
                    pixels: Pixels::U8(&[]),
                },
                spec(clip, [2, 2]),
            ),
            (
                Frames {
                    rows: 2,
                    columns: 2,
                    frames: 2,
                    pixels: Pixels::U8(&pixels),
                },
                spec(clip, [2, 2]),
            ),
            (frames(Pixels::U8(&pixels), 3, 4), spec(clip, [0, 2])),
            (
                frames(Pixels::U8(&pixels), 3, 4),
                spec(window(0.0, 0.5, VoiFunction::Linear), [2, 2]),
            ),
            (
                frames(Pixels::U8(&pixels), 3, 4),
                spec(window(f32::NAN, 5.0, VoiFunction::Sigmoid), [2, 2]),
            ),
            (
                frames(Pixels::U8(&pixels), 3, 4),
                spec(Intensity::Clip { min: 1.0, max: 1.0 }, [2, 2]),
            ),
        ];
        for (input, spec) in cases {
            let err = preprocess(&input, &spec).expect_err("refused");
            assert!(!err.to_string().is_empty());
        }
        assert!(matches!(
            crate::spec::PixelKind::from_dicom(32, 0),
            Err(PreprocessError::UnsupportedPixels { .. })
        ));
        assert!(matches!(
            VoiFunction::from_dicom(Some("LOG")),
            Err(PreprocessError::UnknownVoiFunction(_))
        ));
    }
}
