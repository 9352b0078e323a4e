//! Forward-pass throughput (images/s) of radserve's model architectures, on burn's CPU backend
//! (flex) and on wgpu.
//!
//! `cargo bench --profile dev -p radserve-benches --bench model_forward`
//!
//! The peer is `benches/pytorch/forward_throughput.py` (same architectures, same input sizes);
//! `bash benches/model_compare.sh` runs both and prints the ratio table (see benches/README.md,
//! "Model forward pass").
//!
//! - `resnet18`, `resnet34`, `densenet121`: 1 input channel, 4 outputs, input N×1×224×224.
//! - `unet`: MONAI BasicUNet layout, 1 in, 1 out, features (32, 32, 64, 128, 256, 32), N×1×256×256.
//! - `densenet-demo`, `unet-demo`: the demo packages' own architectures and input sizes, read
//!   from `models/zoo/{chest-xray-findings,ct-lung-nodule}/model.toml`. What the server's
//!   batcher runs, so their batch scaling bounds what batching can gain.
//!
//! One criterion group per architecture, one case per device and batch size
//! (`<arch>/<device>/<batch>`), `Throughput::Elements(batch)` so criterion prints images/s.
//! Each case is warmed up (two forwards read back: wgpu autotunes its kernels on the first
//! ones) before criterion measures it; every measured forward reads its output back to the host,
//! so lazy / asynchronous backends are timed to completion.
//!
//! Environment (all optional):
//! - `RADSERVE_BENCH_DEVICES=cpu,wgpu` — devices (`cpu` = flex, `wgpu` = what
//!   `select_device(Wgpu)` finds; on a machine without GPU that is Mesa's lavapipe, software
//!   Vulkan on the same CPU cores). A missing wgpu adapter is skipped with a note.
//! - `RADSERVE_BENCH_BATCHES=1,4,8,16` — batch sizes.
//! - `RADSERVE_BENCH_ARCHS=resnet18,resnet34,densenet121,unet` — architectures.
//! - `RADSERVE_BENCH_WEIGHTS=DIR` — load `DIR/<arch>.safetensors` (written by the Python peer's
//!   `--weights-out`), so both sides run the very same weights; otherwise seeded random init.
//! - `RADSERVE_BENCH_SAMPLES=10` — criterion samples per case (10 is criterion's minimum).
//! - `RADSERVE_BENCH_SECONDS=5` — criterion's target measuring time per case; with flat sampling
//!   a case whose forward is slower than `SECONDS / SAMPLES` still runs exactly SAMPLES forwards.
//!
//! The CPU backend's thread pool is rayon's global pool (one thread per core unless
//! `RAYON_NUM_THREADS` says otherwise); the Python peer uses `--threads 2`.

use std::path::PathBuf;
use std::time::Duration;

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use radserve_benches::{env_list, env_number};
use radserve_models::architecture::{
    ArchitectureConfig, DenseNetConfig, Network, ResNetConfig, UNetConfig,
};
use radserve_models::device::{DeviceChoice, select_device};
use radserve_models::package::ModelPackage;
use radserve_models::weights;

const ARCHS: [&str; 6] = [
    "resnet18",
    "resnet34",
    "densenet121",
    "unet",
    "densenet-demo",
    "unet-demo",
];
const SEED: u64 = 0;

/// The architecture and its input height × width, as the Python peer builds them.
fn architecture(arch: &str) -> (ArchitectureConfig, usize) {
    match arch {
        "resnet18" | "resnet34" => (
            ArchitectureConfig::Resnet(ResNetConfig {
                depth: if arch == "resnet18" { 18 } else { 34 },
                in_channels: 1,
                num_outputs: 4,
                base_width: 64,
            }),
            224,
        ),
        "densenet121" => (
            ArchitectureConfig::Densenet(DenseNetConfig::densenet121(1, 4)),
            224,
        ),
        "unet" => (
            ArchitectureConfig::Unet(UNetConfig {
                in_channels: 1,
                num_outputs: 1,
                features: [32, 32, 64, 128, 256, 32],
            }),
            256,
        ),
        "densenet-demo" => demo_architecture("chest-xray-findings"),
        "unet-demo" => demo_architecture("ct-lung-nodule"),
        other => panic!(
            "unknown architecture {other:?}: choose from {}",
            ARCHS.join(",")
        ),
    }
}

