//! Parity with PyTorch: our architectures, loaded with weights written by PyTorch, give the
//! outputs PyTorch gave for the same inputs (max abs error ≤ 1e-4 in f32), on the CPU backend
//! and on wgpu. Fixtures: `tests/fixtures/parity/`, made by `make_parity_fixtures.py` there
//! (PyTorch, torchvision, MONAI); CI needs no torch.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use radserve_models::architecture::{
    ArchitectureConfig, DenseNetConfig, NetworkOutput, ResNetConfig, UNetConfig,
};
use radserve_models::device::{DeviceChoice, select_device};
use radserve_models::weights::{self, WeightsError};
use safetensors::SafeTensors;

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

/// The configurations `make_parity_fixtures.py` builds, by fixture name.
fn config(name: &str) -> ArchitectureConfig {
    match name {
        "resnet18_small" | "resnet34_small" => ArchitectureConfig::Resnet(ResNetConfig {
            depth: if name == "resnet18_small" { 18 } else { 34 },
            in_channels: 1,
            num_outputs: if name == "resnet18_small" { 3 } else { 2 },
            base_width: 8,
        }),
        "densenet121_small" => ArchitectureConfig::Densenet(DenseNetConfig {
            growth_rate: 8,
            block_config: [6, 12, 24, 16],
            num_init_features: 16,
            bn_size: 2,
            ..DenseNetConfig::densenet121(1, 3)
        }),
        "basicunet_small" | "basicunet_small_rect" => ArchitectureConfig::Unet(UNetConfig {
            in_channels: 1,
            num_outputs: 2,
            features: [4, 4, 8, 16, 32, 4],
        }),
        other => panic!("no configuration for fixture {other}"),
    }
}

fn read_tensor(bytes: &[u8], name: &str) -> TensorData {
    let file = SafeTensors::deserialize(bytes).expect("io fixture is safetensors");
    let view = file.tensor(name).expect("tensor in io fixture");
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    TensorData::new(values, view.shape().to_vec())
}

/// Loads fixture `name` from `weights_file` on `device` and compares with PyTorch's output.
fn check_parity(name: &str, weights_file: &str, device: &Device) {
    let architecture = config(name);
    let mut network = architecture.init(device).expect("valid config");
    let weights_name = weights_file.replace(name, name.trim_end_matches("_rect"));
    let report = weights::load_file(&mut network, &architecture, &fixtures().join(&weights_name))
        .unwrap_or_else(|e| panic!("{name} from {weights_name}: {e}"));
    assert!(report.tensors_applied > 0);

    let io = std::fs::read(fixtures().join(format!("{name}.io.safetensors"))).expect("io fixture");
    let input = Tensor::<4>::from_data(read_tensor(&io, "input"), device);
    let expected = read_tensor(&io, "output");
    let (shape, values) = match network.forward_checked(&architecture, input) {
        Ok(output @ (NetworkOutput::Scores(_) | NetworkOutput::Maps(_))) => output.into_values(),
        Err(e) => panic!("{name}: {e}"),
    };
    assert_eq!(shape, expected.shape().to_vec(), "{name}: output shape");
    let got = values.into_data().try_to_vec::<f32>().expect("f32 output");
    let want = expected.try_to_vec::<f32>().expect("f32 reference");
    let max_error = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let max_reference = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        max_error <= TOLERANCE,
        "{name} ({weights_file}) on {device:?}: max abs error {max_error} > {TOLERANCE} (outputs up to {max_reference})"
    );
}

const FIXTURES: [&str; 5] = [
    "resnet18_small",
    "resnet34_small",
    "densenet121_small",
    "basicunet_small",
    "basicunet_small_rect",
];

#[test]
fn pytorch_state_dicts_match_on_the_cpu_backend() {
    let device = Device::flex();
    for name in FIXTURES {
        check_parity(name, &format!("{name}.pt"), &device);
    }
}

#[test]
fn safetensors_match_on_the_cpu_backend() {
    let device = Device::flex();
    for name in FIXTURES {
        check_parity(name, &format!("{name}.safetensors"), &device);
    }
}

#[test]
fn pytorch_state_dicts_match_on_wgpu() {
    // lavapipe on CI and on machines without a GPU; a real adapter where there is one.
    let selected =
        select_device(DeviceChoice::Wgpu).expect("a wgpu adapter (install mesa-vulkan-drivers)");
    for name in FIXTURES {
        check_parity(name, &format!("{name}.pt"), &selected.device);
    }
}

