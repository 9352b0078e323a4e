//! [`Archive`]: the store's front door — uploads, puts with the duplicate policy, queries,
//! retrieval, readiness, and auth/audit persistence.
//!
//! A put: the upload is a temp file under `tmp/`, hashed and written as it arrives (see
//! [`super::upload`]). While its last bytes are written, its header is parsed (up to Pixel
//! Data, from the first bytes kept in memory) and, under a lock striped by SOP Instance UID
//! (so two puts of one UID never interleave, and a blob is never garbage-collected while a
//! put of the same content is in flight), it is looked up in the index; when the header is
//! not all in memory, the file is parsed after. Then the file is fsynced and the policy
//! decides: a new instance's row is inserted and committed while its blob is fsynced,
//! placed and its directory entry fsynced (see [`Archive::store_new`]). After both, `put`
//! returns. Different SOP Instance UIDs proceed in parallel.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use super::attributes::{self, InstanceAttributes};
use super::blob::{BlobStore, FsBlobStore};
use super::emr::EmrStore;
use super::index::{
    AuditRecord, Conflict, Index, InstanceRecord, NewToken, SqliteIndex, TokenRecord,
};
use super::jobs::JobStore;
use super::outbox::OutboxStore;
use super::query;
use super::upload::{Upload, UploadFiles, WrittenUpload};
use super::{
    ArchiveConfig, AttributeSet, DuplicatePolicy, PutError, PutOutcome, Query, Scope, Source,
    StoreError, StoredInstance,
};

/// Number of lock stripes for puts (by SOP Instance UID hash).
const STRIPES: usize = 64;

/// Cheap to clone (Arc inside); Send + Sync; used from many tokio tasks.
#[derive(Clone)]
pub struct Archive {
    inner: Arc<Inner>,
}

struct Inner {
    config: ArchiveConfig,
    blobs: Arc<dyn BlobStore>,
    index: Arc<dyn Index>,
    jobs: JobStore,
    emr: EmrStore,
    outbox: OutboxStore,
    stripes: Vec<tokio::sync::Mutex<()>>,
    upload_files: UploadFiles,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn source_text(source: &Source) -> String {
    match source {
        Source::Dimse {
            calling_ae_title,
            peer,
        } => format!("dimse:{calling_ae_title}@{peer}"),
        Source::Pipeline { model } => format!("pipeline:{model}"),
        Source::Stow { user, peer } => match peer {
            Some(p) => format!("stow:{user}@{p}"),
            None => format!("stow:{user}"),
        },
    }
}

fn policy_name(p: DuplicatePolicy) -> &'static str {
    match p {
        DuplicatePolicy::KeepFirst => "keep_first",
        DuplicatePolicy::Replace => "replace",
        DuplicatePolicy::Reject => "reject",
    }
}

/// Removes every file left in `tmp/` by a previous run (uploads never finished).
fn clean_tmp(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            n += 1;
        }
    }
    Ok(n)
}

