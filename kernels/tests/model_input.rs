//! Preprocessing into a burn tensor: on wgpu (lavapipe here) through the fused kernel with
//! fusion on, on flex through the reference; the values are the reference's and the tensor
//! takes part in further (fused) operations on its device.

use burn::backend::DispatchDevice;
use burn::tensor::{Device, DeviceType, Tensor};
use radserve_kernels::model_input::preprocess_to_tensor;
use radserve_kernels::reference;
use radserve_kernels::{
    Frames, Intensity, Normalisation, Pixels, PreprocessSpec, Resample, VoiFunction,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn ct_frames(pixels: &[i16]) -> Frames<'_> {
    Frames {
        rows: 96,
        columns: 80,
        frames: 2,
        pixels: Pixels::I16(pixels),
    }
}

fn ct_spec() -> PreprocessSpec {
    PreprocessSpec {
        rescale_slope: 1.0,
        rescale_intercept: -1024.0,
        intensity: Intensity::Window {
            center: -600.0,
            width: 1500.0,
            function: VoiFunction::Linear,
        },
        invert: false,
        target: [48, 64],
        resample: Resample::Bilinear,
        letterbox: true,
        normalisation: Normalisation::MeanStd {
            mean: 0.5,
            std: 0.25,
        },
        channels: 3,
    }
}

fn check_on(device: &Device) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let pixels: Vec<i16> = (0..96 * 80 * 2)
        .map(|_| rng.random_range(0..=3000))
        .collect();
    let input = ct_frames(&pixels);
    let expected = reference::preprocess(&input, &ct_spec()).expect("reference");
    let tensor = preprocess_to_tensor(device, &input, &ct_spec()).expect("tensor");
    assert_eq!(tensor.dims(), [2, 3, 48, 64]);
    // A further operation on the device, fused with whatever follows.
    let doubled: Tensor<4> = tensor.clone() * 2.0 + 1.0;
    let values = tensor.into_data().try_to_vec::<f32>().expect("f32 values");
    let worst = values
        .iter()
        .zip(&expected)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-4, "max abs error {worst}");
    let doubled = doubled.into_data().try_to_vec::<f32>().expect("f32 values");
    for (d, e) in doubled.iter().zip(&expected) {
        assert!((d - (e * 2.0 + 1.0)).abs() <= 3e-4, "{d} vs {e}");
    }
}

#[test]
fn wgpu_tensor_holds_the_kernel_output() {
    let device = Device::enumerate(DeviceType::Wgpu)
        .into_vec()
        .into_iter()
        .next()
        .expect("a wgpu adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    // The fused path is taken for CubeCL devices only.
    assert!(matches!(device.as_dispatch(), DispatchDevice::Cube(_)));
    check_on(&device);
}

#[test]
fn flex_tensor_holds_the_reference_output() {
    check_on(&Device::flex());
}

#[test]
fn bad_input_is_an_error_on_both_devices() {
    let pixels = [0i16; 5];
    let input = Frames {
        rows: 2,
        columns: 2,
        frames: 1,
        pixels: Pixels::I16(&pixels),
    };
    for device in [
        Device::flex(),
        Device::enumerate(DeviceType::Wgpu)
            .into_vec()
            .into_iter()
            .next()
            .expect("a wgpu adapter"),
    ] {
        let err = preprocess_to_tensor(&device, &input, &ct_spec()).expect_err("mismatch");
        assert!(err.to_string().contains("buffer holds 5"), "{err}");
    }
}
