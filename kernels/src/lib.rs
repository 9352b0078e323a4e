//! # radserve-kernels
//!
//! CubeCL GPU kernels (fused preprocessing of stored pixels into model input, segmentation
//! post-processing), each beside a plain-Rust reference implementation that tests compare
//! against. It knows nothing of the server.
//!
//! Empty until the kernels issue lands.