impl Archive {
    /// Creates the directories, opens the index (running migrations), empties `tmp/` and
    /// removes orphan blobs (written before a crash, never committed to the index).
    pub async fn open(config: ArchiveConfig) -> Result<Archive, StoreError> {
        let tmp_dir = config.data_dir.join("tmp");
        let blob_dir = config.data_dir.join("blobs");
        tokio::fs::create_dir_all(&tmp_dir).await?;
        let blobs: Arc<dyn BlobStore> = Arc::new(FsBlobStore::new(blob_dir)?);
        let sqlite = SqliteIndex::open(&config.data_dir.join("index.sqlite")).await?;
        let jobs = JobStore::new(sqlite.pool());
        let emr = EmrStore::new(sqlite.pool());
        let outbox = OutboxStore::new(sqlite.pool());
        let index: Arc<dyn Index> = Arc::new(sqlite);
        let tmp = tmp_dir.clone();
        let cleaned = tokio::task::spawn_blocking(move || clean_tmp(&tmp))
            .await
            .map_err(|e| StoreError::Index(format!("tmp cleanup task: {e}")))??;
        // A crash between a put's index commit and its blob's directory fsync, or between
        // the blob's placement and the commit, leaves one side alone; neither instance was
        // acknowledged (see `store_new`), so both sides are removed.
        let referenced = index.blob_keys().await?;
        let present: std::collections::HashSet<String> = blobs.keys().await?.into_iter().collect();
        let mut orphans = 0usize;
        for key in present.difference(&referenced) {
            blobs.delete(key).await?;
            orphans += 1;
        }
        let mut lost_rows = 0u64;
        for key in referenced.difference(&present) {
            lost_rows += index.remove_instances_with_blob(key).await?;
        }
        if lost_rows > 0 {
            tracing::warn!(
                rows = lost_rows,
                "removed index rows of unacknowledged instances whose blob was lost in a crash"
            );
        }
        tracing::info!(
            data_dir = %config.data_dir.display(),
            instances = (referenced.len() as u64).saturating_sub(lost_rows),
            tmp_files_removed = cleaned,
            orphan_blobs_removed = orphans,
            "archive opened"
        );
        let stripes = (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Ok(Archive {
            inner: Arc::new(Inner {
                config,
                blobs,
                index,
                jobs,
                emr,
                outbox,
                stripes,
                upload_files: UploadFiles::new(tmp_dir),
            }),
        })
    }

    async fn new_upload(&self) -> Result<Upload, StoreError> {
        self.inner.upload_files.upload().await
    }

    /// An upload that already holds the Part 10 preamble + file meta group built from a
    /// DIMSE C-STORE's AffectedSOPClassUID / AffectedSOPInstanceUID and the context's
    /// transfer syntax; the caller then streams the dataset bytes with [`Upload::write`].
    pub async fn begin_dataset_upload(
        &self,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        transfer_syntax_uid: &str,
        source_ae_title: &str,
    ) -> Result<Upload, StoreError> {
        let mut upload = self.new_upload().await?;
        let trim = |s: &str| s.trim_matches(|c: char| c == ' ' || c == '\0').to_owned();
        let mut builder = dicom_object::meta::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(trim(sop_class_uid))
            .media_storage_sop_instance_uid(trim(sop_instance_uid))
            .transfer_syntax(trim(transfer_syntax_uid));
        let ae = source_ae_title.trim();
        if !ae.is_empty() && ae.len() <= 16 {
            builder = builder.source_application_entity_title(ae);
        }
        let mut header = vec![0u8; 128];
        header.extend_from_slice(b"DICM");
        match builder.build().map(|meta| meta.write(&mut header)) {
            Ok(Ok(())) => {
                upload.write_raw(&header).await?;
            }
            Ok(Err(e)) => upload.set_invalid(format!("cannot write file meta: {e}")),
            Err(e) => upload.set_invalid(format!("invalid command attributes: {e}")),
        }
        Ok(upload)
    }

    /// An upload for a complete Part 10 file (a STOW-RS part), streamed with `write`.
    pub async fn begin_file_upload(&self) -> Result<Upload, StoreError> {
        self.new_upload().await
    }

    fn stripe(&self, sop_instance_uid: &str) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        sop_instance_uid.hash(&mut h);
        &self.inner.stripes[(h.finish() as usize) % STRIPES]
    }

