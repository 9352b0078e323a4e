//! The CubeCL kernel against the plain-Rust reference, on the default wgpu adapter (Mesa's
//! lavapipe on a machine without a GPU): pixel types and signedness, odd and tiny sizes, large
//! images, every VOI function and its edge cases, letterbox, channels, the u8 render variant,
//! and bad input refused before any launch.

use std::sync::OnceLock;

use cubecl::device::{Device, WgpuDevice};
use radserve_kernels::fused::{FusedPreprocessor, KernelError};
use radserve_kernels::reference;
use radserve_kernels::{
    Frames, Intensity, Normalisation, Pixels, PreprocessError, PreprocessSpec, Resample,
    VoiFunction,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Largest difference allowed after normalisation (the bound).
const TOLERANCE: f32 = 1e-4;

fn gpu() -> &'static FusedPreprocessor {
    static GPU: OnceLock<FusedPreprocessor> = OnceLock::new();
    GPU.get_or_init(|| FusedPreprocessor::new(&Device::Wgpu(WgpuDevice::default())))
}

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
            mean: 0.5,
            std: 0.25,
        },
        channels: 1,
    }
}

fn window(center: f32, width: f32, function: VoiFunction) -> Intensity {
    Intensity::Window {
        center,
        width,
        function,
    }
}

/// Runs both implementations; returns the largest difference.
fn compare(input: &Frames<'_>, spec: &PreprocessSpec, case: &str) -> f32 {
    let expected = reference::preprocess(input, spec).expect("reference");
    let actual = gpu().preprocess(input, spec).expect("kernel");
    assert_eq!(actual.len(), expected.len(), "{case}: output length");
    let (worst_at, worst) = actual
        .iter()
        .zip(&expected)
        .map(|(a, e)| (a - e).abs())
        .enumerate()
        .fold(
            (0, 0.0f32),
            |acc, (i, d)| if d > acc.1 { (i, d) } else { acc },
        );
    assert!(
        worst <= TOLERANCE,
        "{case}: max abs error {worst} at {worst_at} (kernel {}, reference {})",
        actual[worst_at],
        expected[worst_at]
    );
    worst
}

/// Frames of `rows × columns` signed pixels (as many as `pixels` holds).
fn i16_frames(pixels: &[i16], rows: usize, columns: usize) -> Frames<'_> {
    Frames {
        rows,
        columns,
        frames: pixels.len() / (rows * columns),
        pixels: Pixels::I16(pixels),
    }
}

fn clip(min: f32, max: f32) -> Intensity {
    Intensity::Clip { min, max }
}

fn random_u16(rng: &mut ChaCha8Rng, len: usize, max: u16) -> Vec<u16> {
    (0..len).map(|_| rng.random_range(0..=max)).collect()
}

#[test]
fn pixel_types_and_signedness_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (rows, columns) = (37, 53);
    let bytes: Vec<u8> = (0..rows * columns).map(|_| rng.random()).collect();
    let words = random_u16(&mut rng, rows * columns, 4095);
    let signed: Vec<i16> = (0..rows * columns)
        .map(|_| rng.random_range(-1024..=3071))
        .collect();
    let mut ct = spec(clip(-1000.0, 400.0), [64, 64]);
    ct.rescale_slope = 1.0;
    ct.rescale_intercept = -24.0;
    let cases = [
        (
            "u8",
            Pixels::U8(&bytes),
            spec(window(128.0, 200.0, VoiFunction::Linear), [16, 16]),
        ),
        (
            "u16",
            Pixels::U16(&words),
            spec(window(2048.0, 4096.0, VoiFunction::LinearExact), [25, 31]),
        ),
        ("i16", Pixels::I16(&signed), ct),
    ];
    let mut worst = 0.0f32;
    for (name, pixels, spec) in cases {
        let input = Frames {
            rows,
            columns,
            frames: 1,
            pixels,
        };
        worst = worst.max(compare(&input, &spec, name));
        let mut inverted = spec;
        inverted.invert = true;
        worst = worst.max(compare(&input, &inverted, &format!("{name} inverted")));
    }
    eprintln!("pixel types: max abs error {worst:e}");
}

