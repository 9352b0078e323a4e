//! Loading and saving a network's weights: burnpack (ours), PyTorch state_dicts and safetensors.
//!
//! PyTorch files are read through burn-store with [`PyTorchToBurnAdapter`] (it transposes
//! Linear weights and renames norm `weight`/`bias` to `gamma`/`beta`) and the key map below.
//! Every load is checked whole: a tensor of the wrong shape, a parameter the file lacks, or a
//! tensor the network has no place for is an error naming the parameter — a partial load would
//! run with random weights and give plausible-looking nonsense.

use std::path::{Path, PathBuf};

use burn::store::{
    ApplyError, ApplyResult, BurnpackStore, KeyRemapper, ModuleSnapshot, ModuleStore,
    PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::Bytes;

use crate::architecture::{ArchitectureConfig, Network};

/// How a weights file is encoded, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// burn's own format (`.bpk`): what our packages ship.
    Burnpack,
    /// A PyTorch `state_dict` saved with `torch.save` (`.pt`, `.pth`).
    PyTorch,
    /// safetensors in PyTorch's naming (`.safetensors`).
    Safetensors,
}

impl WeightFormat {
    pub fn from_path(path: &Path) -> Result<Self, WeightsError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("bpk") => Ok(WeightFormat::Burnpack),
            Some("pt" | "pth") => Ok(WeightFormat::PyTorch),
            Some("safetensors") => Ok(WeightFormat::Safetensors),
            _ => Err(WeightsError::UnknownFormat(path.to_path_buf())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{0}: unknown weights format (expected .bpk, .pt, .pth or .safetensors)")]
    UnknownFormat(PathBuf),
    #[error("cannot read weights {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write weights {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error(
        "parameter `{parameter}` has shape {found:?} in the weights, the network expects {expected:?}"
    )]
    ShapeMismatch {
        parameter: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("invalid key map pattern {0}")]
    KeyMap(String),
    #[error("parameter `{parameter}` cannot be loaded: {message}")]
    Parameter { parameter: String, message: String },
    #[error("the weights lack {} parameter(s) of the network, first `{}`", .0.len(), .0.first().map(String::as_str).unwrap_or(""))]
    Missing(Vec<String>),
    #[error("the weights hold {} tensor(s) the network has no place for, first `{}`", .0.len(), .0.first().map(String::as_str).unwrap_or(""))]
    Unexpected(Vec<String>),
}

/// Most dense layers a DenseNet block may have (DenseNet-201 has 48, our configs allow 128).
const MAX_DENSE_LAYERS: usize = 128;

/// The renames from a reference implementation's state_dict keys to our module paths, as
/// `(regex, replacement)` pairs applied in order. Documented per architecture in its module.
pub fn key_map(architecture: &ArchitectureConfig) -> Vec<(String, String)> {
    let pair = |from: &str, to: &str| (from.to_string(), to.to_string());
    match architecture {
        // torchvision: `downsample` is an nn.Sequential(conv, bn).
        ArchitectureConfig::Resnet(_) => vec![
            pair(r"\.downsample\.0\.", ".downsample.conv."),
            pair(r"\.downsample\.1\.", ".downsample.bn."),
        ],
        // torchvision: `denselayer1..N` (1-based keys of an nn.ModuleDict) → our list `layers.0..N-1`.
        ArchitectureConfig::Densenet(_) => (1..=MAX_DENSE_LAYERS)
            .map(|n| (format!(r"\.denselayer{n}\."), format!(".layers.{}.", n - 1)))
            .collect(),
        // MONAI: the norm inside `adn` is called `N`; its affine parameters are weight/bias.
        ArchitectureConfig::Unet(_) => vec![
            pair(r"\.adn\.N\.weight$", ".adn.norm.gamma"),
            pair(r"\.adn\.N\.bias$", ".adn.norm.beta"),
        ],
    }
}

/// Tensors a reference state_dict carries that have no counterpart in inference.
fn ignorable_extra(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}

/// Module state that is not a weight (BatchNorm's training flag) and is never in a file.
fn ignorable_missing(path: &str) -> bool {
    path.ends_with(".training")
}

/// What a successful load applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub tensors_applied: usize,
}

