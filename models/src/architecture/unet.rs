//! 2D U-Net following MONAI's `BasicUNet`, with MONAI's parameter names.
//!
//! Layout (features f0..f5, MONAI's default (32, 32, 64, 128, 256, 32)):
//! `conv_0` (TwoConv in→f0), `down_1..down_4` (2×2 max-pool then TwoConv), `upcat_4..upcat_1`
//! (2×2 stride-2 transposed convolution, concatenation `[skip, upsampled]`, TwoConv), and a 1×1
//! `final_conv`. Each convolution of a TwoConv is MONAI's `Convolution`: 3×3 conv with bias, then
//! instance norm (affine), then LeakyReLU(0.1) — MONAI's "NDA" order with no dropout.
//! MONAI names the norm `adn.N`; here it is `adn.norm` (a Rust field cannot be `N`), the one rename
//! in [`crate::weights::KeyMap`].

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{InstanceNorm, InstanceNormConfig, PaddingConfig2d};
use burn::tensor::activation::leaky_relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// MONAI's LeakyReLU slope in `BasicUNet`.
const NEGATIVE_SLOPE: f64 = 0.1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub num_outputs: usize,
    /// Six widths as MONAI orders them: the four encoder levels, the bottleneck, the last decoder.
    #[serde(default = "default_features")]
    pub features: [usize; 6],
}

fn default_features() -> [usize; 6] {
    [32, 32, 64, 128, 256, 32]
}

impl UNetConfig {
    /// The input's height and width must be a multiple of this (four 2× poolings).
    pub const SIZE_MULTIPLE: usize = 16;

    pub fn validate(&self) -> Result<(), ConfigError> {
        super::check_positive("in_channels", self.in_channels)?;
        super::check_positive("num_outputs", self.num_outputs)?;
        for (i, &width) in self.features.iter().enumerate() {
            super::check_range(&format!("features[{i}]"), width, 1, 2048)?;
        }
        for level in 2..=4 {
            if self.features[level] < 2 {
                return Err(ConfigError::Invalid(format!(
                    "features[{level}] must be at least 2: its decoder halves it"
                )));
            }
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<UNet, ConfigError> {
        self.validate()?;
        let f = self.features;
        Ok(UNet {
            conv_0: TwoConv::new(self.in_channels, f[0], device),
            down_1: Down::new(f[0], f[1], device),
            down_2: Down::new(f[1], f[2], device),
            down_3: Down::new(f[2], f[3], device),
            down_4: Down::new(f[3], f[4], device),
            upcat_4: UpCat::new(f[4], f[3], f[3], true, device),
            upcat_3: UpCat::new(f[3], f[2], f[2], true, device),
            upcat_2: UpCat::new(f[2], f[1], f[1], true, device),
            upcat_1: UpCat::new(f[1], f[0], f[5], false, device),
            final_conv: Conv2dConfig::new([f[5], self.num_outputs], [1, 1]).init(device),
        })
    }
}

#[derive(Module, Debug)]
pub struct UNet {
    conv_0: TwoConv,
    down_1: Down,
    down_2: Down,
    down_3: Down,
    down_4: Down,
    upcat_4: UpCat,
    upcat_3: UpCat,
    upcat_2: UpCat,
    upcat_1: UpCat,
    final_conv: Conv2d,
}

impl UNet {
    /// Images `[batch, channels, height, width]` → per-pixel logits `[batch, outputs, height, width]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<4> {
        let x0 = self.conv_0.forward(images);
        let x1 = self.down_1.forward(x0.clone());
        let x2 = self.down_2.forward(x1.clone());
        let x3 = self.down_3.forward(x2.clone());
        let x4 = self.down_4.forward(x3.clone());
        let u4 = self.upcat_4.forward(x4, x3);
        let u3 = self.upcat_3.forward(u4, x2);
        let u2 = self.upcat_2.forward(u3, x1);
        let u1 = self.upcat_1.forward(u2, x0);
        self.final_conv.forward(u1)
    }
}

/// MONAI's `Convolution`: conv, then `adn` (norm, then activation).
#[derive(Module, Debug)]
struct ConvNormAct {
    conv: Conv2d,
    adn: NormAct,
}

#[derive(Module, Debug)]
struct NormAct {
    norm: InstanceNorm,
}

impl ConvNormAct {
    fn new(channels_in: usize, channels_out: usize, device: &Device) -> Self {
        ConvNormAct {
            conv: Conv2dConfig::new([channels_in, channels_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            adn: NormAct {
                norm: InstanceNormConfig::new(channels_out)
                    .with_affine(true)
                    .init(device),
            },
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        leaky_relu(self.adn.norm.forward(self.conv.forward(x)), NEGATIVE_SLOPE)
    }
}

#[derive(Module, Debug)]
struct TwoConv {
    conv_0: ConvNormAct,
    conv_1: ConvNormAct,
}

impl TwoConv {
    fn new(channels_in: usize, channels_out: usize, device: &Device) -> Self {
        TwoConv {
            conv_0: ConvNormAct::new(channels_in, channels_out, device),
            conv_1: ConvNormAct::new(channels_out, channels_out, device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv_1.forward(self.conv_0.forward(x))
    }
}

#[derive(Module, Debug)]
struct Down {
    max_pooling: MaxPool2d,
    convs: TwoConv,
}

impl Down {
    fn new(channels_in: usize, channels_out: usize, device: &Device) -> Self {
        Down {
            max_pooling: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            convs: TwoConv::new(channels_in, channels_out, device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.convs.forward(self.max_pooling.forward(x))
    }
}

#[derive(Module, Debug)]
struct UpSample {
    deconv: ConvTranspose2d,
}

#[derive(Module, Debug)]
struct UpCat {
    upsample: UpSample,
    convs: TwoConv,
}

impl UpCat {
    /// `halves`: the transposed convolution halves the channels (all levels but the last).
    fn new(
        channels_in: usize,
        channels_skip: usize,
        channels_out: usize,
        halves: bool,
        device: &Device,
    ) -> Self {
        let channels_up = if halves { channels_in / 2 } else { channels_in };
        UpCat {
            upsample: UpSample {
                deconv: ConvTranspose2dConfig::new([channels_in, channels_up], [2, 2])
                    .with_stride([2, 2])
                    .init(device),
            },
            convs: TwoConv::new(channels_skip + channels_up, channels_out, device),
        }
    }

    fn forward(&self, x: Tensor<4>, skip: Tensor<4>) -> Tensor<4> {
        let up = self.upsample.deconv.forward(x);
        self.convs.forward(Tensor::cat(vec![skip, up], 1))
    }
}
