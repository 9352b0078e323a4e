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