    /// Validates, stores and indexes an upload, applying the duplicate policy (see
    /// [`super::DuplicatePolicy`]). Returns only after the blob is durable and the index
    /// transaction committed; on `Err` nothing is left behind.
    pub async fn put(&self, mut upload: Upload, source: &Source) -> Result<PutOutcome, PutError> {
        // The header is parsed from memory, and the instance looked up, while the last bytes
        // are written and hashed.
        let (head, size) = upload.take_head();
        let examine_head = async {
            let parsed =
                tokio::task::spawn_blocking(move || attributes::extract_from_head(&head, size))
                    .await
                    .map_err(|e| StoreError::Index(format!("parse task: {e}")))?;
            match parsed {
                Some(parsed) => self.examine(parsed).await.map(Some),
                None => Ok(None),
            }
        };
        let (written, from_head) = tokio::join!(upload.finish(), examine_head);
        let WrittenUpload {
            file,
            path,
            sha256,
            size: size_bytes,
        } = written?;
        let from_head = from_head?;
        // The data fsync (the device) runs from here on its own: the file's parse and the
        // lookup (when the head did not hold the header) do not need it, and neither does a
        // new instance's index insert (see `store_new`).
        let data_sync = tokio::task::spawn_blocking(move || file.sync_data());
        let durable = async move {
            data_sync
                .await
                .map_err(|e| std::io::Error::other(format!("fsync task: {e}")))?
        };
        let (attributes, _guard, existing) = match from_head {
            Some(examined) => examined,
            None => {
                let parse_path = path.to_path_buf();
                let parsed = tokio::task::spawn_blocking(move || attributes::extract(&parse_path))
                    .await
                    .map_err(|e| StoreError::Index(format!("parse task: {e}")))?;
                self.examine(parsed).await?
            }
        };
        let sop = attributes.sop_instance_uid.clone();
        let record_source = source_text(source);
        let policy = self.inner.config.duplicate_policy;
        let mut record = InstanceRecord {
            attributes,
            blob_key: String::new(),
            size_bytes,
            sha256: sha256.clone(),
            received_at: now(),
            source: record_source.clone(),
        };
        let conflict = |existing: &StoredInstance, action: &str| Conflict {
            sop_instance_uid: sop.clone(),
            stored_sha256: existing.sha256.clone(),
            received_sha256: sha256.clone(),
            received_size: size_bytes,
            policy: policy_name(policy).to_owned(),
            action: action.to_owned(),
            source: record_source.clone(),
            at: now(),
        };
        let Some(existing) = existing else {
            record.blob_key = self
                .inner
                .blobs
                .key_for(&sha256)
                .map_err(StoreError::from)?;
            self.store_new(&record, path, durable).await?;
            tracing::debug!(sop_instance_uid = %sop, size_bytes, "instance stored");
            return Ok(PutOutcome::Stored(record.stored()));
        };
        durable.await.map_err(StoreError::from)?;
        match existing {
            existing if existing.sha256 == sha256 => {
                tracing::debug!(sop_instance_uid = %sop, "identical duplicate");
                Ok(PutOutcome::Duplicate(existing))
            }
            existing if policy == DuplicatePolicy::KeepFirst => {
                self.inner
                    .index
                    .record_conflict(&conflict(&existing, "kept_first"))
                    .await?;
                tracing::warn!(sop_instance_uid = %sop, "duplicate with different content: first copy kept");
                Ok(PutOutcome::ConflictKeptFirst(existing))
            }
            existing if policy == DuplicatePolicy::Reject => {
                self.inner
                    .index
                    .record_conflict(&conflict(&existing, "rejected"))
                    .await?;
                tracing::warn!(sop_instance_uid = %sop, "duplicate with different content: rejected");
                Err(PutError::DuplicateRejected(sop))
            }
            existing => {
                record.blob_key = self.store_blob(path, &sha256).await?;
                self.inner
                    .index
                    .replace_instance(&record, &conflict(&existing, "replaced"))
                    .await?;
                if existing.blob_key != record.blob_key
                    && !self
                        .inner
                        .index
                        .blob_key_referenced(&existing.blob_key)
                        .await?
                {
                    // Best effort: a leftover is an orphan that the next open removes.
                    if let Err(e) = self.inner.blobs.delete(&existing.blob_key).await {
                        tracing::warn!(error = %e, "could not delete replaced blob");
                    }
                }
                tracing::info!(sop_instance_uid = %sop, "instance replaced");
                Ok(PutOutcome::Replaced(record.stored()))
            }
        }
    }

    /// A parsed upload's attributes, the stripe lock of its SOP Instance UID (held until the
    /// put ends), and the instance already stored under that UID.
    async fn examine(
        &self,
        parsed: Result<InstanceAttributes, String>,
    ) -> Result<
        (
            InstanceAttributes,
            tokio::sync::MutexGuard<'_, ()>,
            Option<StoredInstance>,
        ),
        PutError,
    > {
        let attributes = parsed.map_err(PutError::Invalid)?;
        let guard = self.stripe(&attributes.sop_instance_uid).lock().await;
        let existing = self
            .inner
            .index
            .find_instance(&attributes.sop_instance_uid)
            .await?;
        Ok((attributes, guard, existing))
    }

    /// Places the upload in the blob store and makes the placement durable (see
    /// [`BlobStore::place_durable`]); returns its key.
    async fn store_blob(
        &self,
        path: tempfile::TempPath,
        sha256: &str,
    ) -> Result<String, StoreError> {
        // Disarm the temp path: the blob store moves the file. On failure remove it here.
        let staged = path.keep().map_err(|e| StoreError::Blob(e.error))?;
        match self.inner.blobs.place_durable(&staged, sha256).await {
            Ok(key) => Ok(key),
            Err(e) => {
                let _ = tokio::fs::remove_file(&staged).await;
                Err(e.into())
            }
        }
    }