#[test]
fn negative_i16_values_are_sign_extended() {
    // −32768, −1, 0, 32767 straight through a clip: the kernel reads them from packed words.
    let pixels = [i16::MIN, -1, 0, i16::MAX];
    let input = Frames {
        rows: 2,
        columns: 2,
        frames: 1,
        pixels: Pixels::I16(&pixels),
    };
    let mut s = spec(clip(-32768.0, 32767.0), [2, 2]);
    s.normalisation = Normalisation::MinMax {
        low: 0.0,
        high: 1.0,
    };
    let out = gpu().preprocess(&input, &s).expect("kernel");
    assert_eq!(out[0], 0.0);
    assert!((out[1] - 32767.0 / 65535.0).abs() < 1e-6, "{out:?}");
    assert_eq!(out[3], 1.0);
    compare(&input, &s, "i16 extremes");
}

#[test]
fn odd_tiny_and_one_pixel_images() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for (rows, columns, target) in [
        (1, 1, [1, 1]),
        (1, 1, [7, 5]),
        (3, 1, [2, 9]),
        (5, 7, [5, 7]),
        (13, 3, [4, 33]),
        (2, 2, [1, 1]),
    ] {
        let pixels = random_u16(&mut rng, rows * columns, 65535);
        let input = Frames {
            rows,
            columns,
            frames: 1,
            pixels: Pixels::U16(&pixels),
        };
        let s = spec(window(30000.0, 50000.0, VoiFunction::Sigmoid), target);
        compare(&input, &s, &format!("{rows}×{columns} → {target:?}"));
    }
}

#[test]
fn window_edge_cases() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let pixels = random_u16(&mut rng, 64 * 48, 1000);
    let input = Frames {
        rows: 64,
        columns: 48,
        frames: 1,
        pixels: Pixels::U16(&pixels),
    };
    for (name, intensity) in [
        ("width 1 linear", window(500.0, 1.0, VoiFunction::Linear)),
        (
            "width 1 exact",
            window(500.0, 1.0, VoiFunction::LinearExact),
        ),
        ("tiny sigmoid", window(500.0, 1e-3, VoiFunction::Sigmoid)),
        ("centre below", window(-5000.0, 100.0, VoiFunction::Linear)),
        (
            "centre above",
            window(90000.0, 100.0, VoiFunction::LinearExact),
        ),
        (
            "centre above sigmoid",
            window(90000.0, 10.0, VoiFunction::Sigmoid),
        ),
    ] {
        // Same size: no resampling, so each output is exactly one mapped pixel.
        compare(&input, &spec(intensity, [64, 48]), name);
    }
}

#[test]
fn frames_channels_letterbox_and_downscaling() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (rows, columns, frames) = (120, 90, 3);
    let pixels: Vec<i16> = (0..rows * columns * frames)
        .map(|_| rng.random_range(-1024..=2000))
        .collect();
    let input = i16_frames(&pixels, rows, columns);
    let mut s = spec(clip(-1000.0, 1000.0), [64, 64]);
    s.channels = 3;
    compare(&input, &s, "3 frames, 3 channels");
    s.letterbox = true;
    compare(&input, &s, "letterbox");
    // 120×90 → 20×15 shrinks by 6: the anti-aliasing filter.
    s.target = [20, 15];
    s.letterbox = false;
    compare(&input, &s, "anti-aliased ÷6");
    s.normalisation = Normalisation::MinMax {
        low: -1.0,
        high: 1.0,
    };
    compare(&input, &s, "min-max normalisation");
}

#[test]
fn area_resampling_matches_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let (rows, columns, frames) = (131, 97, 2);
    let pixels: Vec<i16> = (0..rows * columns * frames)
        .map(|_| rng.random_range(-1024..=2000))
        .collect();
    let input = i16_frames(&pixels, rows, columns);
    let hu = clip(-1000.0, 400.0);
    // Whole, fractional and mixed scales: ÷2-ish on one axis, enlarging on the other, ÷7.
    for target in [[65, 48], [88, 60], [40, 200], [19, 14], [131, 97], [1, 1]] {
        let mut s = spec(hu, target);
        s.resample = Resample::Area;
        compare(&input, &s, &format!("area → {target:?}"));
        s.letterbox = true;
        compare(&input, &s, &format!("area, letterbox → {target:?}"));
    }
}

