//! # radserve-kernels
//!
//! Fused preprocessing of stored DICOM pixels into a model's input tensor: a CubeCL kernel
//! ([`fused`]) beside a plain-Rust reference ([`reference`]) that tests compare it against and
//! that the CPU backend runs. Both take a [`spec::PreprocessSpec`], checked before any work.
//! It knows nothing of the server.

pub mod fused;
pub mod model_input;
pub mod reference;
pub mod spec;

pub use spec::{
    Frames, Intensity, Normalisation, PixelKind, Pixels, PreprocessError, PreprocessSpec, Resample,
    VoiFunction,
};
