//! # dicom-samples
//!
//! Synthetic but realistic DICOM studies with ground truth, for radserve's tests, demo models
//! and benchmarks — and an EMR export for the same patients, with the inconsistencies a real
//! join between PACS and EMR meets. Everything is deterministic for a given seed.
//!
//! Modules, in the order data flows through them:
//! - [`patient`]: patients, names (Latin and Chinese), identifiers, character sets;
//! - [`uid`]: seeded `2.25` UIDs;
//! - [`ct`]: a CT chest phantom in Hounsfield units with lung nodules;
//! - [`radiograph`]: chest radiographs (projection images) with labelled findings;
//! - [`dicom_write`]: the DICOM objects (CT Image, DX, CR) and their files;
//! - [`ground_truth`]: the JSON sidecar per study and the set's manifest;
//! - [`emr`]: the FHIR R4 Bundle of patients, orders and encounters, and the true study↔order pairs;
//! - [`generate`]: a whole set from a [`generate::GenerateOptions`], in parallel.
//!
//! The `dicom-samples` binary is a thin CLI over [`generate`].

pub mod ct;
pub mod dicom_write;
pub mod emr;
pub mod generate;
pub mod ground_truth;
pub mod patient;
pub mod radiograph;
pub mod uid;
