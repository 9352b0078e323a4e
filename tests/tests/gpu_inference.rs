//! The server's inference path on wgpu, end to end: on a CubeCL device the images are
//! preprocessed by the fused kernel (`radserve-kernels`) straight into the model's input
//! tensor; on the CPU backend by the kernel's plain-Rust reference. A radiograph sent to
//! `POST /api/v1/infer` on each must give the same probabilities.
//!
//! Here wgpu is Mesa's lavapipe (a CPU rasteriser, installed by `scripts/install-test-deps.sh`);
//! nothing in the path is specific to it, so a GPU adapter runs the same code. The test has a
//! file of its own so that its slow shader compilation does not share the cores with other
//! servers.

use std::path::Path;

use radserve_tests::{
    RadServe, dicom_files, generate_samples, get_json_authorized, http_client, radserve_command,
    workspace_root,
};
use serde_json::Value;

const TOKEN: &str = "gpu-inference-token-5d1f0c37";
const MODEL: &str = "chest-xray-findings";

/// A server with only the radiograph model, warmed at batch size 1, on `device`.
fn serve_on(device: &str, dir: &Path) -> RadServe {
    let config = dir.join(format!("{device}.toml"));
    let package = workspace_root().join("models/zoo").join(MODEL);
    std::fs::write(
        &config,
        format!(
            "[[models]]\npackage = {:?}\nmax_batch_size = 1\n",
            package.display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = radserve_command();
    cmd.env("RADSERVE_ADMIN_TOKEN", TOKEN)
        .env("RADSERVE_DEVICE", device)
        .arg("serve")
        .args(["--dicom-port", "0", "--http-port", "0", "--data"])
        .arg(dir.join(format!("data-{device}")))
        .arg("--config")
        .arg(&config);
    let server = RadServe::start(cmd);
    server.wait_ready();
    server
}

/// The model's probabilities for `body`, by label, and the Server-Timing header.
fn infer(server: &RadServe, body: &[u8]) -> (Vec<(String, f64)>, String) {
    let mut response = http_client()
        .post(&server.url(&format!("/api/v1/infer?model={MODEL}")))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/dicom")
        .send(body)
        .unwrap();
    let status = response.status().as_u16();
    let timing = response
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.body_mut().read_to_string().unwrap();
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let probabilities = answer["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["finding"]["label"].as_str().unwrap().to_owned(),
                f["finding"]["probability"].as_f64().unwrap(),
            )
        })
        .collect();
    (probabilities, timing)
}

#[test]
fn wgpu_with_the_fused_kernel_gives_the_cpu_backends_findings() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated");
    // 1024 px → 256: shrinking by 4, the case where the resampling filter matters most.
    generate_samples(
        &generated,
        &[
            "--seed",
            "8",
            "--ct",
            "0",
            "--xray",
            "2",
            "--xray-size",
            "1024",
        ],
    );
    let files = dicom_files(&generated.join("studies"));
    assert_eq!(files.len(), 2);
    let bodies: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();

    let mut results = Vec::new();
    for device in ["wgpu", "cpu"] {
        let server = serve_on(device, dir.path());
        let (status, models) = get_json_authorized(&server, "/api/v1/models", TOKEN);
        assert_eq!(status, 200, "{models}");
        let backend = models.to_string();
        let expected_backend = if device == "cpu" { "flex" } else { "wgpu" };
        assert!(
            backend.contains(&format!("\"backend\":\"{expected_backend}\"")),
            "{device}: {backend}"
        );
        let answers: Vec<_> = bodies.iter().map(|b| infer(&server, b)).collect();
        for (_, timing) in &answers {
            assert!(timing.contains("preprocess;dur="), "{timing}");
        }
        eprintln!("{device}: {:?}", answers);
        results.push(answers);
    }
    for (image, (on_wgpu, on_cpu)) in results[0].iter().zip(&results[1]).enumerate() {
        assert_eq!(on_wgpu.0.len(), 4, "four labels");
        for ((label, a), (other, b)) in on_wgpu.0.iter().zip(&on_cpu.0) {
            assert_eq!(label, other);
            assert!(
                (a - b).abs() <= 1e-4,
                "image {image}, {label}: wgpu {a} vs CPU backend {b}"
            );
        }
    }
}
