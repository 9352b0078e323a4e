//! Blob storage for Part 10 files, behind the [`BlobStore`] trait.
//!
//! Uploads are staged by the archive as local temporary files (under `tmp/`); a blob store
//! takes such a file, makes it durable and returns only then. The filesystem store
//! ([`FsBlobStore`]) is **content addressed**: a blob's key is
//! `<sha[0..2]>/<sha[2..4]>/<sha256>.dcm` under `blobs/`. That choice makes every step
//! crash-safe without a journal: a blob is written (temp file fsynced, renamed, directory
//! fsynced) before any index row names it, so an index row never points at a missing or
//! half-written blob; a replaced instance gets a new key, so the old row keeps pointing at
//! intact bytes until the new row commits. A crash can only leave orphan blobs (no row),
//! which [`crate::store::Archive::open`] removes. An object-store backend would implement
//! the same trait (upload the staged file, then return).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

/// A boxed future, so that [`BlobStore`] stays object-safe (`Arc<dyn BlobStore>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Durable storage of Part 10 files by key.
pub trait BlobStore: Send + Sync + 'static {
    /// Stores the (already complete) local file `staged` under the key derived from its
    /// SHA-256 and returns that key once the bytes are durable. `staged` is consumed
    /// (moved or deleted). Storing an existing key again is a no-op.
    fn put<'a>(
        &'a self,
        staged: &'a Path,
        sha256_hex: &'a str,
    ) -> BoxFuture<'a, io::Result<String>>;
    /// The blob's bytes.
    fn read<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Vec<u8>>>;
    /// Removes a blob; a missing blob is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>>;
    /// Whether the blob exists.
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<bool>>;
    /// Every stored key (used on open to remove orphans).
    fn keys(&self) -> BoxFuture<'_, io::Result<Vec<String>>>;
    /// Checks that new blobs can be written (readiness).
    fn check_writable(&self) -> BoxFuture<'_, io::Result<()>>;
}

/// The filesystem blob store: `<data>/blobs/aa/bb/<sha256>.dcm`.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

/// Whether `key` has the shape this store produces (so a key from the index can never
/// name a path outside the blob directory).
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 6 + 64 + 4
        && b[2] == b'/'
        && b[5] == b'/'
        && key.ends_with(".dcm")
        && key[6..70]
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        && key[0..2] == key[6..8]
        && key[3..5] == key[8..10]
}

/// The key of a blob with this SHA-256 (lower-case hex).
pub fn key_for(sha256_hex: &str) -> io::Result<String> {
    let key = format!(
        "{}/{}/{}.dcm",
        sha256_hex.get(0..2).unwrap_or(""),
        sha256_hex.get(2..4).unwrap_or(""),
        sha256_hex
    );
    if valid_key(&key) {
        Ok(key)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid SHA-256",
        ))
    }
}

/// fsyncs a directory so that a rename or unlink in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl FsBlobStore {
    /// A store rooted at `root` (created if missing).
    pub fn new(root: PathBuf) -> io::Result<FsBlobStore> {
        std::fs::create_dir_all(&root)?;
        Ok(FsBlobStore { root })
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        if valid_key(key) {
            Ok(self.root.join(key))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid blob key {key:?}"),
            ))
        }
    }

    fn put_blocking(&self, staged: &Path, sha256_hex: &str) -> io::Result<String> {
        let key = key_for(sha256_hex)?;
        let dest = self.path(&key)?;
        let dir = dest
            .parent()
            .ok_or_else(|| io::Error::other("blob path has no parent"))?
            .to_path_buf();
        if dest.exists() {
            // Same content is already durable: drop the staged copy.
            std::fs::remove_file(staged)?;
            return Ok(key);
        }
        std::fs::create_dir_all(&dir)?;
        // The caller fsynced the file's data; rename, then make the rename durable. The new
        // directories' entries are synced too (a fresh `aa/bb/` must survive a crash).
        std::fs::rename(staged, &dest)?;
        sync_dir(&dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        sync_dir(&self.root)?;
        Ok(key)
    }

    fn keys_blocking(&self) -> io::Result<Vec<String>> {
        let mut keys = Vec::new();
        for a in std::fs::read_dir(&self.root)? {
            let a = a?;
            if !a.file_type()?.is_dir() {
                continue;
            }
            for b in std::fs::read_dir(a.path())? {
                let b = b?;
                if !b.file_type()?.is_dir() {
                    continue;
                }
                for f in std::fs::read_dir(b.path())? {
                    let f = f?;
                    let key = format!(
                        "{}/{}/{}",
                        a.file_name().to_string_lossy(),
                        b.file_name().to_string_lossy(),
                        f.file_name().to_string_lossy()
                    );
                    if valid_key(&key) {
                        keys.push(key);
                    }
                }
            }
        }
        Ok(keys)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("blob task failed: {e}")))?
}

impl BlobStore for FsBlobStore {
    fn put<'a>(
        &'a self,
        staged: &'a Path,
        sha256_hex: &'a str,
    ) -> BoxFuture<'a, io::Result<String>> {
        let this = self.clone();
        let staged = staged.to_path_buf();
        let sha = sha256_hex.to_owned();
        Box::pin(blocking(move || this.put_blocking(&staged, &sha)))
    }

    fn read<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Vec<u8>>> {
        Box::pin(async move { tokio::fs::read(self.path(key)?).await })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.path(key)?).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<bool>> {
        Box::pin(async move { tokio::fs::try_exists(self.path(key)?).await })
    }

    fn keys(&self) -> BoxFuture<'_, io::Result<Vec<String>>> {
        let this = self.clone();
        Box::pin(blocking(move || this.keys_blocking()))
    }

    fn check_writable(&self) -> BoxFuture<'_, io::Result<()>> {
        let root = self.root.clone();
        Box::pin(blocking(move || {
            let probe = tempfile::Builder::new()
                .prefix(".ready")
                .tempfile_in(&root)?;
            drop(probe);
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        let sha = "ab".repeat(32);
        let key = key_for(&sha).unwrap();
        assert_eq!(key, format!("ab/ab/{sha}.dcm"));
        assert!(valid_key(&key));
        assert!(key_for("../../etc/passwd").is_err());
        assert!(!valid_key("../ab/x.dcm"));
        assert!(!valid_key(&format!("cd/ab/{sha}.dcm")));
    }

    #[tokio::test]
    async fn put_read_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path().join("blobs")).unwrap();
        let staged = dir.path().join("staged");
        std::fs::write(&staged, b"hello").unwrap();
        let sha = "0f".repeat(32);
        let key = store.put(&staged, &sha).await.unwrap();
        assert!(!staged.exists());
        assert!(store.exists(&key).await.unwrap());
        assert_eq!(store.read(&key).await.unwrap(), b"hello");
        assert_eq!(store.keys().await.unwrap(), vec![key.clone()]);
        // A second put of the same content keeps one copy and consumes the staged file.
        std::fs::write(&staged, b"hello").unwrap();
        assert_eq!(store.put(&staged, &sha).await.unwrap(), key);
        assert!(!staged.exists());
        store.delete(&key).await.unwrap();
        store.delete(&key).await.unwrap();
        assert!(!store.exists(&key).await.unwrap());
        store.check_writable().await.unwrap();
    }
}
