//! Prepare: a decoded image → what its model's batch takes.
//!
//! A package's `[input]` table becomes a `radserve_kernels` spec, so the image is preprocessed
//! on the model's device when its batch runs (see `infer::model_input`). The spec reproduces
//! `radserve_models::preprocess::prepare`, the transform the models were trained with: a linear
//! window (LINEAR_EXACT in PS3.3's terms) or an HU clip to 0..1, MONOCHROME1 inverted, area
//! resampling, mean/std normalisation. The test below holds the two to 1e-4.

use std::sync::Arc;

use radserve_kernels::{
    Intensity as KernelIntensity, Normalisation, PreprocessSpec, Resample, VoiFunction,
};
use radserve_models::package::{InputSpec, Intensity, Photometric};
use radserve_models::preprocess::{PreprocessError, SourceImage, prepare};

use super::decode::DecodedImage;
use crate::infer::model_input::ModelInput;

/// `image` as its batch takes it, for a model with `input` and `channels` input channels. Errors
/// say why the image does not suit the model.
pub fn model_input(
    image: &DecodedImage,
    input: &InputSpec,
    channels: usize,
) -> Result<ModelInput, String> {
    let Some(stored) = &image.stored else {
        return host_input(image, input, channels);
    };
    let spec = kernel_spec(image, input, channels).map_err(|e| e.to_string())?;
    ModelInput::on_device(Arc::clone(stored), spec).map_err(|e| e.to_string())
}

/// The package's preprocessing for this image, in the kernel's terms.
fn kernel_spec(
    image: &DecodedImage,
    input: &InputSpec,
    channels: usize,
) -> Result<PreprocessSpec, PreprocessError> {
    let intensity = match input.intensity {
        Intensity::VoiWindow => {
            let (center, width) = image.voi_window.ok_or(PreprocessError::NoVoiWindow)?;
            if !(width.is_finite() && width > 0.0 && center.is_finite()) {
                return Err(PreprocessError::BadVoiWindow(width));
            }
            linear(center, width)
        }
        Intensity::Window { center, width } => linear(center, width),
        Intensity::HuClip { min, max } => KernelIntensity::Clip {
            min: min as f32,
            max: max as f32,
        },
    };
    let (slope, intercept) = image.rescale;
    Ok(PreprocessSpec {
        rescale_slope: slope as f32,
        rescale_intercept: intercept as f32,
        intensity,
        invert: image.monochrome1 && input.photometric == Photometric::Monochrome2,
        target: input.target_size,
        resample: Resample::Area,
        letterbox: false,
        normalisation: Normalisation::MeanStd {
            mean: input.normalisation.mean as f32,
            std: input.normalisation.std as f32,
        },
        channels,
    })
}

/// `low..high` = `center ∓ width / 2` mapped straight to 0..1, as the trainer does.
fn linear(center: f64, width: f64) -> KernelIntensity {
    KernelIntensity::Window {
        center: center as f32,
        width: width as f32,
        function: VoiFunction::LinearExact,
    }
}

