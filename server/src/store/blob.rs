//! Blob storage for Part 10 files, behind the [`BlobStore`] trait.
//!
//! Uploads are staged by the archive as local temporary files (under `tmp/`); a blob store
//! takes such a file, makes it durable and returns only then. The filesystem store
//! ([`FsBlobStore`]) is **content addressed**: a blob's key is `<sha[0..2]>/<sha256>.dcm`
//! under `blobs/`. The 256 fan-out directories are created (and made durable) once, when
//! the store is opened, so that a put never pays for a `mkdir` and its fsyncs: one
//! directory fsync per blob (a million instances make ~4,000 files per directory, which
//! ext4 and XFS index as a tree). Content addressing makes every step crash-safe without
//! a journal. A put has two steps: [`BlobStore::place`] makes the blob readable under its
//! key (the staged file's data is already fsynced; the rename is not yet durable), and
//! [`BlobStore::make_durable`] makes the placement survive a crash (fsync of the
//! directory); [`BlobStore::place_durable`] does both (the filesystem store in one blocking
//! task). The archive runs them while the index commits the row and acknowledges
//! only after both, so a crash can leave a blob with no row (an orphan) or a row whose
//! placement was lost — of an instance that was never acknowledged; on open,
//! [`crate::store::Archive::open`] removes both. A reader that finds a row before its blob
//! waits for the put (see [`crate::store::Archive::read_blob`]). A replaced instance gets a
//! new key, so the old row keeps pointing at intact bytes until the new row commits. An
//! object-store backend implements the same trait (`place` uploads the staged file;
//! `make_durable` has nothing left to do).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

/// A boxed future, so that [`BlobStore`] stays object-safe (`Arc<dyn BlobStore>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Durable storage of Part 10 files by key.
pub trait BlobStore: Send + Sync + 'static {
    /// Makes the (already complete, fsynced) local file `staged` readable under the key
    /// derived from its SHA-256 and returns that key; the placement may not survive a
    /// crash until [`BlobStore::make_durable`]. `staged` is consumed (moved or deleted).
    /// Placing an existing key again is a no-op.
    fn place<'a>(
        &'a self,
        staged: &'a Path,
        sha256_hex: &'a str,
    ) -> BoxFuture<'a, io::Result<String>>;
    /// The key [`BlobStore::place`] gives content with this SHA-256.
    fn key_for(&self, sha256_hex: &str) -> io::Result<String>;
    /// Returns once the placement of `key` survives a crash.
    fn make_durable<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>>;
    /// [`BlobStore::place`], then [`BlobStore::make_durable`]: returns the key once the
    /// placement survives a crash. A store may do both in one step.
    fn place_durable<'a>(
        &'a self,
        staged: &'a Path,
        sha256_hex: &'a str,
    ) -> BoxFuture<'a, io::Result<String>> {
        Box::pin(async move {
            let key = self.place(staged, sha256_hex).await?;
            self.make_durable(&key).await?;
            Ok(key)
        })
    }
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

/// The filesystem blob store: `<data>/blobs/aa/<sha256>.dcm`.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

/// Whether `key` has the shape this store produces (so a key from the index can never
/// name a path outside the blob directory).
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 3 + 64 + 4
        && b[2] == b'/'
        && key.ends_with(".dcm")
        && key[3..67]
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        && key[0..2] == key[3..5]
}

