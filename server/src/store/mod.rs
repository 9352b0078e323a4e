//! `store`: owns all persistence — DICOM files as blobs, and the index that QIDO-RS and
//! C-FIND query. Callers (DIMSE, DICOMweb, later the pipeline) see only [`Archive`].
//!
//! An instance is acknowledged only after its bytes are fsynced and its index rows are
//! committed ([`Archive::put`] returns after both). The index sits behind [`index::Index`]
//! and the blobs behind [`blob::BlobStore`], so a PostgreSQL index and an object-store blob
//! backend can be added without touching callers.
//!
//! Modules:
//! - [`upload`]: an instance being received, hashed and written as it arrives;
//! - [`blob`]: blob storage (filesystem: temp file, fsync, rename, fsync directory);
//! - [`index`]: the index (SQLite through sqlx, with migrations);
//! - [`attributes`]: what is indexed, read from a dataset, text decoded to UTF-8;
//! - [`charset`]: SpecificCharacterSet decoding, including ISO 2022 code extensions;
//! - [`query`]: the query model shared by QIDO-RS and C-FIND.

mod archive;
pub mod attributes;
pub mod blob;
pub mod charset;
pub mod emr;
pub mod index;
pub mod jobs;
pub mod outbox;
pub mod query;
#[cfg(test)]
mod tests;
mod upload;

use std::path::PathBuf;

pub use archive::Archive;
pub use attributes::{Attribute, AttributeSet};
pub use index::{AuditRecord, NewToken, TokenRecord};
pub use jobs::{JobStore, Priority};
pub use query::{
    Condition, Include, MatchKey, Query, QueryError, QueryLevel, matchable_keys, parse_condition,
    resolve_attribute,
};
pub use upload::Upload;

/// What happens when an instance arrives whose SOP Instance UID is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// Identical bytes: success, no second copy. Different bytes: keep the first copy,
    /// answer a warning, record the conflict.
    #[default]
    KeepFirst,
    /// Different bytes replace the stored copy (the index is updated).
    Replace,
    /// Different bytes are refused with an error.
    Reject,
}

#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// Root of the data directory: `index.sqlite`, `blobs/`, `tmp/` live under it.
    pub data_dir: PathBuf,
    pub duplicate_policy: DuplicatePolicy,
}

/// Where an instance came from (recorded in the index and in metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Dimse {
        calling_ae_title: String,
        peer: std::net::SocketAddr,
    },
    Stow {
        user: String,
        peer: Option<std::net::SocketAddr>,
    },
    /// A result (SR, SEG) written by the pipeline for this model.
    Pipeline { model: String },
}

/// The result of storing one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// New instance, durable and indexed.
    Stored(StoredInstance),
    /// Same SOP Instance UID with identical bytes: nothing written.
    Duplicate(StoredInstance),
    /// Same SOP Instance UID, different bytes, first copy kept ([`DuplicatePolicy::KeepFirst`]);
    /// callers answer a warning (DIMSE 0xB000-family / STOW 202 with a warning reason).
    ConflictKeptFirst(StoredInstance),
    /// Different bytes replaced the stored copy ([`DuplicatePolicy::Replace`]).
    Replaced(StoredInstance),
}

/// Why an instance was not stored. The message is safe to send back to the sender.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// Not a parseable DICOM dataset, or required attributes missing/invalid.
    #[error("invalid instance: {0}")]
    Invalid(String),
    /// Different bytes for a stored SOP Instance UID under [`DuplicatePolicy::Reject`].
    #[error("SOP Instance UID {0} is already stored with different content")]
    DuplicateRejected(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A failure of the archive itself (disk, database).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob storage: {0}")]
    Blob(#[from] std::io::Error),
    #[error("index: {0}")]
    Index(String),
    #[error("not found: {0}")]
    NotFound(String),
}

/// One stored instance: its identity and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInstance {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    /// Blob key (relative path for the filesystem store).
    pub blob_key: String,
    pub size_bytes: u64,
    /// Hex SHA-256 of the stored Part 10 file.
    pub sha256: String,
}

/// Which instances a retrieval covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Study {
        study: String,
    },
    Series {
        study: String,
        series: String,
    },
    Instance {
        study: String,
        series: String,
        instance: String,
    },
}

/// An archive in a new temporary directory (kept while the returned guard lives), with the
/// default settings: what unit tests store into.
#[cfg(test)]
pub(crate) async fn temp_archive() -> (tempfile::TempDir, Archive) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let archive = Archive::open(ArchiveConfig {
        data_dir: dir.path().to_owned(),
        duplicate_policy: Default::default(),
    })
    .await
    .expect("archive opens");
    (dir, archive)
}
