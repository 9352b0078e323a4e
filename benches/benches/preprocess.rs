//! Fused preprocessing vs the same transform as a chain of burn tensor operations on the same
//! device vs the CPU reference: 1, 8 and 32 frames of 512×512 i16 (CT) → 256×256 f32.
//!
//! ```sh
//! XDG_RUNTIME_DIR=/tmp cargo bench --profile dev -p radserve-benches --bench preprocess
//! ```
//!
//! Every case starts from the stored pixels in host memory and ends with the model input on
//! the device, synchronised (`Device::sync`), never read back:
//! - `fused_kernel/wgpu`: `radserve_kernels::model_input::preprocess_to_tensor` — the CubeCL
//!   kernel, pixels uploaded once as packed 16-bit words;
//! - `op_chain/{wgpu,flex}`: upload as an int tensor, cast, rescale, window (LINEAR), bilinear
//!   `interpolate` to 256×256 (`align_corners = false`, the same as the kernel at 2×), normalise
//!   — what a model would do without the kernel;
//! - `reference/flex`: the plain-Rust reference, then the values moved into a flex tensor —
//!   the CPU backend's path;
//! - `upload_only/wgpu`: only the upload of the stored pixels to the device (what the fused
//!   kernel starts with), to show how much of its time is transfer.
//!
//! wgpu here is Mesa's lavapipe (a CPU rasteriser): the figures say how the kernel compares
//! with the op chain on the same adapter, not what a GPU does. `RADSERVE_BENCH_FRAMES=1,8,32`
//! and `RADSERVE_BENCH_DEVICES=wgpu,flex` narrow the run.

use std::time::Duration;

use burn::backend::DispatchDevice;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, DeviceType, Int, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cubecl::prelude::CubeElement;
use radserve_benches::env_list;
use radserve_kernels::model_input::preprocess_to_tensor;
use radserve_kernels::{
    Frames, Intensity, Normalisation, Pixels, PreprocessSpec, Resample, VoiFunction,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const EDGE: usize = 512;
const TARGET: usize = 256;
const SLOPE: f32 = 1.0;
const INTERCEPT: f32 = -1024.0;
const CENTER: f32 = -600.0;
const WIDTH: f32 = 1500.0;
const MEAN: f32 = 0.5;
const STD: f32 = 0.25;

fn spec() -> PreprocessSpec {
    PreprocessSpec {
        rescale_slope: SLOPE,
        rescale_intercept: INTERCEPT,
        intensity: Intensity::Window {
            center: CENTER,
            width: WIDTH,
            function: VoiFunction::Linear,
        },
        invert: false,
        target: [TARGET, TARGET],
        resample: Resample::Bilinear,
        letterbox: false,
        normalisation: Normalisation::MeanStd {
            mean: MEAN,
            std: STD,
        },
        channels: 1,
    }
}

/// The same maths as burn operations; LINEAR as a clamp of its middle segment.
fn op_chain(stored: &[i32], frames: usize, device: &Device) -> Tensor<4> {
    let data = TensorData::new(stored.to_vec(), [frames, 1, EDGE, EDGE]);
    let values = Tensor::<4, Int>::from_data(data, device).float() * SLOPE + INTERCEPT;
    let unit = ((values - (CENTER - 0.5)) / (WIDTH - 1.0) + 0.5).clamp(0.0, 1.0);
    let resized = interpolate(
        unit,
        InterpolateOptions::new(InterpolateMode::Bilinear)
            .with_align_corners(false)
            .with_output_size([TARGET, TARGET]),
    );
    (resized - MEAN) / STD
}

fn devices() -> Vec<(&'static str, Device)> {
    let mut found = Vec::new();
    for name in env_list("RADSERVE_BENCH_DEVICES", "wgpu,flex") {
        match name.as_str() {
            "flex" | "cpu" => found.push(("flex", Device::flex())),
            "wgpu" => match Device::enumerate(DeviceType::Wgpu)
                .into_vec()
                .into_iter()
                .next()
            {
                Some(device) => found.push(("wgpu", device)),
                None => eprintln!("no wgpu adapter: wgpu cases skipped"),
            },
            other => panic!("RADSERVE_BENCH_DEVICES: unknown device {other:?} (use wgpu, flex)"),
        }
    }
    found
}

fn bench_preprocess(c: &mut Criterion) {
    let devices = devices();
    let spec = spec();
    for frames in env_list("RADSERVE_BENCH_FRAMES", "1,8,32") {
        let frames: usize = frames.parse().expect("RADSERVE_BENCH_FRAMES: numbers");
        let mut rng = ChaCha8Rng::seed_from_u64(frames as u64);
        let stored: Vec<i16> = (0..frames * EDGE * EDGE)
            .map(|_| rng.random_range(0..=3071))
            .collect();
        let widened: Vec<i32> = stored.iter().map(|&v| i32::from(v)).collect();
        let input = Frames {
            rows: EDGE,
            columns: EDGE,
            frames,
            pixels: Pixels::I16(&stored),
        };
        let mut group = c.benchmark_group(format!("preprocess_{frames}x512x512_i16"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(4))
            .warm_up_time(Duration::from_secs(1))
            .throughput(Throughput::Elements(frames as u64));
        for (name, device) in &devices {
            let fused_name = if *name == "flex" {
                "reference"
            } else {
                "fused_kernel"
            };
            group.bench_function(BenchmarkId::new(fused_name, name), |b| {
                b.iter(|| {
                    let tensor = preprocess_to_tensor(device, &input, &spec).expect("preprocess");
                    device.sync().expect("sync");
                    tensor
                })
            });
            if let DispatchDevice::Cube(cube_device) = device.as_dispatch() {
                let client = cube_device.client();
                group.bench_function(BenchmarkId::new("upload_only", name), |b| {
                    b.iter(|| {
                        let handle = client.create_from_slice(i16::as_bytes(&stored));
                        cubecl::future::block_on(client.sync()).expect("sync");
                        handle
                    })
                });
            }
            group.bench_function(BenchmarkId::new("op_chain", name), |b| {
                b.iter(|| {
                    let tensor = op_chain(&widened, frames, device);
                    device.sync().expect("sync");
                    tensor
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_preprocess);
criterion_main!(benches);
