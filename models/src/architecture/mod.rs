//! The networks a model package can name, built as burn modules.
//!
//! Each architecture keeps the parameter names of the reference implementation its weights
//! usually come from (torchvision for ResNet and DenseNet, MONAI for the U-Net), so that the
//! key map in [`crate::weights`] stays a handful of documented renames.

pub mod densenet;
pub mod resnet;
pub mod unet;

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use densenet::{DenseNet, DenseNetConfig};
pub use resnet::{ResNet, ResNetConfig};
pub use unet::{UNet, UNetConfig};

/// A configuration the architecture cannot take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid architecture configuration: {0}")]
    Invalid(String),
}

pub(crate) fn check_positive(name: &str, value: usize) -> Result<(), ConfigError> {
    check_range(name, value, 1, 100_000)
}

pub(crate) fn check_range(
    name: &str,
    value: usize,
    min: usize,
    max: usize,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{name} = {value} is outside {min}..={max}"
        )))
    }
}

/// The `[architecture]` table of `model.toml`: which network, and its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum ArchitectureConfig {
    /// torchvision-compatible DenseNet (DenseNet-121 with the default block configuration).
    Densenet(DenseNetConfig),
    /// torchvision-compatible ResNet-18 or ResNet-34.
    Resnet(ResNetConfig),
    /// MONAI `BasicUNet`-compatible 2D U-Net.
    Unet(UNetConfig),
}

/// What a network produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// One score per label: `[batch, labels]`.
    Scores,
    /// One map per label: `[batch, labels, height, width]`.
    Maps,
}

impl ArchitectureConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            ArchitectureConfig::Densenet(config) => config.validate(),
            ArchitectureConfig::Resnet(config) => config.validate(),
            ArchitectureConfig::Unet(config) => config.validate(),
        }
    }

    pub fn in_channels(&self) -> usize {
        match self {
            ArchitectureConfig::Densenet(config) => config.in_channels,
            ArchitectureConfig::Resnet(config) => config.in_channels,
            ArchitectureConfig::Unet(config) => config.in_channels,
        }
    }

    pub fn num_outputs(&self) -> usize {
        match self {
            ArchitectureConfig::Densenet(config) => config.num_outputs,
            ArchitectureConfig::Resnet(config) => config.num_outputs,
            ArchitectureConfig::Unet(config) => config.num_outputs,
        }
    }

    pub fn output_kind(&self) -> OutputKind {
        match self {
            ArchitectureConfig::Unet(_) => OutputKind::Maps,
            _ => OutputKind::Scores,
        }
    }

    /// Smallest input edge the network accepts, and the multiple the edges must be.
    pub fn input_constraint(&self) -> (usize, usize) {
        match self {
            // Five 2× reductions (stem conv, max-pool, three transitions / strided stages).
            ArchitectureConfig::Densenet(_) | ArchitectureConfig::Resnet(_) => (32, 1),
            ArchitectureConfig::Unet(_) => (UNetConfig::SIZE_MULTIPLE, UNetConfig::SIZE_MULTIPLE),
        }
    }

    /// Builds the network with freshly initialised weights on `device`.
    pub fn init(&self, device: &Device) -> Result<Network, ConfigError> {
        Ok(match self {
            ArchitectureConfig::Densenet(config) => {
                Network::DenseNet(Box::new(config.init(device)?))
            }
            ArchitectureConfig::Resnet(config) => Network::ResNet(Box::new(config.init(device)?)),
            ArchitectureConfig::Unet(config) => Network::UNet(Box::new(config.init(device)?)),
        })
    }
}

/// An input the network cannot take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    #[error("the model takes {expected} input channel(s), got {found}")]
    Channels { expected: usize, found: usize },
    #[error("the model needs images of at least {min}×{min} pixels, got {height}×{width}")]
    TooSmall {
        min: usize,
        height: usize,
        width: usize,
    },
    #[error("the model needs height and width to be multiples of {multiple}, got {height}×{width}")]
    NotMultiple {
        multiple: usize,
        height: usize,
        width: usize,
    },
    #[error("the batch is empty")]
    EmptyBatch,
}

/// A built network of any supported architecture.
#[derive(Debug)]
pub enum Network {
    DenseNet(Box<DenseNet>),
    ResNet(Box<ResNet>),
    UNet(Box<UNet>),
}

/// A forward pass's result, by the kind of network.
#[derive(Debug, Clone)]
pub enum NetworkOutput {
    Scores(Tensor<2>),
    Maps(Tensor<4>),
}

impl NetworkOutput {
    /// The raw values, flattened in row-major order, with the output's shape.
    pub fn into_values(self) -> (Vec<usize>, Tensor<1>) {
        match self {
            NetworkOutput::Scores(t) => (t.dims().to_vec(), t.flatten(0, 1)),
            NetworkOutput::Maps(t) => (t.dims().to_vec(), t.flatten(0, 3)),
        }
    }
}

impl Network {
    /// Runs the network after checking that `images` fits `config`.
    pub fn forward_checked(
        &self,
        config: &ArchitectureConfig,
        images: Tensor<4>,
    ) -> Result<NetworkOutput, InputError> {
        let [batch, channels, height, width] = images.dims();
        if batch == 0 {
            return Err(InputError::EmptyBatch);
        }
        if channels != config.in_channels() {
            return Err(InputError::Channels {
                expected: config.in_channels(),
                found: channels,
            });
        }
        let (min, multiple) = config.input_constraint();
        if height < min || width < min {
            return Err(InputError::TooSmall { min, height, width });
        }
        if height % multiple != 0 || width % multiple != 0 {
            return Err(InputError::NotMultiple {
                multiple,
                height,
                width,
            });
        }
        Ok(self.forward(images))
    }

    /// Runs the network; the caller has checked the input (see [`Network::forward_checked`]).
    pub fn forward(&self, images: Tensor<4>) -> NetworkOutput {
        match self {
            Network::DenseNet(net) => NetworkOutput::Scores(net.forward(images)),
            Network::ResNet(net) => NetworkOutput::Scores(net.forward(images)),
            Network::UNet(net) => NetworkOutput::Maps(net.forward(images)),
        }
    }
}
