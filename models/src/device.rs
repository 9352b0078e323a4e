//! Choosing the burn device the models run on.
//!
//! `auto` prefers a real GPU: CUDA when this build has the `cuda` feature and a CUDA device is
//! present, else a wgpu adapter that is a physical card. A software adapter (Mesa's lavapipe,
//! which wgpu reports with no card behind it) is not chosen by `auto`: burn's pure-Rust CPU
//! backend (flex) is several times faster than shaders emulated on the same cores. The forced
//! choices (`wgpu`, `vulkan`, `cuda`, `cpu`) take what they name, software adapters included,
//! and fail with a message saying what is missing. `cuda` and `vulkan` (wgpu pinned to Vulkan
//! with CubeCL's SPIR-V compiler) are cargo features; plain `wgpu` already uses Vulkan where the
//! machine has it, through WGSL.
//!
//! `auto` looks at the adapters through wgpu itself before it asks burn for one: burn's
//! enumeration starts a CubeCL device runtime for every adapter it lists, and that runtime's
//! thread never exits and wakes every 150 µs (about 8 % of a core, measured on lavapipe),
//! even when the CPU backend is then chosen.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use burn::tensor::{Device, DeviceType};

/// The `--device` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Wgpu,
    Vulkan,
    Cuda,
    Cpu,
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "wgpu" => Ok(DeviceChoice::Wgpu),
            "vulkan" => Ok(DeviceChoice::Vulkan),
            "cuda" => Ok(DeviceChoice::Cuda),
            "cpu" => Ok(DeviceChoice::Cpu),
            other => Err(DeviceError::UnknownChoice(other.to_string())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Wgpu => "wgpu",
            DeviceChoice::Vulkan => "vulkan",
            DeviceChoice::Cuda => "cuda",
            DeviceChoice::Cpu => "cpu",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`: use auto, wgpu, vulkan, cuda or cpu")]
    UnknownChoice(String),
    #[error(
        "device `{0}` asked for, but no {0} adapter was found: install a GPU driver or, for a software one, Mesa's lavapipe (Debian: apt-get install mesa-vulkan-drivers)"
    )]
    NoAdapter(DeviceChoice),
    #[error(
        "device `cuda` asked for, but this build has no CUDA support: rebuild with `--features cuda` (needs the CUDA toolkit)"
    )]
    CudaNotBuilt,
    #[error(
        "device `vulkan` asked for, but this build has no SPIR-V Vulkan path: use `wgpu` (which runs on Vulkan where the machine has it) or rebuild with `--features vulkan`"
    )]
    VulkanNotBuilt,
    #[error("device `cuda` asked for, but no CUDA device was found")]
    NoCudaDevice,
}

/// The device chosen, and what to tell the operator about it.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    pub device: Device,
    /// `flex`, `wgpu`, `vulkan` or `cuda`.
    pub backend: &'static str,
    /// The adapter's own name (`llvmpipe (LLVM 19.1.7, 256 bits)`, `NVIDIA L4`, `CPU`).
    pub adapter: String,
    /// Why this one.
    pub reason: String,
}

impl SelectedDevice {
    /// Whether this runs on a real GPU (not the CPU backend, not a software adapter).
    pub fn is_gpu(&self) -> bool {
        self.backend != "flex" && !self.reason.contains("software")
    }
}

/// An adapter found by enumeration, and whether a physical card backs it.
struct Found {
    device: Device,
    name: String,
    physical: bool,
}

fn enumerate(device_type: DeviceType) -> Vec<Found> {
    Device::enumerate(device_type)
        .into_vec()
        .into_iter()
        .map(|device| {
            let identity = device.identity();
            Found {
                name: identity
                    .as_ref()
                    .map_or_else(|| "unnamed adapter".to_string(), |id| id.name.clone()),
                physical: identity.is_some_and(|id| id.physical.is_some()),
                device,
            }
        })
        .collect()
}

/// The wgpu adapters (name and API, whether a card backs it), listed by wgpu without starting any
/// device: a CPU adapter (lavapipe, llvmpipe) is software, as CubeCL judges it too.
fn wgpu_adapters() -> Vec<(String, bool)> {
    let instance = wgpu::Instance::default();
    let listing = std::pin::pin!(instance.enumerate_adapters(wgpu::Backends::all()));
    // Native enumeration is synchronous behind its future: it is ready on the first poll.
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    let std::task::Poll::Ready(adapters) = listing.poll(&mut context) else {
        tracing::warn!("wgpu adapter enumeration did not complete at once; assuming none");
        return Vec::new();
    };
    adapters
        .iter()
        .map(|adapter| {
            let info = adapter.get_info();
            let name = format!("{} ({:?})", info.name, info.backend);
            (name, info.device_type != wgpu::DeviceType::Cpu)
        })
        .collect()
}

fn flex(reason: String) -> SelectedDevice {
    SelectedDevice {
        device: Device::flex(),
        backend: "flex",
        adapter: "CPU".to_string(),
        reason,
    }
}

fn pick(found: Found, backend: &'static str, reason: String) -> SelectedDevice {
    let kind = if found.physical {
        "GPU"
    } else {
        "software adapter"
    };
    SelectedDevice {
        device: found.device,
        backend,
        adapter: found.name,
        reason: format!("{reason} ({kind})"),
    }
}

#[cfg(feature = "cuda")]
fn cuda_devices() -> Vec<Found> {
    enumerate(DeviceType::Cuda)
}

#[cfg(not(feature = "cuda"))]
fn cuda_devices() -> Vec<Found> {
    Vec::new()
}

#[cfg(feature = "vulkan")]
fn vulkan_devices() -> Result<Vec<Found>, DeviceError> {
    Ok(enumerate(DeviceType::Vulkan))
}

#[cfg(not(feature = "vulkan"))]
fn vulkan_devices() -> Result<Vec<Found>, DeviceError> {
    Err(DeviceError::VulkanNotBuilt)
}

/// Picks the device for `choice`, logging which adapter and why.
pub fn select_device(choice: DeviceChoice) -> Result<SelectedDevice, DeviceError> {
    let selected = match choice {
        DeviceChoice::Cpu => flex("asked for the CPU".to_string()),
        DeviceChoice::Cuda => {
            if !cfg!(feature = "cuda") {
                return Err(DeviceError::CudaNotBuilt);
            }
            let found = cuda_devices()
                .into_iter()
                .next()
                .ok_or(DeviceError::NoCudaDevice)?;
            pick(found, "cuda", "asked for CUDA".to_string())
        }
        DeviceChoice::Wgpu => {
            let found = enumerate(DeviceType::Wgpu)
                .into_iter()
                .max_by_key(|f| f.physical)
                .ok_or(DeviceError::NoAdapter(choice))?;
            pick(found, "wgpu", "asked for wgpu".to_string())
        }
        DeviceChoice::Vulkan => {
            let found = vulkan_devices()?
                .into_iter()
                .max_by_key(|f| f.physical)
                .ok_or(DeviceError::NoAdapter(choice))?;
            pick(found, "vulkan", "asked for Vulkan".to_string())
        }
        DeviceChoice::Auto => auto(),
    };
    tracing::info!(
        choice = %choice,
        backend = selected.backend,
        adapter = %selected.adapter,
        reason = %selected.reason,
        "model device selected"
    );
    Ok(selected)
}

fn auto() -> SelectedDevice {
    if let Some(found) = cuda_devices().into_iter().next() {
        return pick(found, "cuda", "auto: a CUDA device is present".to_string());
    }
    let adapters = wgpu_adapters();
    let seen: Vec<String> = adapters
        .iter()
        .map(|(name, physical)| {
            let kind = if *physical { "GPU" } else { "software" };
            format!("{name} [{kind}]")
        })
        .collect();
    if adapters.iter().any(|(_, physical)| *physical)
        && let Some(found) = enumerate(DeviceType::Wgpu).into_iter().find(|f| f.physical)
    {
        return pick(
            found,
            "wgpu",
            "auto: a wgpu GPU adapter is present".to_string(),
        );
    }
    let reason = if seen.is_empty() {
        "auto: no GPU adapter found".to_string()
    } else {
        format!(
            "auto: no GPU adapter among {}; the CPU backend beats a software adapter",
            seen.join(", ")
        )
    };
    flex(reason)
}
