//! Rotation by size: the full file is renamed `<log>.<seq>`, where `<seq>` is the `seq` of its
//! last line, and the chain continues in a new `<log>`. Names never shift, so a rotation is one
//! `rename(2)` under the lock, and the order of the files is the numeric order of the suffixes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::AuditError;

/// Default size at which the log is rotated: 64 MiB.
pub const DEFAULT_ROTATE_BYTES: u64 = 64 << 20;

/// Environment variable setting the rotation size in bytes (`0` turns rotation off).
pub const ROTATE_ENV: &str = "CALYX_AUDIT_ROTATE_BYTES";

/// The rotation size from the value of [`ROTATE_ENV`] (unset or empty: the default).
pub fn rotate_bytes_from(value: Option<&str>) -> Result<u64, AuditError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(DEFAULT_ROTATE_BYTES),
        Some(v) => v.parse::<u64>().map_err(|_| AuditError::RotateSize {
            value: v.to_owned(),
        }),
    }
}

/// The name a log rotated after line `seq` gets.
pub fn rotated_path(log: &Path, seq: u64) -> PathBuf {
    let mut name = log.file_name().map(OsString::from).unwrap_or_default();
    name.push(format!(".{seq}"));
    log.with_file_name(name)
}

/// The suffix of a rotated file's name, when `name` is `<log name>.<digits>`.
pub fn rotated_seq(log_name: &str, name: &str) -> Option<u64> {
    let digits = name.strip_prefix(log_name)?.strip_prefix('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The rotated files of `log`, oldest first. A missing directory has none.
pub fn rotated_files(log: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let dir = match log.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(log_name) = log.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(AuditError::Open {
                op: "listing the rotated files of",
                path: log.to_owned(),
                source,
            });
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(|n| rotated_seq(log_name, n)) {
            found.push((seq, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Renames the full `log` to its rotated name (refusing to replace an existing file), and
/// syncs the directory so the rename survives a crash. Called with the log's lock held.
pub fn rotate(log: &Path, last_seq: u64) -> Result<(), AuditError> {
    let target = rotated_path(log, last_seq);
    let rerr = |op: &'static str, source| AuditError::Write {
        op,
        path: log.to_owned(),
        source,
    };
    // Only calyx writes here and it holds the lock, so the check cannot race another
    // rotation; a file already there means someone else put it there, and it is not replaced.
    if target.symlink_metadata().is_ok() {
        return Err(AuditError::RotateTarget { path: target });
    }
    std::fs::rename(log, &target).map_err(|e| rerr("rotating", e))?;
    sync_dir(log).map_err(|e| rerr("syncing the directory of", e))
}

/// fsync of the directory holding `path`: makes a created or renamed entry durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rotation_size_from_env() {
        assert_eq!(rotate_bytes_from(None).unwrap(), DEFAULT_ROTATE_BYTES);
        assert_eq!(rotate_bytes_from(Some("")).unwrap(), DEFAULT_ROTATE_BYTES);
        assert_eq!(rotate_bytes_from(Some("4096")).unwrap(), 4096);
        assert_eq!(rotate_bytes_from(Some("0")).unwrap(), 0);
        assert!(rotate_bytes_from(Some("64M")).is_err());
        assert!(rotate_bytes_from(Some("-1")).is_err());
    }

    #[test]
    fn rotated_names() {
        let log = Path::new("/s/audit.jsonl");
        assert_eq!(rotated_path(log, 42), PathBuf::from("/s/audit.jsonl.42"));
        let cases = [
            ("audit.jsonl.42", Some(42)),
            ("audit.jsonl.007", Some(7)),
            ("audit.jsonl.", None),
            ("audit.jsonl.4x", None),
            ("audit.jsonl", None),
            ("audit.jsonl.lock", None),
            ("other.jsonl.3", None),
        ];
        for (name, want) in cases {
            assert_eq!(rotated_seq("audit.jsonl", name), want, "{name}");
        }
    }

    #[test]
    fn rotated_files_sort_numerically() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.jsonl");
        for n in [
            "a.jsonl.10",
            "a.jsonl.9",
            "a.jsonl.100",
            "a.jsonl",
            "b.jsonl.1",
        ] {
            std::fs::write(dir.path().join(n), "").unwrap();
        }
        let seqs: Vec<u64> = rotated_files(&log).unwrap().iter().map(|f| f.0).collect();
        assert_eq!(seqs, [9, 10, 100]);
    }
}