/// A demo package's architecture and input edge, read from its `model.toml` in `models/zoo/`
/// (the weights are not touched).
fn demo_architecture(package: &str) -> (ArchitectureConfig, usize) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/zoo")
        .join(package);
    let manifest = ModelPackage::open(&dir)
        .unwrap_or_else(|e| panic!("{package}: {e}"))
        .manifest;
    (manifest.architecture, manifest.input.target_size[0])
}

/// The devices asked for, by bench name; wgpu is left out, with a note, when absent.
fn devices() -> Vec<(&'static str, Device)> {
    let mut out = Vec::new();
    for name in env_list("RADSERVE_BENCH_DEVICES", "cpu,wgpu") {
        match name.as_str() {
            "cpu" => out.push(("cpu", Device::flex())),
            "wgpu" => match select_device(DeviceChoice::Wgpu) {
                Ok(selected) => {
                    eprintln!(
                        "model_forward: wgpu adapter {:?} ({}){}",
                        selected.adapter,
                        selected.reason,
                        if selected.is_gpu() {
                            ""
                        } else {
                            " — a software adapter: the wgpu figures are CPU figures"
                        }
                    );
                    out.push(("wgpu", selected.device));
                }
                Err(e) => eprintln!("model_forward: skipping wgpu: {e}"),
            },
            other => panic!("RADSERVE_BENCH_DEVICES: unknown device {other:?} (use cpu, wgpu)"),
        }
    }
    out
}

/// The network on `device`: the peer's weights when `RADSERVE_BENCH_WEIGHTS` is set, else
/// seeded random init (burn's initialisers; the values do not change the work done).
fn network(arch: &str, config: &ArchitectureConfig, device: &Device) -> Network {
    device.seed(SEED);
    let mut network = config.init(device).expect("valid architecture");
    if let Some(dir) = std::env::var_os("RADSERVE_BENCH_WEIGHTS") {
        let path = PathBuf::from(dir).join(format!("{arch}.safetensors"));
        let report = weights::load_file(&mut network, config, &path)
            .unwrap_or_else(|e| panic!("{arch}: loading {}: {e}", path.display()));
        eprintln!(
            "model_forward: {arch}: {} tensors from {}",
            report.tensors_applied,
            path.display()
        );
    }
    network
}

/// One forward pass, waited for: the output is read back to the host.
fn forward(network: &Network, input: &Tensor<4>) -> usize {
    let (_, values) = network.forward(input.clone()).into_values();
    values.into_data().num_elements()
}

fn model_forward(c: &mut Criterion) {
    let archs = env_list("RADSERVE_BENCH_ARCHS", &ARCHS.join(","));
    let batches: Vec<usize> = env_list("RADSERVE_BENCH_BATCHES", "1,4,8,16")
        .iter()
        .map(|b| match b.parse() {
            Ok(n) if n > 0 => n,
            _ => panic!("RADSERVE_BENCH_BATCHES: {b:?} is not a positive integer"),
        })
        .collect();
    let samples: usize = env_number("RADSERVE_BENCH_SAMPLES", 10);
    let seconds: f64 = env_number("RADSERVE_BENCH_SECONDS", 5.0);
    let devices = devices();

    for arch in &archs {
        let (config, edge) = architecture(arch);
        let mut group = c.benchmark_group(arch.as_str());
        group
            .sample_size(samples.max(10))
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs_f64(seconds));
        for (device_name, device) in &devices {
            let network = network(arch, &config, device);
            for &batch in &batches {
                device.seed(SEED + batch as u64);
                let input = Tensor::<4>::random(
                    [batch, config.in_channels(), edge, edge],
                    Distribution::Normal(0.0, 1.0),
                    device,
                );
                group.throughput(Throughput::Elements(batch as u64));
                // criterion calls the closure once per warm-up run and sample, and never for a
                // case its filter (`cargo bench ... -- unet/cpu/8`) leaves out.
                let mut warmed = false;
                group.bench_with_input(
                    BenchmarkId::new(*device_name, batch),
                    &input,
                    |b, input| {
                        if !warmed {
                            // Autotune, allocator pools, lazy init: before anything is timed.
                            for _ in 0..2 {
                                forward(&network, input);
                            }
                            warmed = true;
                        }
                        b.iter(|| forward(&network, input))
                    },
                );
            }
        }
        group.finish();
    }
}

criterion_group!(benches, model_forward);
criterion_main!(benches);