#[test]
fn burnpack_round_trip_keeps_the_outputs() {
    let device = Device::flex();
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["resnet18_small", "densenet121_small", "basicunet_small"] {
        let architecture = config(name);
        let mut network = architecture.init(&device).expect("config");
        weights::load_file(
            &mut network,
            &architecture,
            &fixtures().join(format!("{name}.pt")),
        )
        .expect("load");
        let path = dir.path().join(format!("{name}.bpk"));
        weights::save_burnpack(&network, &path).expect("save");
        check_parity(name, &path.to_string_lossy(), &device);
    }
}

/// Writes a safetensors file with zero tensors of the reference model's names and shapes.
fn zero_state_dict(entries: &[(String, Vec<usize>)], path: &Path) {
    let buffers: Vec<Vec<u8>> = entries
        .iter()
        .map(|(_, shape)| vec![0u8; shape.iter().product::<usize>() * 4])
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = entries
        .iter()
        .zip(&buffers)
        .filter(|((key, _), _)| !key.ends_with("num_batches_tracked"))
        .map(|((key, shape), data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .expect("view");
            (key.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

fn reference_keys(model: &str) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(fixtures().join("reference_keys.json"))
        .expect("reference_keys.json");
    let all: serde_json::Value = serde_json::from_str(&text).expect("json");
    all[model]
        .as_array()
        .unwrap_or_else(|| panic!("{model} in reference_keys.json"))
        .iter()
        .map(|entry| {
            let key = entry[0].as_str().expect("key").to_string();
            let shape = entry[1]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim") as usize)
                .collect();
            (key, shape)
        })
        .collect()
}

/// The key map covers the real full-size torchvision and MONAI models: every tensor of their
/// state_dicts lands on a parameter of ours with the same shape, and none of ours is left over.
#[test]
fn key_maps_cover_the_full_size_reference_models() {
    let device = Device::flex();
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        (
            "resnet18",
            ArchitectureConfig::Resnet(ResNetConfig {
                depth: 18,
                in_channels: 3,
                num_outputs: 1000,
                base_width: 64,
            }),
        ),
        (
            "resnet34",
            ArchitectureConfig::Resnet(ResNetConfig {
                depth: 34,
                in_channels: 3,
                num_outputs: 1000,
                base_width: 64,
            }),
        ),
        (
            "densenet121",
            ArchitectureConfig::Densenet(DenseNetConfig::densenet121(3, 1000)),
        ),
        (
            "basicunet",
            ArchitectureConfig::Unet(UNetConfig {
                in_channels: 1,
                num_outputs: 2,
                features: [32, 32, 64, 128, 256, 32],
            }),
        ),
    ];
    for (model, architecture) in cases {
        let path = dir.path().join(format!("{model}.safetensors"));
        zero_state_dict(&reference_keys(model), &path);
        let mut network = architecture.init(&device).expect("config");
        let report = weights::load_file(&mut network, &architecture, &path)
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        let tensors = reference_keys(model)
            .iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
            .count();
        assert_eq!(
            report.tensors_applied, tensors,
            "{model}: every reference tensor applied"
        );
    }
}

#[test]
fn a_wrong_shape_names_the_parameter() {
    let device = Device::flex();
    // Same fixture, network built one class wider: the classifier no longer fits.
    let mut architecture = config("resnet18_small");
    if let ArchitectureConfig::Resnet(c) = &mut architecture {
        c.num_outputs = 4;
    }
    let mut network = architecture.init(&device).expect("config");
    let err = weights::load_file(
        &mut network,
        &architecture,
        &fixtures().join("resnet18_small.pt"),
    )
    .expect_err("shape mismatch");
    match &err {
        WeightsError::ShapeMismatch { parameter, .. } => {
            assert!(parameter.starts_with("fc."), "{err}")
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
}

#[test]
fn a_missing_weights_file_is_an_error() {
    let device = Device::flex();
    let architecture = config("resnet18_small");
    let mut network = architecture.init(&device).expect("config");
    let err = weights::load_file(&mut network, &architecture, &fixtures().join("nope.pt"))
        .expect_err("missing");
    assert!(err.to_string().contains("no such file"), "{err}");
}
