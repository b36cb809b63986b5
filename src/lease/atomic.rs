//! Replacing a file atomically: write a temporary sibling, fsync it, rename it over the target.
//!
//! Readers (a runner verifying the lease while someone cosigns it) see the old file or the new
//! one, never a torn mix, and a crash mid-write leaves the old file intact.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Whether [`replace`] waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    /// The file and the rename are synced: the new file survives a crash.
    Durable,
    /// Neither is: readers still never see a torn file, but after a power loss it may be
    /// missing or torn. For copies of what is kept durably elsewhere.
    PageCache,
}

/// Writes `contents` to `path` via a temporary file created with `mode` (so the final file
/// never has wider permissions, even briefly), an fsync and a rename in the same directory,
/// itself synced.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    replace(path, contents, mode, Flush::Durable)
}

/// [`write_atomic`], with the syncs as `flush` says.
pub(crate) fn replace(path: &Path, contents: &[u8], mode: u32, flush: Flush) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut suffix = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut suffix);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", hex::encode(suffix)));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        if flush == Flush::Durable {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if flush == Flush::Durable {
            // Persist the rename itself: the directory entry lives in the directory's data.
            File::open(&dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        // Best effort: the temporary may not exist if creating it was what failed.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
