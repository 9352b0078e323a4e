//! # radserve-models
//!
//! Imaging models built with burn: architectures (DenseNet-121, ResNet-18/34, 2D U-Net),
//! model packages (`model.toml` + weights), weight import from PyTorch, device selection,
//! preprocessing and post-processing, and the trainer of the demo models. It knows nothing of
//! the server.

pub mod architecture;
pub mod candidate_filter;
pub mod device;
pub mod evaluate;
pub mod metrics;
pub mod model;
pub mod package;
pub mod postprocess;
pub mod preprocess;
pub mod synthetic;
pub mod weights;
