//! DenseNet (Huang et al. 2017) with torchvision's parameter names.
//!
//! The module tree mirrors torchvision's `DenseNet`: `features.conv0`, `features.norm0`,
//! `features.denseblock1..4`, `features.transition1..3`, `features.norm5`, `classifier`.
//! torchvision names a block's layers `denselayer1..N` (1-based, inside an `nn.ModuleDict`);
//! here they are a list `layers.0..N-1`. See [`crate::weights::KeyMap`] for the rename.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// DenseNet-121 by default; other members of the family by their block configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseNetConfig {
    pub in_channels: usize,
    pub num_outputs: usize,
    /// Channels each dense layer adds (k in the paper; 32 for DenseNet-121).
    #[serde(default = "default_growth_rate")]
    pub growth_rate: usize,
    /// Dense layers in each of the four blocks ([6, 12, 24, 16] for DenseNet-121).
    #[serde(default = "default_block_config")]
    pub block_config: [usize; 4],
    /// Channels of the stem convolution (64 for DenseNet-121).
    #[serde(default = "default_init_features")]
    pub num_init_features: usize,
    /// Bottleneck width as a multiple of the growth rate (4 in the paper).
    #[serde(default = "default_bn_size")]
    pub bn_size: usize,
    /// How the last feature map becomes one score per output. torchvision averages.
    #[serde(default, skip_serializing_if = "Pooling::is_average")]
    pub pooling: Pooling,
}

/// How DenseNet's final feature map is reduced to one logit per output.
///
/// `Average` is torchvision's (average the features, then the classifier). `LogSumExp`
/// applies the classifier at every location first — a class activation map — and pools each
/// output's map with log-mean-exp (Pinheiro & Collobert 2015, used for chest radiographs by
/// Wang et al. 2017). Sharpness r → 0 gives the average, r → ∞ the maximum: a finding that
/// covers a few locations, like a nodule, is not diluted by the rest of the image. The
/// classifier's weights have the same shape either way, so torchvision weights still load.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pooling {
    #[default]
    Average,
    LogSumExp {
        sharpness: f64,
    },
}

impl Pooling {
    fn is_average(&self) -> bool {
        matches!(self, Pooling::Average)
    }
}

fn default_growth_rate() -> usize {
    32
}
fn default_block_config() -> [usize; 4] {
    [6, 12, 24, 16]
}
fn default_init_features() -> usize {
    64
}
fn default_bn_size() -> usize {
    4
}

