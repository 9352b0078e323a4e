//! [`Upload`]: an instance being received, written to a temporary file under `tmp/`.
//!
//! Receiving is pipelined with writing: bytes are gathered in memory and every
//! [`WRITE_CHUNK`] is handed to a blocking thread that hashes it (SHA-256, the blob's key)
//! and writes it while the caller receives the next chunk, with at most one chunk in
//! flight. After each chunk the kernel is asked to start writing it back to the device
//! ([`start_writeback`]), so that the fdatasync at the end of the instance waits for the
//! last chunk rather than for the whole file.
//!
//! [`UploadFiles`] keeps a few temporary files created ahead of need: creating one is an
//! inode allocation (~0.25 ms here), which would otherwise sit on every instance's path
//! between two C-STOREs of one association.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tempfile::{NamedTempFile, TempPath};
use tokio::task::JoinHandle;

use super::{PutError, StoreError};

/// Bytes gathered before they are handed to the writer thread.
const WRITE_CHUNK: usize = 128 * 1024;

/// The first bytes of every upload are also kept in memory, so that its header can be
/// parsed while its last bytes are still being written (see [`Upload::take_head`]).
const HEAD_BYTES: usize = 64 * 1024;

/// Temporary files kept ready (a few associations' next instances).
const SPARE_FILES: usize = 4;

/// The file end of an upload: the file, its hash so far and how much has been written.
/// Owned by whichever side is working: the upload while idle, a blocking task while a
/// chunk is being written.
struct FileWriter {
    file: std::fs::File,
    hasher: Sha256,
    written: u64,
}

