//! ResNet-18/34 (He et al. 2015) with torchvision's parameter names.
//!
//! Field names are torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, …, `fc`), so a torchvision
//! `resnet18`/`resnet34` state_dict loads with one rename: torchvision's
//! `downsample.0`/`downsample.1` (an `nn.Sequential`) are `downsample.conv`/`downsample.bn`
//! here. See [`crate::weights::KeyMap`].

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Which ResNet and its input and output widths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// 18 or 34: both use basic (two-convolution) blocks.
    pub depth: usize,
    pub in_channels: usize,
    pub num_outputs: usize,
    /// Channels of the first stage; torchvision's models use 64. The stages double it.
    #[serde(default = "default_base_width")]
    pub base_width: usize,
}

fn default_base_width() -> usize {
    64
}

impl ResNetConfig {
    /// Blocks per stage, as in the paper's table 1.
    pub fn blocks_per_stage(&self) -> Result<[usize; 4], ConfigError> {
        match self.depth {
            18 => Ok([2, 2, 2, 2]),
            34 => Ok([3, 4, 6, 3]),
            other => Err(ConfigError::Invalid(format!(
                "ResNet depth {other} is not built here: use 18 or 34"
            ))),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.blocks_per_stage()?;
        super::check_positive("in_channels", self.in_channels)?;
        super::check_positive("num_outputs", self.num_outputs)?;
        super::check_range("base_width", self.base_width, 1, 1024)
    }

    pub fn init(&self, device: &Device) -> Result<ResNet, ConfigError> {
        self.validate()?;
        let blocks = self.blocks_per_stage()?;
        let widths = [1, 2, 4, 8].map(|factor| self.base_width * factor);
        let stage = |index: usize, in_width: usize| -> Vec<BasicBlock> {
            let stride = if index == 0 { 1 } else { 2 };
            (0..blocks[index])
                .map(|block| {
                    if block == 0 {
                        BasicBlock::new(in_width, widths[index], stride, device)
                    } else {
                        BasicBlock::new(widths[index], widths[index], 1, device)
                    }
                })
                .collect()
        };
        Ok(ResNet {
            conv1: conv(self.in_channels, widths[0], 7, 2, 3, device),
            bn1: BatchNormConfig::new(widths[0]).init(device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1: stage(0, widths[0]),
            layer2: stage(1, widths[0]),
            layer3: stage(2, widths[1]),
            layer4: stage(3, widths[2]),
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: LinearConfig::new(widths[3], self.num_outputs).init(device),
        })
    }
}

fn conv(
    channels_in: usize,
    channels_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([channels_in, channels_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_bias(false)
        .init(device)
}

#[derive(Module, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    maxpool: MaxPool2d,
    layer1: Vec<BasicBlock>,
    layer2: Vec<BasicBlock>,
    layer3: Vec<BasicBlock>,
    layer4: Vec<BasicBlock>,
    avgpool: AdaptiveAvgPool2d,
    fc: Linear,
}

impl ResNet {
    /// Images `[batch, channels, height, width]` → logits `[batch, outputs]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = relu(self.bn1.forward(self.conv1.forward(images)));
        x = self.maxpool.forward(x);
        for block in self
            .layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
        {
            x = block.forward(x);
        }
        let pooled: Tensor<2> = self.avgpool.forward(x).flatten(1, 3);
        self.fc.forward(pooled)
    }
}

#[derive(Module, Debug)]
struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    downsample: Option<Downsample>,
}

/// The 1×1 projection of the shortcut where a block changes width or resolution.
#[derive(Module, Debug)]
struct Downsample {
    conv: Conv2d,
    bn: BatchNorm,
}

impl BasicBlock {
    fn new(channels_in: usize, channels_out: usize, stride: usize, device: &Device) -> Self {
        let downsample = (stride != 1 || channels_in != channels_out).then(|| Downsample {
            conv: conv(channels_in, channels_out, 1, stride, 0, device),
            bn: BatchNormConfig::new(channels_out).init(device),
        });
        BasicBlock {
            conv1: conv(channels_in, channels_out, 3, stride, 1, device),
            bn1: BatchNormConfig::new(channels_out).init(device),
            conv2: conv(channels_out, channels_out, 3, 1, 1, device),
            bn2: BatchNormConfig::new(channels_out).init(device),
            downsample,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.downsample {
            Some(projection) => projection.bn.forward(projection.conv.forward(x.clone())),
            None => x.clone(),
        };
        let out = relu(self.bn1.forward(self.conv1.forward(x)));
        let out = self.bn2.forward(self.conv2.forward(out));
        relu(out + shortcut)
    }
}