    /// Stores a new instance: the blob (once its data is on the device: `data_durable`) is
    /// placed and its directory entry fsynced while the index inserts and commits the row
    /// (each side ends in one device flush); the put succeeds only when both have. The row
    /// can thus be visible a moment before its blob: [`Archive::read_blob`] waits for the
    /// put then. On failure nothing is left that `open` would not also remove: a crash
    /// leaves a row without its blob or a blob without its row, of an instance never
    /// acknowledged, and the blob under its final name is always complete.
    async fn store_new(
        &self,
        record: &InstanceRecord,
        path: tempfile::TempPath,
        data_durable: impl std::future::Future<Output = std::io::Result<()>>,
    ) -> Result<(), StoreError> {
        let blob = async {
            data_durable.await?;
            self.store_blob(path, &record.sha256).await?;
            Ok::<_, StoreError>(())
        };
        let (placed, indexed) = tokio::join!(blob, self.inner.index.insert_instance(record));
        let failure = match (placed, indexed) {
            (Ok(()), Ok(())) => return Ok(()),
            (Err(e), Ok(())) => {
                // The row is committed but its blob is not durable: remove the row (never
                // acknowledged), then the blob.
                if let Err(e) = self
                    .inner
                    .index
                    .remove_instances_with_blob(&record.blob_key)
                    .await
                {
                    tracing::warn!(error = %e, "could not remove the row of an unsynced blob");
                }
                e
            }
            (_, Err(e)) => e,
        };
        // Not committed (or rolled back above): the blob would be an orphan; remove it now
        // (or on the next open).
        if let Err(e) = self.inner.blobs.delete(&record.blob_key).await {
            tracing::warn!(error = %e, "could not delete uncommitted blob");
        }
        Err(failure)
    }

    /// QIDO-RS / C-FIND (see [`super::query`] for the matching rules and what is returned).
    /// Callers check keys with [`query::matchable_keys`] first; an unsupported key here is
    /// an error.
    pub async fn query(&self, query: &Query) -> Result<Vec<AttributeSet>, StoreError> {
        query::check_keys(query).map_err(|e| StoreError::Index(e.to_string()))?;
        self.inner.index.query(query).await
    }

    /// Instances of a study / series / one instance, ordered by SeriesNumber,
    /// InstanceNumber. Empty when nothing matches.
    pub async fn locate(&self, scope: &Scope) -> Result<Vec<StoredInstance>, StoreError> {
        self.inner.index.locate(scope).await
    }

    /// The stored Part 10 file's bytes.
    pub async fn read_blob(&self, instance: &StoredInstance) -> Result<Vec<u8>, StoreError> {
        let mut read = self.inner.blobs.read(&instance.blob_key).await;
        if read
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            // A new instance's row commits while its blob is being placed (`store_new`);
            // its put holds the stripe lock until both are done. Wait for it, read again.
            drop(self.stripe(&instance.sop_instance_uid).lock().await);
            read = self.inner.blobs.read(&instance.blob_key).await;
        }
        match read {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound(
                format!("blob of {}", instance.sop_instance_uid),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Readiness: the index answers and the blob dir is writable.
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        self.inner.index.ping().await?;
        self.inner.blobs.check_writable().await?;
        Ok(())
    }

    pub async fn insert_token(&self, token: &NewToken) -> Result<i64, StoreError> {
        self.inner.index.insert_token(token, &now()).await
    }

    pub async fn find_token(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.index.find_token(token_hash).await
    }

    pub async fn record_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.inner.index.record_audit(record).await
    }

    /// Audit records, newest first.
    pub async fn audit_records(
        &self,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.inner.index.audit_records(limit, offset).await
    }

    /// Files under `tmp/` other than the spares kept ready for uploads.
    #[cfg(test)]
    pub(crate) async fn leftover_upload_files(&self) -> Vec<std::path::PathBuf> {
        self.inner.upload_files.files_other_than_spares().await
    }

    /// The index, for tests that drive it below the archive.
    #[cfg(test)]
    pub(crate) fn index(&self) -> &dyn Index {
        self.inner.index.as_ref()
    }

    /// The pipeline's tables: study activity, jobs, findings.
    pub fn jobs(&self) -> &JobStore {
        &self.inner.jobs
    }

