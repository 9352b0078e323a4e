//! radserve: a medical imaging AI inference server.
//!
//! A PACS forwards studies to radserve over DICOM; radserve stores them, runs imaging
//! models on them and serves the findings over HTTP. This crate is the server: the
//! `radserve` binary (`src/main.rs`) is a thin shell over it.
//!
//! Modules, in the order a request meets them:
//!
//! - [`cli`]: the command line (`radserve serve [--data DIR] ...`), parsed with clap.
//! - [`config`]: [`Settings`](config::Settings), resolved from flags, `RADSERVE_*`
//!   environment variables, `radserve.toml` and embedded defaults, in that order of
//!   precedence, and validated.
//! - [`telemetry`]: tracing setup (human-readable logs on stderr, `RUST_LOG` filter).
//! - [`serve`]: binds the DIMSE and HTTP listeners, announces the ports on stdout and
//!   runs both until SIGINT/SIGTERM.
//! - [`shutdown`]: the signal handlers and the shutdown handle every listener awaits.
//! - [`dimse`]: the DICOM upper-layer listener: one task per association; answers
//!   C-ECHO (Verification) for now.
//! - [`auth`]: bearer tokens with roles, the route → roles table, the auth middleware
//!   and the audit trail of patient-data access.
//! - [`metrics`]: Prometheus metrics (`/metrics`) and the functions that record them.
//! - [`store`]: the archive: Part 10 files as fsynced blobs, an SQLite index for QIDO/C-FIND.
//! - [`dicomweb`]: DICOMweb (PS3.18) under `/dicomweb`: STOW-RS, QIDO-RS, WADO-RS.
//! - [`infer`]: the served models, each behind a dynamic batcher and a device thread.
//! - [`pipeline`]: study stability, routing, durable jobs and the workers that turn a stored
//!   study into findings.
//! - [`results`]: findings as DICOM SR (TID 1500) and SEG.
//! - [`api`]: the HTTP router: `/health/live`, `/health/ready`, JSON 404/405 for the rest.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod dicomweb;
pub mod dimse;
pub mod emr;
pub mod infer;
pub mod metrics;
pub mod pipeline;
pub mod results;
pub mod serve;
pub mod shutdown;
pub mod store;
pub mod telemetry;
