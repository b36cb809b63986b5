//! The content-addressed store: `STATE_DIR/artifacts/sha256/<hex>`, one file per distinct
//! content, mode 0600 in a 0700 directory (artifacts may hold secrets of the run).
//!
//! Writing: each file is copied into a temporary name in the store while it is hashed; a
//! content already stored is dropped at once (dedupe). [`Batch::commit`] then makes the whole
//! batch durable with one `syncfs` and one directory `fsync`, whatever the number of files, and
//! renames each temporary to its digest: readers only ever see complete, synced blobs.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ArtifactError;

/// Copy buffer: large enough that syscalls do not dominate, small enough for the stack budget
/// of a heap `Vec` we reuse.
const COPY_CHUNK: usize = 128 * 1024;

/// The store under one state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// What [`Batch::add`] did with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// Stored (or already present): its digest and size.
    Stored {
        /// Lowercase hex SHA-256.
        sha256: String,
        /// Bytes.
        size: u64,
    },
    /// The content was longer than the limit given; nothing was kept.
    TooLarge,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ArtifactError + 'a {
    move |source| ArtifactError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A random temporary name inside `dir` (`.tmp-<hex>`, never a valid digest).
fn temp_name(dir: &Path, prefix: &str) -> PathBuf {
    let mut suffix = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut suffix);
    let mut name = OsString::from(prefix);
    name.push(format!(".tmp-{}", hex::encode(suffix)));
    dir.join(name)
}

/// Parses `sha256:<hex>` or `<hex>`: 64 hex digits, returned lowercase.
pub fn parse_digest(text: &str) -> Result<String, ArtifactError> {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(ArtifactError::BadDigest {
            digest: text.to_owned(),
        })
    }
}

/// Copies `src` into `dst` while hashing, reading at most `limit + 1` bytes.
/// Returns the digest and size, or `None` when `src` holds more than `limit` bytes.
fn copy_hashing(
    src: &mut dyn Read,
    dst: &mut dyn Write,
    limit: u64,
) -> io::Result<Option<(String, u64)>> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut total: u64 = 0;
    let mut bounded = src.take(limit.saturating_add(1));
    loop {
        let n = match bounded.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        if total > limit {
            return Ok(None);
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
    }
    Ok(Some((hex::encode(hasher.finalize()), total)))
}

impl Store {
    /// The store of `state_dir` (nothing is created until something is written).
    pub fn at(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.join("artifacts").join("sha256"),
        }
    }

    /// The directory holding the blobs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob of `sha256` (lowercase hex) lives.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Opens a batch of writes, creating the store (0700) if needed.
    pub fn begin(&self) -> Result<Batch, ArtifactError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err("creating the artifact store", &self.dir))?;
        let dir_file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.dir)
            .map_err(io_err("opening the artifact store", &self.dir))?;
        Ok(Batch {
            dir: self.dir.clone(),
            dir_file,
            pending: Vec::new(),
        })
    }

    /// Copies the blob `digest` to `out`, verifying its SHA-256 on the way. `out` is never
    /// overwritten: the copy goes to a temporary sibling and is hard-linked into place, which
    /// fails if `out` exists (no check-then-write race). Returns the size.
    pub fn get(&self, digest: &str, out: &Path) -> Result<u64, ArtifactError> {
        let hex = parse_digest(digest)?;
        let blob = self.blob_path(&hex);
        if out.symlink_metadata().is_ok() {
            return Err(ArtifactError::Exists {
                path: out.to_owned(),
            });
        }
        let mut src = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&blob)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => ArtifactError::NotFound {
                    digest: hex.clone(),
                    store: self.dir.clone(),
                },
                _ => ArtifactError::Io {
                    op: "opening",
                    path: blob.clone(),
                    source,
                },
            })?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let tmp = temp_name(&parent, ".calyx-artifact");
        let result = (|| {
            let mut dst = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("creating", &tmp))?;
            let copied = copy_hashing(&mut src, &mut dst, u64::MAX - 1)
                .map_err(io_err("copying the artifact to", &tmp))?;
            let (found, size) = match copied {
                Some(c) => c,
                None => unreachable_too_large(&blob)?,
            };
            if found != hex {
                return Err(ArtifactError::Corrupt {
                    path: blob.clone(),
                    found,
                });
            }
            dst.sync_all().map_err(io_err("syncing", &tmp))?;
            std::fs::hard_link(&tmp, out).map_err(|source| match source.kind() {
                io::ErrorKind::AlreadyExists => ArtifactError::Exists {
                    path: out.to_owned(),
                },
                _ => ArtifactError::Io {
                    op: "linking the artifact into place at",
                    path: out.to_owned(),
                    source,
                },
            })?;
            Ok(size)
        })();
        // The temporary goes in every case: renamed by the hard link, or a failed copy.
        let _ = std::fs::remove_file(&tmp);
        result
    }
}