    /// The EMR's tables: records and study links.
    pub fn emr(&self) -> &EmrStore {
        &self.inner.emr
    }

    /// Results queued for the EMR (FHIR push, HL7 v2 ORU^R01).
    pub fn outbox(&self) -> &OutboxStore {
        &self.inner.outbox
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;
    use crate::store::{Include, QueryLevel};

    /// A data set declaring ~2 GiB in a 12-byte header is refused before dicom-object
    /// allocates it, with an error naming the declared length, and leaves nothing in
    /// `tmp/`, `blobs/` or the index.
    #[tokio::test]
    async fn a_huge_declared_length_is_refused_before_allocation_and_leaves_nothing() {
        let (_dir, archive) = crate::store::temp_archive().await;
        let mut bomb = vec![0x10, 0x00, 0x10, 0x00, b'O', b'B', 0, 0];
        bomb.extend_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        bomb.push(0);
        let source = Source::Dimse {
            calling_ae_title: "BOMB".to_owned(),
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        let mut upload = archive
            .begin_dataset_upload(
                "1.2.840.10008.5.1.4.1.1.7",
                "1.2.3.4.5",
                "1.2.840.10008.1.2.1",
                "BOMB",
            )
            .await
            .unwrap();
        upload.write(&bomb).await.unwrap();
        match archive.put(upload, &source).await {
            Err(PutError::Invalid(reason)) => {
                assert!(reason.contains("declares 2147483632 bytes"), "{reason}")
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        // The same as a whole Part 10 file (the STOW-RS path).
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        let meta = dicom_object::meta::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
            .media_storage_sop_instance_uid("1.2.3.4.5")
            .transfer_syntax("1.2.840.10008.1.2.1")
            .build()
            .unwrap();
        meta.write(&mut file).unwrap();
        file.extend_from_slice(&bomb);
        let mut upload = archive.begin_file_upload().await.unwrap();
        upload.write(&file).await.unwrap();
        assert!(matches!(
            archive.put(upload, &source).await,
            Err(PutError::Invalid(_))
        ));

        let tmp = archive.leftover_upload_files().await;
        assert!(tmp.is_empty(), "{tmp:?}");
        assert!(archive.inner.index.blob_keys().await.unwrap().is_empty());
        assert!(archive.inner.blobs.keys().await.unwrap().is_empty());
        let studies = archive
            .query(&Query {
                level: QueryLevel::Study,
                keys: Vec::new(),
                include: Include::Default,
                fuzzy_matching: false,
                combined_datetime: false,
                limit: None,
                offset: 0,
            })
            .await
            .unwrap();
        assert!(studies.is_empty());
    }
}

#[cfg(test)]
mod read_tests {
    use super::*;

    /// A new instance's row can commit a moment before its blob is placed (`store_new`):
    /// a read that finds no blob waits for the put of that instance, then reads again; with
    /// no put in flight, a missing blob is NotFound at once.
    #[tokio::test]
    async fn a_read_that_finds_no_blob_waits_for_the_put_in_flight() {
        let (dir, archive) = crate::store::temp_archive().await;
        let file = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../dicom-samples/studies/studies/0004_CR/CR0001.dcm"),
        )
        .unwrap();
        let mut upload = archive.begin_file_upload().await.unwrap();
        upload.write(&file).await.unwrap();
        let source = Source::Stow {
            user: "test".to_owned(),
            peer: None,
        };
        let Ok(PutOutcome::Stored(instance)) = archive.put(upload, &source).await else {
            panic!("the sample is stored");
        };
        let blob = dir.path().join("blobs").join(&instance.blob_key);
        let aside = dir.path().join("aside.dcm");
        std::fs::rename(&blob, &aside).unwrap();

        // As during a put: the stripe is held and the blob is not yet in place.
        let put_in_flight = archive.stripe(&instance.sop_instance_uid).lock().await;
        let reader = tokio::spawn({
            let archive = archive.clone();
            let instance = instance.clone();
            async move { archive.read_blob(&instance).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!reader.is_finished(), "the read waits for the put");
        std::fs::rename(&aside, &blob).unwrap();
        drop(put_in_flight);
        assert_eq!(reader.await.unwrap().unwrap(), file);

        std::fs::remove_file(&blob).unwrap();
        assert!(matches!(
            archive.read_blob(&instance).await,
            Err(StoreError::NotFound(_))
        ));
    }
}