#[test]
fn a_large_image_shrinks_to_the_model_size() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (rows, columns) = (3001, 2047);
    let pixels = random_u16(&mut rng, rows * columns, 16383);
    let input = Frames {
        rows,
        columns,
        frames: 1,
        pixels: Pixels::U16(&pixels),
    };
    let mut s = spec(window(8000.0, 12000.0, VoiFunction::Linear), [256, 256]);
    s.letterbox = true;
    s.invert = true;
    let worst = compare(&input, &s, "3001×2047 → 256×256");
    eprintln!("large image: max abs error {worst:e}");
}

#[test]
fn frames_larger_than_an_upload_chunk_go_up_one_launch_each() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Each 1500×1500 16-bit frame (4.5 MB) exceeds the upload chunk: three launches, each
    // writing its own third of the output.
    let (rows, columns, frames) = (1500, 1500, 3);
    assert!((rows * columns * 2) as u64 > radserve_kernels::fused::UPLOAD_CHUNK_BYTES);
    let pixels: Vec<i16> = (0..rows * columns * frames)
        .map(|i| (i / (rows * columns)) as i16 * 700 - 1000 + rng.random_range(0..200))
        .collect();
    let input = i16_frames(&pixels, rows, columns);
    let mut s = spec(clip(-1024.0, 1500.0), [256, 256]);
    s.resample = Resample::Area;
    compare(&input, &s, "3 chunked frames");
}

#[test]
fn render_matches_the_reference_within_one_level() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let pixels = random_u16(&mut rng, 77 * 61, 4095);
    let input = Frames {
        rows: 77,
        columns: 61,
        frames: 1,
        pixels: Pixels::U16(&pixels),
    };
    let s = spec(window(2000.0, 3000.0, VoiFunction::Linear), [33, 29]);
    let expected = reference::render_u8(&input, &s).expect("reference");
    let actual = gpu().render_u8(&input, &s).expect("kernel");
    assert_eq!(actual.len(), 33 * 29);
    // Rounding at exactly .5 may fall either way after float differences: one level at most.
    let worst = actual
        .iter()
        .zip(&expected)
        .map(|(a, e)| a.abs_diff(*e))
        .max()
        .unwrap_or(0);
    assert!(worst <= 1, "display values differ by {worst}");
    let same = actual.iter().zip(&expected).filter(|(a, e)| a == e).count();
    assert!(
        same * 100 >= actual.len() * 99,
        "{same} of {} equal",
        actual.len()
    );
}

#[test]
fn bad_input_is_refused_before_launch() {
    let pixels = [0u16; 10];
    let clip = Intensity::Clip { min: 0.0, max: 1.0 };
    let mismatched = Frames {
        rows: 2,
        columns: 2,
        frames: 3,
        pixels: Pixels::U16(&pixels),
    };
    let err = gpu()
        .preprocess(&mismatched, &spec(clip, [2, 2]))
        .expect_err("frame count does not match the buffer");
    assert!(
        matches!(
            err,
            KernelError::Preprocess(PreprocessError::LengthMismatch { .. })
        ),
        "{err}"
    );
    let empty = Frames {
        rows: 0,
        columns: 0,
        frames: 1,
        pixels: Pixels::U16(&[]),
    };
    let err = gpu()
        .render_u8(&empty, &spec(clip, [2, 2]))
        .expect_err("zero-sized image");
    assert!(err.to_string().contains("0×0"), "{err}");
    let input = Frames {
        rows: 2,
        columns: 5,
        frames: 1,
        pixels: Pixels::U16(&pixels),
    };
    let err = gpu()
        .preprocess(&input, &spec(clip, [0, 256]))
        .expect_err("target size 0");
    assert!(
        matches!(
            err,
            KernelError::Preprocess(PreprocessError::BadTargetSize { .. })
        ),
        "{err}"
    );
}