impl FileWriter {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.file.write_all(bytes)?;
        start_writeback(&self.file, self.written, bytes.len());
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` back to the device now,
/// without waiting (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only a hint: the
/// instance is made durable by the fdatasync in [`Archive::put`](super::Archive::put), and a
/// failure here changes nothing but timing.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is borrowed from a live `File` for the duration of the call,
    // and sync_file_range neither reads nor writes process memory.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc != 0 {
        tracing::trace!(error = %std::io::Error::last_os_error(), "sync_file_range hint failed");
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: usize) {}

enum WriterState {
    Idle(FileWriter),
    /// A chunk is being written; the task gives back the writer and the emptied buffer.
    Busy(JoinHandle<std::io::Result<(FileWriter, Vec<u8>)>>),
    /// A write failed; the upload can only be dropped.
    Failed,
}

/// An instance being received: a temporary file under `tmp/`, deleted if the upload is
/// dropped or refused. Boxed inside so that it moves cheaply through callers' enums.
pub struct Upload {
    inner: Box<UploadInner>,
}

struct UploadInner {
    writer: WriterState,
    /// Received bytes not yet handed to the writer.
    pending: Vec<u8>,
    /// The buffer the writer gave back, reused for the next chunk.
    spare: Vec<u8>,
    /// A copy of the file's first [`HEAD_BYTES`].
    head: Vec<u8>,
    path: TempPath,
    /// Data set bytes written with [`Upload::write`].
    len: u64,
    /// Every byte of the file (header included).
    size: u64,
    /// Set when the header could not be built (bad UIDs from the command): `put` refuses.
    invalid: Option<String>,
}

/// A finished upload, every byte in the file (not yet fsynced).
pub(super) struct WrittenUpload {
    pub file: std::fs::File,
    pub path: TempPath,
    pub sha256: String,
    pub size: u64,
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::Blob(std::io::Error::other(format!("upload write task: {e}")))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl Upload {
    fn new(file: NamedTempFile) -> Upload {
        let (file, path) = file.into_parts();
        Upload {
            inner: Box::new(UploadInner {
                writer: WriterState::Idle(FileWriter {
                    file,
                    hasher: Sha256::new(),
                    written: 0,
                }),
                pending: Vec::with_capacity(WRITE_CHUNK),
                spare: Vec::with_capacity(WRITE_CHUNK),
                head: Vec::new(),
                path,
                len: 0,
                size: 0,
                invalid: None,
            }),
        }
    }

    /// Marks the upload as one that `put` must refuse, with the reason.
    pub(super) fn set_invalid(&mut self, reason: String) {
        self.inner.invalid = Some(reason);
    }

    /// Waits for the chunk in flight, if any, and takes the writer.
    async fn idle_writer(&mut self) -> Result<FileWriter, StoreError> {
        match std::mem::replace(&mut self.inner.writer, WriterState::Failed) {
            WriterState::Idle(writer) => Ok(writer),
            WriterState::Busy(task) => {
                let (writer, mut buffer) = task.await.map_err(join_error)??;
                buffer.clear();
                self.inner.spare = buffer;
                Ok(writer)
            }
            WriterState::Failed => Err(StoreError::Blob(std::io::Error::other(
                "an earlier write of this upload failed",
            ))),
        }
    }

    /// Hands the pending bytes to a blocking thread and returns without waiting for it.
    async fn hand_off(&mut self) -> Result<(), StoreError> {
        let mut writer = self.idle_writer().await?;
        let chunk = std::mem::replace(
            &mut self.inner.pending,
            std::mem::take(&mut self.inner.spare),
        );
        self.inner.writer = WriterState::Busy(tokio::task::spawn_blocking(move || {
            writer.append(&chunk)?;
            Ok((writer, chunk))
        }));
        Ok(())
    }

    pub(super) async fn write_raw(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let head_room = HEAD_BYTES.saturating_sub(self.inner.head.len());
        if head_room > 0 {
            let copied = &chunk[..head_room.min(chunk.len())];
            self.inner.head.extend_from_slice(copied);
        }
        self.inner.pending.extend_from_slice(chunk);
        self.inner.size += chunk.len() as u64;
        if self.inner.pending.len() >= WRITE_CHUNK {
            self.hand_off().await?;
        }
        Ok(())
    }

    /// Appends bytes to the upload.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.write_raw(chunk).await?;
        self.inner.len += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written with [`Upload::write`] so far (callers enforce size bounds).
    pub fn len(&self) -> u64 {
        self.inner.len
    }

    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// The file's first bytes (all of them if it is small) and its size so far; the head is
    /// moved out, so this is for the one parse at the end of the upload.
    pub(super) fn take_head(&mut self) -> (Vec<u8>, u64) {
        (std::mem::take(&mut self.inner.head), self.inner.size)
    }

    /// Writes what is left and finishes the hash. On `Err` (the upload was marked invalid,
    /// or writing failed) the temporary file is removed.
    pub(super) async fn finish(mut self) -> Result<WrittenUpload, PutError> {
        if let Some(reason) = self.inner.invalid.take() {
            return Err(PutError::Invalid(reason));
        }
        let mut writer = self.idle_writer().await?;
        let tail = std::mem::take(&mut self.inner.pending);
        let (file, sha256) = tokio::task::spawn_blocking(move || {
            writer.append(&tail)?;
            Ok::<_, std::io::Error>((writer.file, hex(&writer.hasher.finalize())))
        })
        .await
        .map_err(join_error)?
        .map_err(StoreError::from)?;
        let UploadInner { path, size, .. } = *self.inner;
        Ok(WrittenUpload {
            file,
            path,
            sha256,
            size,
        })
    }
}

/// Creates uploads' temporary files, keeping [`SPARE_FILES`] created ahead of need.
pub(super) struct UploadFiles {
    dir: PathBuf,
    pool: Arc<Mutex<SparePool>>,
}

#[derive(Default)]
struct SparePool {
    ready: Vec<NamedTempFile>,
    /// Spares being created by background tasks.
    creating: usize,
}

impl UploadFiles {
    pub fn new(dir: PathBuf) -> UploadFiles {
        UploadFiles {
            dir,
            pool: Arc::default(),
        }
    }

    fn create(dir: &Path) -> std::io::Result<NamedTempFile> {
        tempfile::Builder::new().prefix("up-").tempfile_in(dir)
    }

    /// A new, empty upload; a spare file if one is ready. Then the pool is refilled in the
    /// background (off the caller's path).
    pub async fn upload(&self) -> Result<Upload, StoreError> {
        let spare = self.pool.lock().ok().and_then(|mut pool| pool.ready.pop());
        let file = match spare {
            Some(file) => file,
            None => {
                let dir = self.dir.clone();
                tokio::task::spawn_blocking(move || Self::create(&dir))
                    .await
                    .map_err(join_error)??
            }
        };
        self.replenish();
        Ok(Upload::new(file))
    }

    fn replenish(&self) {
        let Ok(mut pool) = self.pool.lock() else {
            return;
        };
        if pool.ready.len() + pool.creating >= SPARE_FILES {
            return;
        }
        pool.creating += 1;
        drop(pool);
        let (dir, pool) = (self.dir.clone(), Arc::clone(&self.pool));
        tokio::task::spawn_blocking(move || {
            let created = Self::create(&dir);
            let Ok(mut pool) = pool.lock() else {
                return;
            };
            pool.creating -= 1;
            match created {
                Ok(file) => pool.ready.push(file),
                // The next upload creates its own file, and reports the error if it persists.
                Err(e) => tracing::debug!(error = %e, "could not create a spare upload file"),
            }
        });
    }

    /// Files under `tmp/` that are not ready spares: uploads in progress or left behind.
    /// Waits for spares being created first, so that none is mistaken for a leftover.
    #[cfg(test)]
    pub async fn files_other_than_spares(&self) -> Vec<PathBuf> {
        for _ in 0..500 {
            if self.pool.lock().map_or(true, |pool| pool.creating == 0) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let spares: Vec<PathBuf> = self.pool.lock().map_or_else(
            |_| Vec::new(),
            |pool| pool.ready.iter().map(|f| f.path().to_path_buf()).collect(),
        );
        std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| !spares.contains(p))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of every length around the chunk size come out of the pipeline whole and in
    /// order, with the hash of exactly those bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_and_hash_survive_the_write_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let files = UploadFiles::new(dir.path().to_path_buf());
        for total in [0, 1, WRITE_CHUNK - 1, WRITE_CHUNK, 3 * WRITE_CHUNK + 17] {
            let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut upload = files.upload().await.unwrap();
            // Pieces of varying size, as PDVs or multipart chunks arrive.
            let mut rest = data.as_slice();
            let mut piece = 1;
            while !rest.is_empty() {
                let (head, tail) = rest.split_at(piece.min(rest.len()));
                upload.write(head).await.unwrap();
                rest = tail;
                piece = piece * 3 + 1000;
            }
            assert_eq!(upload.len(), total as u64);
            let written = upload.finish().await.unwrap();
            assert_eq!(written.size, total as u64);
            assert_eq!(std::fs::read(&written.path).unwrap(), data, "{total} bytes");
            assert_eq!(written.sha256, hex(&Sha256::digest(&data)), "{total} bytes");
        }
    }

    /// The pool refills in the background, and the next upload takes a ready file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_take_spare_files_created_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let files = UploadFiles::new(dir.path().to_path_buf());
        let first = files.upload().await.unwrap();
        let in_use = files.files_other_than_spares().await;
        assert_eq!(in_use, vec![first.inner.path.to_path_buf()]);
        let ready: Vec<PathBuf> = files
            .pool
            .lock()
            .unwrap()
            .ready
            .iter()
            .map(|f| f.path().to_path_buf())
            .collect();
        assert_eq!(ready.len(), 1, "one spare made after the first upload");
        let second = files.upload().await.unwrap();
        assert!(ready.contains(&second.inner.path.to_path_buf()));
        // Dropped uploads remove their files; the spares stay, up to the pool's size.
        drop((first, second));
        assert!(files.files_other_than_spares().await.is_empty());
        for _ in 0..10 {
            drop(files.upload().await.unwrap());
        }
        assert!(files.files_other_than_spares().await.is_empty());
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        assert!((1..=SPARE_FILES).contains(&left), "{left} spares");
    }

    /// An upload dropped with a chunk still being written leaves no file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_dropped_mid_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = UploadFiles::new(dir.path().to_path_buf());
        let mut upload = files.upload().await.unwrap();
        upload.write(&vec![1u8; 2 * WRITE_CHUNK]).await.unwrap();
        assert!(matches!(upload.inner.writer, WriterState::Busy(_)));
        drop(upload);
        assert!(files.files_other_than_spares().await.is_empty());
    }
}