/// `copy_hashing` with a limit of `u64::MAX - 1` cannot report "too large"; this keeps that
/// impossibility an error instead of a panic.
fn unreachable_too_large(blob: &Path) -> Result<(String, u64), ArtifactError> {
    Err(ArtifactError::Io {
        op: "reading",
        path: blob.to_owned(),
        source: io::Error::from(io::ErrorKind::FileTooLarge),
    })
}

/// Writes in progress; temporaries not committed are removed on drop.
pub struct Batch {
    dir: PathBuf,
    dir_file: File,
    pending: Vec<(PathBuf, String)>,
}

impl Batch {
    /// Copies `src` (at most `limit` bytes) into a temporary blob. Content already in the store
    /// or already in this batch is not written twice.
    pub fn add(&mut self, src: &mut dyn Read, limit: u64) -> Result<Added, ArtifactError> {
        let tmp = temp_name(&self.dir, "");
        let mut dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        let copied = copy_hashing(src, &mut dst, limit);
        match copied {
            Ok(Some((sha256, size))) => {
                let known = self.pending.iter().any(|(_, d)| *d == sha256)
                    || self.dir.join(&sha256).symlink_metadata().is_ok();
                if known {
                    let _ = std::fs::remove_file(&tmp);
                } else {
                    self.pending.push((tmp, sha256.clone()));
                }
                Ok(Added::Stored { sha256, size })
            }
            Ok(None) => {
                let _ = std::fs::remove_file(&tmp);
                Ok(Added::TooLarge)
            }
            Err(source) => {
                let _ = std::fs::remove_file(&tmp);
                Err(ArtifactError::Io {
                    op: "copying an artifact into",
                    path: tmp,
                    source,
                })
            }
        }
    }

    /// Makes every blob of the batch durable and visible under its digest: one `syncfs` for
    /// the data of all temporaries, the renames, one `fsync` of the store directory.
    pub fn commit(mut self) -> Result<(), ArtifactError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        crate::sys::beneath::syncfs(self.dir_file.as_fd())
            .map_err(io_err("syncing the artifact store", &self.dir))?;
        for (tmp, sha256) in std::mem::take(&mut self.pending) {
            let blob = self.dir.join(&sha256);
            // A concurrent run may have stored the same content meanwhile: same bytes, so
            // replacing it is harmless.
            if let Err(source) = std::fs::rename(&tmp, &blob) {
                let _ = std::fs::remove_file(&tmp);
                return Err(ArtifactError::Io {
                    op: "renaming into place",
                    path: blob,
                    source,
                });
            }
        }
        self.dir_file
            .sync_all()
            .map_err(io_err("syncing the artifact store", &self.dir))
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for (tmp, _) in &self.pending {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn stored_blobs_are_named_by_digest_deduped_and_retrievable() {
        let state = tempfile::tempdir().unwrap();
        let store = Store::at(state.path());
        let mut batch = store.begin().unwrap();
        let a = batch.add(&mut &b"hello"[..], 100).unwrap();
        let again = batch.add(&mut &b"hello"[..], 100).unwrap();
        assert_eq!(a, again);
        assert_eq!(
            batch.add(&mut &b"0123456789A"[..], 10).unwrap(),
            Added::TooLarge
        );
        batch.commit().unwrap();
        let hex = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert_eq!(
            a,
            Added::Stored {
                sha256: hex.into(),
                size: 5
            }
        );
        // Only the one blob: no temporaries, no second copy, nothing of the refused file.
        let names: Vec<_> = std::fs::read_dir(store.dir()).unwrap().collect();
        assert_eq!(names.len(), 1);
        let out = state.path().join("out");
        assert_eq!(store.get(&format!("sha256:{hex}"), &out).unwrap(), 5);
        assert_eq!(std::fs::read(&out).unwrap(), b"hello");
        assert!(matches!(
            store.get(hex, &out),
            Err(ArtifactError::Exists { .. })
        ));
    }

    #[test]
    fn get_refuses_a_blob_whose_content_does_not_match_and_leaves_no_file() {
        let state = tempfile::tempdir().unwrap();
        let store = Store::at(state.path());
        let hex = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        std::fs::create_dir_all(store.dir()).unwrap();
        std::fs::write(store.blob_path(hex), b"HELLO").unwrap();
        let out = state.path().join("out");
        assert!(matches!(
            store.get(hex, &out),
            Err(ArtifactError::Corrupt { .. })
        ));
        assert!(!out.exists());
        // No temporary left beside `out`: the state dir holds only the store.
        assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 1);
        assert!(matches!(
            store.get(&"0".repeat(64), &out),
            Err(ArtifactError::NotFound { .. })
        ));
        for bad in ["abc", &"g".repeat(64), "sha512:00"] {
            assert!(matches!(
                parse_digest(bad),
                Err(ArtifactError::BadDigest { .. })
            ));
        }
    }
}