impl DenseNetConfig {
    /// torchvision's `densenet121` with other input and output widths.
    pub fn densenet121(in_channels: usize, num_outputs: usize) -> Self {
        DenseNetConfig {
            in_channels,
            num_outputs,
            growth_rate: default_growth_rate(),
            block_config: default_block_config(),
            num_init_features: default_init_features(),
            bn_size: default_bn_size(),
            pooling: Pooling::Average,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        super::check_positive("in_channels", self.in_channels)?;
        super::check_positive("num_outputs", self.num_outputs)?;
        super::check_range("growth_rate", self.growth_rate, 1, 256)?;
        super::check_range("num_init_features", self.num_init_features, 1, 1024)?;
        super::check_range("bn_size", self.bn_size, 1, 16)?;
        for (block, &layers) in self.block_config.iter().enumerate() {
            super::check_range(&format!("block_config[{block}]"), layers, 1, 128)?;
        }
        if let Pooling::LogSumExp { sharpness } = self.pooling
            && !(sharpness.is_finite() && (0.01..=100.0).contains(&sharpness))
        {
            return Err(ConfigError::Invalid(format!(
                "pooling sharpness = {sharpness} is outside 0.01..=100"
            )));
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<DenseNet, ConfigError> {
        self.validate()?;
        let mut channels = self.num_init_features;
        let block = |layers: usize, channels: &mut usize| {
            let block = DenseBlock::new(*channels, layers, self.growth_rate, self.bn_size, device);
            *channels += layers * self.growth_rate;
            block
        };
        let transition = |channels: &mut usize| {
            let transition = Transition::new(*channels, *channels / 2, device);
            *channels /= 2;
            transition
        };
        let [b1, b2, b3, b4] = self.block_config;
        let conv0 = Conv2dConfig::new([self.in_channels, channels], [7, 7])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
            .with_bias(false)
            .init(device);
        let norm0 = BatchNormConfig::new(channels).init(device);
        let denseblock1 = block(b1, &mut channels);
        let transition1 = transition(&mut channels);
        let denseblock2 = block(b2, &mut channels);
        let transition2 = transition(&mut channels);
        let denseblock3 = block(b3, &mut channels);
        let transition3 = transition(&mut channels);
        let denseblock4 = block(b4, &mut channels);
        let features = Features {
            conv0,
            norm0,
            pool0: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            denseblock1,
            transition1,
            denseblock2,
            transition2,
            denseblock3,
            transition3,
            denseblock4,
            norm5: BatchNormConfig::new(channels).init(device),
        };
        Ok(DenseNet {
            features,
            classifier: LinearConfig::new(channels, self.num_outputs).init(device),
            pooling: self.pooling,
        })
    }
}

#[derive(Module, Debug)]
pub struct DenseNet {
    features: Features,
    classifier: Linear,
    #[module(skip)]
    pooling: Pooling,
}

#[derive(Module, Debug)]
struct Features {
    conv0: Conv2d,
    norm0: BatchNorm,
    pool0: MaxPool2d,
    denseblock1: DenseBlock,
    transition1: Transition,
    denseblock2: DenseBlock,
    transition2: Transition,
    denseblock3: DenseBlock,
    transition3: Transition,
    denseblock4: DenseBlock,
    norm5: BatchNorm,
}

impl DenseNet {
    /// Images `[batch, channels, height, width]` → logits `[batch, outputs]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self.pooling {
            // torchvision's order (average, then classify), kept for exact weight parity.
            Pooling::Average => {
                let pooled: Tensor<2> = self.features(images).mean_dim(3).mean_dim(2).flatten(1, 3);
                self.classifier.forward(pooled)
            }
            Pooling::LogSumExp { .. } => self.pool_class_maps(self.class_maps(images)),
        }
    }

    /// The classifier applied at every location of the last feature map: logits
    /// `[batch, height, width, outputs]` (one location per 32 image pixels).
    pub fn class_maps(&self, images: Tensor<4>) -> Tensor<4> {
        self.classifier
            .forward(self.features(images).permute([0, 2, 3, 1]))
    }

    /// Class maps from [`Self::class_maps`] → one logit per output, by this network's pooling.
    pub fn pool_class_maps(&self, maps: Tensor<4>) -> Tensor<2> {
        let [batch, height, width, outputs] = maps.dims();
        let locations = maps.reshape([batch, height * width, outputs]);
        match self.pooling {
            Pooling::Average => locations.mean_dim(1).reshape([batch, outputs]),
            Pooling::LogSumExp { sharpness } => log_mean_exp(locations, sharpness as f32),
        }
    }

    /// The last feature map, after the ReLU torchvision applies outside `features`.
    fn features(&self, images: Tensor<4>) -> Tensor<4> {
        let f = &self.features;
        let x = relu(f.norm0.forward(f.conv0.forward(images)));
        let x = f.pool0.forward(x);
        let x = f.transition1.forward(f.denseblock1.forward(x));
        let x = f.transition2.forward(f.denseblock2.forward(x));
        let x = f.transition3.forward(f.denseblock3.forward(x));
        relu(f.norm5.forward(f.denseblock4.forward(x)))
    }
}

/// `(1/r)·log(mean(exp(r·s)))` over dimension 1 of `[B, N, K]`, shifted by the maximum so
/// that exp cannot overflow → `[B, K]`.
fn log_mean_exp(scores: Tensor<3>, sharpness: f32) -> Tensor<2> {
    let [batch, _, outputs] = scores.dims();
    let peak = scores.clone().max_dim(1);
    let spread = (scores - peak.clone())
        .mul_scalar(sharpness)
        .exp()
        .mean_dim(1)
        .log()
        .div_scalar(sharpness);
    (peak + spread).reshape([batch, outputs])
}

#[derive(Module, Debug)]
struct DenseBlock {
    layers: Vec<DenseLayer>,
}

impl DenseBlock {
    fn new(
        channels_in: usize,
        layers: usize,
        growth_rate: usize,
        bn_size: usize,
        device: &Device,
    ) -> Self {
        DenseBlock {
            layers: (0..layers)
                .map(|i| {
                    DenseLayer::new(channels_in + i * growth_rate, growth_rate, bn_size, device)
                })
                .collect(),
        }
    }

    /// Each layer sees every earlier feature map, concatenated in order of creation.
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut features = x;
        for layer in &self.layers {
            let new = layer.forward(features.clone());
            features = Tensor::cat(vec![features, new], 1);
        }
        features
    }
}

#[derive(Module, Debug)]
struct DenseLayer {
    norm1: BatchNorm,
    conv1: Conv2d,
    norm2: BatchNorm,
    conv2: Conv2d,
}

