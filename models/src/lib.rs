//! # radserve-models
//!
//! Imaging models built with burn: architectures (DenseNet-121, ResNet-18/34, 2D U-Net),
//! model packages (`model.toml` + weights), weight import from PyTorch, device selection,
//! and the trainer of the demo models. It knows nothing of the server.
//!
//! Empty until the models issue lands; the workspace pins burn 0.22 for it.
