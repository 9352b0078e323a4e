//! Device selection: each choice gives the backend it names or a message saying what is missing.

use radserve_models::device::{DeviceChoice, DeviceError, select_device};

#[test]
fn cpu_is_the_flex_backend() {
    let selected = select_device(DeviceChoice::Cpu).expect("cpu");
    assert_eq!(selected.backend, "flex");
    assert!(!selected.is_gpu());
}

#[test]
fn cuda_without_the_feature_says_how_to_get_it() {
    if cfg!(feature = "cuda") {
        return;
    }
    let err = select_device(DeviceChoice::Cuda).expect_err("no cuda in this build");
    assert_eq!(err, DeviceError::CudaNotBuilt);
    assert!(err.to_string().contains("--features cuda"));
}

#[test]
fn wgpu_finds_an_adapter_and_auto_explains_its_choice() {
    // The test machines have Mesa's lavapipe (a software adapter) and no GPU.
    let wgpu = select_device(DeviceChoice::Wgpu).expect("a wgpu adapter (mesa-vulkan-drivers)");
    assert_eq!(wgpu.backend, "wgpu");
    let auto = select_device(DeviceChoice::Auto).expect("auto never fails");
    if wgpu.is_gpu() {
        assert_eq!(
            auto.backend, "wgpu",
            "auto takes a real GPU: {}",
            auto.reason
        );
    } else {
        assert_eq!(
            auto.backend, "flex",
            "auto prefers the CPU backend to a software adapter"
        );
        assert!(
            auto.reason.contains(&wgpu.adapter),
            "reason names what it saw: {}",
            auto.reason
        );
    }
}

#[test]
fn unknown_choices_are_refused() {
    let err = "tpu".parse::<DeviceChoice>().expect_err("unknown");
    assert!(err.to_string().contains("auto, wgpu, vulkan, cuda or cpu"));
    assert_eq!("vulkan".parse::<DeviceChoice>(), Ok(DeviceChoice::Vulkan));
}

/// `auto` on a machine without a GPU starts no device runtime: CubeCL's runtime threads
/// (named `DSD-…`) never exit and wake every 150 µs. This file's other tests run in the same
/// process, so the check reads the threads right after `auto` in its own process.
#[test]
fn auto_without_a_gpu_starts_no_device_thread() {
    if std::env::var_os("RADSERVE_DEVICE_PROBE_CHILD").is_none() {
        let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "auto_without_a_gpu_starts_no_device_thread",
                "--test-threads=1",
            ])
            .env("RADSERVE_DEVICE_PROBE_CHILD", "1")
            .status()
            .expect("the test binary runs again");
        assert!(status.success(), "the check in a fresh process failed");
        return;
    }
    let auto = select_device(DeviceChoice::Auto).expect("auto never fails");
    if auto.is_gpu() {
        return;
    }
    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc (Linux)")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    assert!(
        !threads.iter().any(|t| t.starts_with("DSD")),
        "auto chose {} and left device threads: {threads:?}",
        auto.backend
    );
}