/// The key of a blob with this SHA-256 (lower-case hex).
pub fn key_for(sha256_hex: &str) -> io::Result<String> {
    let key = format!("{}/{}.dcm", sha256_hex.get(0..2).unwrap_or(""), sha256_hex);
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
    /// A store rooted at `root`: it and its 256 fan-out directories are created if missing
    /// and made durable before any blob goes in.
    pub fn new(root: PathBuf) -> io::Result<FsBlobStore> {
        std::fs::create_dir_all(&root)?;
        let mut created = false;
        for byte in 0..=255u8 {
            let dir = root.join(format!("{byte:02x}"));
            if !dir.is_dir() {
                std::fs::create_dir(&dir)?;
                sync_dir(&dir)?;
                created = true;
            }
        }
        if created {
            sync_dir(&root)?;
            if let Some(parent) = root.parent() {
                sync_dir(parent)?;
            }
        }
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

    fn place_blocking(&self, staged: &Path, sha256_hex: &str) -> io::Result<String> {
        let key = key_for(sha256_hex)?;
        let dest = self.path(&key)?;
        if dest.exists() {
            // Same content is already durable: drop the staged copy.
            std::fs::remove_file(staged)?;
            return Ok(key);
        }
        // The caller fsynced the file's data; `make_durable` syncs the directory entry (the
        // fan-out directory itself is durable since `new`).
        std::fs::rename(staged, &dest)?;
        Ok(key)
    }

    /// The directory holding the blob `key`: the one whose fsync makes its placement durable.
    fn directory_of(&self, key: &str) -> io::Result<PathBuf> {
        self.path(key)?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| io::Error::other("blob path has no parent"))
    }

    /// Runs `step` on the staged file and its SHA-256 in a blocking task.
    fn placing<'a>(
        &self,
        staged: &Path,
        sha: &str,
        step: impl FnOnce(&FsBlobStore, &Path, &str) -> io::Result<String> + Send + 'static,
    ) -> BoxFuture<'a, io::Result<String>> {
        let this = self.clone();
        let (staged, sha) = (staged.to_path_buf(), sha.to_owned());
        Box::pin(blocking(move || step(&this, &staged, &sha)))
    }

    fn keys_blocking(&self) -> io::Result<Vec<String>> {
        let mut keys = Vec::new();
        for a in std::fs::read_dir(&self.root)? {
            let a = a?;
            if !a.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(a.path())? {
                let f = f?;
                let key = format!(
                    "{}/{}",
                    a.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                );
                if valid_key(&key) {
                    keys.push(key);
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
    fn place<'a>(&'a self, staged: &'a Path, sha: &'a str) -> BoxFuture<'a, io::Result<String>> {
        self.placing(staged, sha, Self::place_blocking)
    }

    fn key_for(&self, sha256_hex: &str) -> io::Result<String> {
        key_for(sha256_hex)
    }

    /// The rename and the directory fsync in one blocking task (one thread hop, not two).
    fn place_durable<'a>(
        &'a self,
        staged: &'a Path,
        sha: &'a str,
    ) -> BoxFuture<'a, io::Result<String>> {
        self.placing(staged, sha, |this, staged, sha| {
            let key = this.place_blocking(staged, sha)?;
            sync_dir(&this.directory_of(&key)?)?;
            Ok(key)
        })
    }

    fn make_durable<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let dir = self.directory_of(key)?;
            blocking(move || sync_dir(&dir)).await
        })
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
        assert_eq!(key, format!("ab/{sha}.dcm"));
        assert!(valid_key(&key));
        assert!(key_for("../../etc/passwd").is_err());
        assert!(!valid_key("../ab/x.dcm"));
        assert!(!valid_key(&format!("cd/{sha}.dcm")));
        assert!(!valid_key(&format!("ab/ab/{sha}.dcm")));
    }

    #[tokio::test]
    async fn put_read_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path().join("blobs")).unwrap();
        let staged = dir.path().join("staged");
        std::fs::write(&staged, b"hello").unwrap();
        let sha = "0f".repeat(32);
        let key = store.place_durable(&staged, &sha).await.unwrap();
        assert!(!staged.exists());
        assert!(store.exists(&key).await.unwrap());
        assert_eq!(store.read(&key).await.unwrap(), b"hello");
        assert_eq!(store.keys().await.unwrap(), vec![key.clone()]);
        // A second put of the same content keeps one copy and consumes the staged file.
        std::fs::write(&staged, b"hello").unwrap();
        assert_eq!(store.place(&staged, &sha).await.unwrap(), key);
        assert!(!staged.exists());
        store.delete(&key).await.unwrap();
        store.delete(&key).await.unwrap();
        assert!(!store.exists(&key).await.unwrap());
        store.check_writable().await.unwrap();
    }
}