/// Loads a weights file of any supported format into `network`.
pub fn load_file(
    network: &mut Network,
    architecture: &ArchitectureConfig,
    path: &Path,
) -> Result<LoadReport, WeightsError> {
    if !path.is_file() {
        return Err(WeightsError::Read {
            path: path.to_path_buf(),
            message: "no such file".into(),
        });
    }
    let read_error = |message: String| WeightsError::Read {
        path: path.to_path_buf(),
        message,
    };
    let remapper = remapper(architecture)?;
    let result = match WeightFormat::from_path(path)? {
        WeightFormat::Burnpack => {
            let mut store = BurnpackStore::from_file(path)
                .allow_partial(true)
                .validate(false);
            apply(network, &mut store).map_err(|e| read_error(e.to_string()))?
        }
        WeightFormat::PyTorch => {
            let mut store = PytorchStore::from_file(path)
                .remap(remapper)
                .allow_partial(true)
                .validate(false);
            apply(network, &mut store).map_err(|e| read_error(e.to_string()))?
        }
        WeightFormat::Safetensors => {
            let mut store = SafetensorsStore::from_file(path)
                .with_from_adapter(PyTorchToBurnAdapter)
                .remap(remapper)
                .allow_partial(true)
                .validate(false);
            apply(network, &mut store).map_err(|e| read_error(e.to_string()))?
        }
    };
    check(result)
}

/// Loads burnpack bytes already in memory (a package reads them once to hash and load).
pub fn load_burnpack_bytes(
    network: &mut Network,
    bytes: Vec<u8>,
    origin: &Path,
) -> Result<LoadReport, WeightsError> {
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes)))
        .allow_partial(true)
        .validate(false);
    let result = apply(network, &mut store).map_err(|e| WeightsError::Read {
        path: origin.to_path_buf(),
        message: e.to_string(),
    })?;
    check(result)
}

/// Saves `network` as burnpack, replacing `path`.
pub fn save_burnpack(network: &Network, path: &Path) -> Result<(), WeightsError> {
    let mut store = BurnpackStore::from_file(path)
        .overwrite(true)
        .auto_extension(false);
    let outcome = match network {
        Network::DenseNet(net) => net.as_ref().save_into(&mut store),
        Network::ResNet(net) => net.as_ref().save_into(&mut store),
        Network::UNet(net) => net.as_ref().save_into(&mut store),
    };
    outcome.map_err(|e| WeightsError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn remapper(architecture: &ArchitectureConfig) -> Result<KeyRemapper, WeightsError> {
    key_map(architecture)
        .iter()
        .try_fold(KeyRemapper::new(), |remapper, (from, to)| {
            remapper
                .add_pattern(from.as_str(), to.as_str())
                .map_err(|e| WeightsError::KeyMap(format!("{from}: {e}")))
        })
}

fn apply<S: ModuleStore>(network: &mut Network, store: &mut S) -> Result<ApplyResult, S::Error> {
    match network {
        Network::DenseNet(net) => net.as_mut().load_from(store),
        Network::ResNet(net) => net.as_mut().load_from(store),
        Network::UNet(net) => net.as_mut().load_from(store),
    }
}

fn check(result: ApplyResult) -> Result<LoadReport, WeightsError> {
    if let Some(error) = result.errors.first() {
        return Err(match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => WeightsError::ShapeMismatch {
                parameter: path.clone(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            },
            ApplyError::DTypeMismatch { path, .. }
            | ApplyError::AdapterError { path, .. }
            | ApplyError::LoadError { path, .. } => WeightsError::Parameter {
                parameter: path.clone(),
                message: error.to_string(),
            },
        });
    }
    let missing: Vec<String> = result
        .missing
        .iter()
        .map(|(path, _)| path.clone())
        .filter(|path| !ignorable_missing(path))
        .collect();
    if !missing.is_empty() {
        return Err(WeightsError::Missing(missing));
    }
    let unexpected: Vec<String> = result
        .unused
        .iter()
        .filter(|key| !ignorable_extra(key))
        .cloned()
        .collect();
    if !unexpected.is_empty() {
        return Err(WeightsError::Unexpected(unexpected));
    }
    Ok(LoadReport {
        tensors_applied: result.applied.len(),
    })
}