/// For pixel types the kernel does not read: the modality values prepared on the host, the
/// grey plane repeated in each input channel.
fn host_input(
    image: &DecodedImage,
    input: &InputSpec,
    channels: usize,
) -> Result<ModelInput, String> {
    let mut plane = Vec::new();
    prepare(
        &SourceImage {
            rows: image.rows,
            columns: image.columns,
            values: &image.values,
            monochrome1: image.monochrome1,
            voi_window: image.voi_window,
        },
        input,
        &mut plane,
    )
    .map_err(|e| e.to_string())?;
    let mut values = Vec::with_capacity(plane.len() * channels);
    for _ in 0..channels {
        values.extend_from_slice(&plane);
    }
    Ok(ModelInput::Host(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::model_input::{StoredPixels, StoredValues, batch_tensor};
    use burn::tensor::Device;
    use dicom_object::InMemDicomObject;
    use radserve_models::package::Normalisation as PackageNormalisation;

    fn image(stored: StoredValues, rows: usize, columns: usize) -> DecodedImage {
        let (slope, intercept) = (1.0, -1024.0);
        let raw: Vec<f32> = match &stored {
            StoredValues::U8(v) => v.iter().map(|&p| f32::from(p)).collect(),
            StoredValues::U16(v) => v.iter().map(|&p| f32::from(p)).collect(),
            StoredValues::I16(v) => v.iter().map(|&p| f32::from(p)).collect(),
        };
        let values = raw.into_iter().map(|p| p * slope + intercept).collect();
        DecodedImage {
            sop_instance_uid: "1.2.3".into(),
            rows,
            columns,
            values,
            stored: Some(Arc::new(StoredPixels {
                rows,
                columns,
                values: stored,
            })),
            rescale: (f64::from(slope), f64::from(intercept)),
            monochrome1: false,
            voi_window: Some((-600.0, 1500.0)),
            geometry: None,
            dataset: InMemDicomObject::new_empty(),
        }
    }

    fn input_spec(intensity: Intensity, target: [usize; 2]) -> InputSpec {
        InputSpec {
            modalities: vec!["CT".into()],
            body_part: "CHEST".into(),
            photometric: Photometric::Monochrome2,
            target_size: target,
            intensity,
            normalisation: PackageNormalisation {
                mean: 0.3,
                std: 0.3,
            },
            slice_by_slice: true,
        }
    }

    /// The device path's input against the trainer's `prepare`, on `device`.
    fn assert_matches_prepare(device: &Device, name: &str) {
        // A smooth body with noise, in the ranges CT and radiographs store.
        let (rows, columns) = (173, 131);
        let pixels: Vec<u16> = (0..rows * columns)
            .map(|i| {
                let (r, c) = ((i / columns) as f32, (i % columns) as f32);
                (1024.0 + 900.0 * ((r / 17.0).sin() * (c / 11.0).cos()) + (i % 7) as f32 * 40.0)
                    as u16
            })
            .collect();
        let cases = [
            (
                Intensity::HuClip {
                    min: -1000.0,
                    max: 400.0,
                },
                [64, 64],
            ),
            (Intensity::VoiWindow, [40, 33]),
            (
                Intensity::Window {
                    center: 40.0,
                    width: 400.0,
                },
                [256, 200],
            ),
        ];
        for (intensity, target) in cases {
            let mut decoded = image(StoredValues::U16(pixels.clone()), rows, columns);
            for monochrome1 in [false, true] {
                decoded.monochrome1 = monochrome1;
                let spec = input_spec(intensity.clone(), target);
                let Ok(ModelInput::Host(expected)) = host_input(&decoded, &spec, 1) else {
                    panic!("host preparation failed");
                };
                let on_device = model_input(&decoded, &spec, 1).expect("device input");
                assert!(matches!(on_device, ModelInput::Device { .. }));
                let tensor = batch_tensor(device, &[on_device], [1, target[0], target[1]])
                    .expect("batch tensor");
                let actual: Vec<f32> = tensor.into_data().try_to_vec().expect("f32");
                let worst = actual
                    .iter()
                    .zip(&expected)
                    .map(|(a, e)| (a - e).abs())
                    .fold(0.0f32, f32::max);
                assert_eq!(actual.len(), expected.len());
                assert!(
                    worst <= 1e-4,
                    "{name}: {intensity:?} → {target:?}, MONOCHROME1 {monochrome1}: max abs error {worst}"
                );
            }
        }
    }

    #[test]
    fn device_preprocessing_matches_the_trainer_on_the_cpu_backend() {
        assert_matches_prepare(&Device::flex(), "flex");
    }

    #[test]
    fn device_preprocessing_matches_the_trainer_on_wgpu() {
        assert_matches_prepare(&Device::wgpu(Default::default()), "wgpu");
    }

    #[test]
    fn a_batch_of_mixed_images_keeps_its_order() {
        let device = Device::flex();
        let spec = input_spec(
            Intensity::HuClip {
                min: -1000.0,
                max: 400.0,
            },
            [4, 4],
        );
        // Two CT slices share a launch; a uniform 8-bit image and a host-prepared one follow.
        let slice = |level: i16| image(StoredValues::I16(vec![level; 64]), 8, 8);
        let bright = slice(1424);
        let dark = slice(24);
        let mut inputs = vec![
            model_input(&bright, &spec, 1).unwrap(),
            model_input(&dark, &spec, 1).unwrap(),
        ];
        let small = image(StoredValues::U8(vec![255; 16]), 4, 4);
        inputs.push(model_input(&small, &spec, 1).unwrap());
        inputs.push(host_input(&dark, &spec, 1).unwrap());
        let values: Vec<f32> = batch_tensor(&device, &inputs, [1, 4, 4])
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap();
        assert_eq!(values.len(), 4 * 16);
        // 1424 - 1024 = 400 HU → 1 → (1 - 0.3) / 0.3; 24 - 1024 = -1000 HU → 0 → -1;
        // 255 - 1024 = -769 HU → 0.165.
        let normalised = |unit: f32| (unit - 0.3) / 0.3;
        let expect = [
            normalised(1.0),
            normalised(0.0),
            normalised(231.0 / 1400.0),
            normalised(0.0),
        ];
        for (image, e) in values.chunks(16).zip(expect) {
            for v in image {
                assert!((v - e).abs() < 1e-5, "{values:?}");
            }
        }
    }

    #[test]
    fn unsuitable_images_are_refused_before_their_batch() {
        let mut decoded = image(StoredValues::U16(vec![0; 12]), 3, 4);
        decoded.voi_window = None;
        let err = model_input(&decoded, &input_spec(Intensity::VoiWindow, [2, 2]), 1)
            .expect_err("no VOI window");
        assert!(err.contains("WindowCenter"), "{err}");
        let clip = Intensity::HuClip {
            min: -1000.0,
            max: 400.0,
        };
        let err =
            model_input(&decoded, &input_spec(clip.clone(), [0, 2]), 1).expect_err("target 0");
        assert!(err.contains("target size"), "{err}");
        // A buffer that does not fill the image.
        let mut short = image(StoredValues::U16(vec![0; 11]), 3, 4);
        short.values.push(0.0);
        let err = model_input(&short, &input_spec(clip, [2, 2]), 1).expect_err("short");
        assert!(err.contains("buffer holds 11"), "{err}");
    }
}