impl DenseLayer {
    fn new(channels_in: usize, growth_rate: usize, bn_size: usize, device: &Device) -> Self {
        let bottleneck = bn_size * growth_rate;
        DenseLayer {
            norm1: BatchNormConfig::new(channels_in).init(device),
            conv1: Conv2dConfig::new([channels_in, bottleneck], [1, 1])
                .with_bias(false)
                .init(device),
            norm2: BatchNormConfig::new(bottleneck).init(device),
            conv2: Conv2dConfig::new([bottleneck, growth_rate], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.conv1.forward(relu(self.norm1.forward(x)));
        self.conv2.forward(relu(self.norm2.forward(x)))
    }
}

#[derive(Module, Debug)]
struct Transition {
    norm: BatchNorm,
    conv: Conv2d,
    pool: AvgPool2d,
}

impl Transition {
    fn new(channels_in: usize, channels_out: usize, device: &Device) -> Self {
        Transition {
            norm: BatchNormConfig::new(channels_in).init(device),
            conv: Conv2dConfig::new([channels_in, channels_out], [1, 1])
                .with_bias(false)
                .init(device),
            pool: AvgPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.pool
            .forward(self.conv.forward(relu(self.norm.forward(x))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn small(pooling: Pooling) -> DenseNetConfig {
        DenseNetConfig {
            growth_rate: 4,
            block_config: [1, 1, 1, 1],
            num_init_features: 8,
            bn_size: 2,
            pooling,
            ..DenseNetConfig::densenet121(1, 3)
        }
    }

    /// The same seeded weights under two poolings, on one seeded image batch.
    fn logits(pooling: Pooling) -> Vec<f32> {
        let device = Device::flex();
        device.seed(7);
        let network = small(pooling).init(&device).expect("valid config");
        let pixels: Vec<f32> = (0..2 * 64 * 64)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let images = Tensor::<4>::from_data(TensorData::new(pixels, [2, 1, 64, 64]), &device);
        network
            .forward(images)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 logits")
    }

    #[test]
    fn log_mean_exp_pooling_spans_average_to_maximum() {
        let device = Device::flex();
        // One batch, four locations, two outputs.
        let scores = Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 2.0, 1.0, 4.0, 1.0, 10.0, 1.0], [1, 4, 2]),
            &device,
        );
        let pooled = |r: f32| {
            log_mean_exp(scores.clone(), r)
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32")
        };
        let soft = pooled(0.01);
        assert!((soft[0] - 4.0).abs() < 0.1, "r → 0 averages: {soft:?}");
        assert!((soft[1] - 1.0).abs() < 1e-4, "constant map: {soft:?}");
        let sharp = pooled(100.0);
        assert!(
            (sharp[0] - 10.0).abs() < 0.02,
            "r → ∞ takes the peak: {sharp:?}"
        );
        // r = 1: ln((e^0 + e^2 + e^4 + e^10) / 4), computed in f64.
        let exact = (([0.0f64, 2.0, 4.0, 10.0]
            .iter()
            .map(|v| v.exp())
            .sum::<f64>())
            / 4.0)
            .ln();
        assert!((f64::from(pooled(1.0)[0]) - exact).abs() < 1e-4);
    }

    #[test]
    fn class_map_pooling_keeps_torchvision_weights_and_bounds_the_average() {
        let average = logits(Pooling::Average);
        let soft = logits(Pooling::LogSumExp { sharpness: 0.01 });
        let sharp = logits(Pooling::LogSumExp { sharpness: 5.0 });
        assert_eq!(average.len(), 6);
        for ((a, s), m) in average.iter().zip(&soft).zip(&sharp) {
            // The classifier is linear, so scoring every location and then averaging is
            // averaging and then scoring; log-mean-exp is never below the mean (Jensen).
            assert!(
                (a - s).abs() < 1e-3,
                "r → 0 should match average: {a} vs {s}"
            );
            assert!(*m >= a - 1e-5, "log-mean-exp below the mean: {m} < {a}");
        }
        assert_ne!(average, sharp, "r = 5 should differ from the average");
    }

    #[test]
    fn pooling_is_read_from_the_architecture_table_and_checked() {
        let config: DenseNetConfig = toml::from_str(
            "in_channels = 1\nnum_outputs = 2\n[pooling]\nkind = \"log_sum_exp\"\nsharpness = 5.0\n",
        )
        .expect("parses");
        assert_eq!(config.pooling, Pooling::LogSumExp { sharpness: 5.0 });
        let plain: DenseNetConfig =
            toml::from_str("in_channels = 1\nnum_outputs = 2\n").expect("parses");
        assert_eq!(plain.pooling, Pooling::Average, "torchvision's by default");
        let bad = small(Pooling::LogSumExp { sharpness: 0.0 }).validate();
        assert!(
            matches!(&bad, Err(ConfigError::Invalid(m)) if m.contains("sharpness")),
            "{bad:?}"
        );
    }
}
