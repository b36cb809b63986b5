//! The audit log: JSON Lines, one event per line, hash-chained, appended under a lock.
//!
//! Every event goes through [`AuditLog::append`], the single write path. Under an exclusive
//! `flock` on the log file it reads the last line's `seq` and hash from the tail (`pread`, never
//! the whole file), writes the new line with one `write(2)` and, for [`Durability::Synced`],
//! `fdatasync`s it. Chain fields and the tail: [`chain`]; rotation by size: [`rotate`];
//! `calyx audit verify`: [`verify`].
//!
//! A write cut short (runner killed mid-write, disk full) leaves an unterminated fragment. The
//! next append seals it: it writes a newline first, links its line to the last complete line
//! before the fragment, and records the fragment's offset and length in `torn_tail`, so the
//! chain stays checkable and `calyx audit verify` reports where a record was lost.

pub mod chain;
pub mod rotate;
pub mod verify;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use chain::{GENESIS, Torn};

/// Event names (SPEC §5, kept from the system calyx replaces).
pub mod names {
    /// Lease verified and argv allowed.
    pub const LEASE_VERIFIED: &str = "lease_event.VERIFIED";
    /// Lease or run refused.
    pub const LEASE_REJECTED: &str = "lease_event.REJECTED";
    /// Lease revoked in the ledger (`calyx lease revoke`).
    pub const LEASE_REVOKED: &str = "lease_event.REVOKED";
    /// Payload about to start.
    pub const EXEC_STARTED: &str = "exec_event.STARTED";
    /// Run ended (any outcome but timeout).
    pub const EXEC_FINISHED: &str = "exec_event.FINISHED";
    /// Run ended by the wall-clock timeout.
    pub const EXEC_TIMEOUT: &str = "exec_event.TIMEOUT";
    /// Run ended by a sentinel halt rule.
    pub const EXEC_HALTED: &str = "exec_event.HALTED";
    /// Periodic resource sample, or a `warn` rule firing.
    pub const RESOURCE_MONITORED: &str = "resource_event.MONITORED";
    /// A sentinel rule froze or killed the run.
    pub const RESOURCE_HALTED: &str = "resource_event.HALTED";
    /// An artifact was copied into the content-addressed store.
    pub const ARTIFACT_PERSISTED: &str = "artifact_event.PERSISTED";
}

/// Writing the audit log failed.
#[derive(Debug, Error)]
pub enum AuditError {
    /// Creating the log's directory or opening the log failed.
    #[error("{op} audit log {path}: {source}")]
    Open {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Locking, reading the tail, writing or syncing failed.
    #[error("{op} audit log {path}: {source}")]
    Write {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Serialising the event failed.
    #[error("encoding audit event {event}: {source}")]
    Encode {
        /// Event name.
        event: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// The last line of the log is not a chained record, so there is nothing to link to.
    #[error(
        "cannot continue the hash chain of audit log {path}: {why}; check it with `calyx audit verify {path}` and move it aside"
    )]
    Tail {
        /// Path.
        path: PathBuf,
        /// What is wrong with the last line.
        why: String,
    },
    /// The rotation size in the environment is not a number of bytes.
    #[error("{env}={value:?} is not a number of bytes", env = rotate::ROTATE_ENV)]
    RotateSize {
        /// The value found.
        value: String,
    },
    /// The name a full log would be rotated to is taken.
    #[error("rotating the audit log: {path} already exists and is not replaced")]
    RotateTarget {
        /// The existing file.
        path: PathBuf,
    },
    /// The log kept being replaced between opening and locking it.
    #[error("locking audit log {path}: the file kept being replaced (rotation loop)")]
    Unstable {
        /// Path.
        path: PathBuf,
    },
}

/// The ids every event of one run carries.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunIds {
    /// Run id (`RUN-…`).
    pub run_id: String,
    /// Lease id, once the payload has been authenticated and parsed.
    pub lease_id: Option<String>,
    /// Intent id, likewise.
    pub intent_id: Option<String>,
}

/// Whether to flush the line to disk before returning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Leave it to the page cache.
    Buffered,
    /// fdatasync before returning: the run depends on this record existing.
    Synced,
}

/// Where a line sits in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// 1-based sequence number, continuing across rotated files.
    pub seq: u64,
    /// Hash of the previous line, or [`GENESIS`].
    pub prev: String,
    /// A torn fragment this line seals (written right before it).
    pub torn: Option<Torn>,
}

/// A line just written: its position and hash, for receipts to bind to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The line's `seq`.
    pub seq: u64,
    /// Lowercase hex SHA-256 of the line's bytes without its trailing newline.
    pub hash: String,
}

/// How many times one append may find the log replaced under it before giving up.
const MAX_REOPEN: u32 = 64;

/// How far ahead of the log's end blocks are reserved, and how few reserved bytes left make the
/// next append reserve again: about 150 runs' records per reservation, and at most this much
/// storage beyond the end of the current file (a file being rotated gives back what is left).
const RESERVE_BYTES: u64 = 1 << 20;
const RESERVE_LOW_BYTES: u64 = 64 << 10;

/// An open audit log.
pub struct AuditLog {
    file: File,
    path: PathBuf,
    host: String,
    rotate_bytes: u64,
    /// This handle created the file: its directory entry is synced with the next synced line.
    created: bool,
}

/// One pass of an append under the lock.
enum Step {
    Written(Appended),
    Rotated,
}

impl AuditLog {
    /// Opens (creating if needed, mode 0600, directory 0700) `path` for appending, with the
    /// rotation size from `CALYX_AUDIT_ROTATE_BYTES` (default 64 MiB, `0` = never).
    pub fn open(path: &Path, host: String) -> Result<AuditLog, AuditError> {
        let rotate_bytes =
            rotate::rotate_bytes_from(std::env::var(rotate::ROTATE_ENV).ok().as_deref())?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| AuditError::Open {
                    op: "creating the directory of",
                    path: path.to_owned(),
                    source,
                })?;
        }
        let (file, created) = open_log(path)?;
        Ok(AuditLog {
            file,
            path: path.to_owned(),
            host,
            rotate_bytes,
            created,
        })
    }

    /// Sets the rotation size in bytes (`0`: never rotate).
    pub fn set_rotate_bytes(&mut self, bytes: u64) {
        self.rotate_bytes = bytes;
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event: the only write path of the log. Returns the line's `seq` and hash.
    pub fn append(
        &mut self,
        event: &str,
        ids: &RunIds,
        fields: Value,
        durability: Durability,
    ) -> Result<Appended, AuditError> {
        for _ in 0..MAX_REOPEN {
            self.lock_current()?;
            let step = self.append_locked(event, ids, &fields, durability);
            // Closing would release the lock too; unlocking now lets waiters in sooner.
            let _ = crate::sys::lock::unlock(self.file.as_fd());
            match step? {
                Step::Written(appended) => return Ok(appended),
                Step::Rotated => continue,
            }
        }
        Err(AuditError::Unstable {
            path: self.path.clone(),
        })
    }

    /// Makes every line this handle wrote durable (fdatasync, and the directory entry of a
    /// file it created). For a [`Durability::Buffered`] line whose sync the caller overlaps
    /// with other work; needs no lock, since whoever appended after it only adds data.
    pub fn sync(&mut self) -> Result<(), AuditError> {
        let werr = |op: &'static str, source| AuditError::Write {
            op,
            path: self.path.clone(),
            source,
        };
        crate::sys::fs::fdatasync(self.file.as_fd()).map_err(|e| werr("syncing", e))?;
        if self.created {
            rotate::sync_dir(&self.path).map_err(|e| werr("syncing the directory of", e))?;
            self.created = false;
        }
        Ok(())
    }

    /// Takes the lock on the file that is at `path` now: a rotation may have renamed the file
    /// this handle holds, and a lock on the rotated file serializes nothing.
    fn lock_current(&mut self) -> Result<(), AuditError> {
        let werr = |op: &'static str, path: &Path, source| AuditError::Write {
            op,
            path: path.to_owned(),
            source,
        };
        for _ in 0..MAX_REOPEN {
            crate::sys::lock::lock_exclusive(self.file.as_fd())
                .map_err(|e| werr("locking", &self.path, e))?;
            let held = self
                .file
                .metadata()
                .map_err(|e| werr("inspecting", &self.path, e))?;
            match self.path.symlink_metadata() {
                Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(werr("inspecting", &self.path, e)),
            }
            let _ = crate::sys::lock::unlock(self.file.as_fd());
            // Reopened after a rotation: whoever created the new file, its directory entry
            // must be durable before a synced line in it counts as written.
            let (file, _) = open_log(&self.path)?;
            self.file = file;
            self.created = true;
        }
        Err(AuditError::Unstable {
            path: self.path.clone(),
        })
    }

    fn append_locked(
        &mut self,
        event: &str,
        ids: &RunIds,
        fields: &Value,
        durability: Durability,
    ) -> Result<Step, AuditError> {
        let tail = chain::read_tail(&self.file, &self.path)?;
        // A full file is rotated before the line is written; never one ending in a fragment,
        // which is sealed here first so no rotated file ends torn.
        if let Some(last) = &tail.last {
            if self.rotate_bytes > 0 && tail.size >= self.rotate_bytes && tail.torn.is_none() {
                // The blocks reserved beyond its end go (truncating to its own size frees
                // them): nothing will be appended to a rotated file.
                if tail.allocated > tail.size {
                    let _ = self.file.set_len(tail.size);
                }
                rotate::rotate(&self.path, last.seq)?;
                return Ok(Step::Rotated);
            }
        }
        let (seq, prev) = match tail.last {
            Some(last) => (last.seq + 1, last.hash),
            None => self.previous_file_tail()?,
        };
        let link = Link {
            seq,
            prev,
            torn: tail.torn,
        };
        // The time is taken under the lock, so it never goes backwards along the chain.
        let now = OffsetDateTime::now_utc();
        let line = encode_line(now, &self.host, event, ids, fields.clone(), &link)?;
        let mut buf = Vec::with_capacity(line.len() + 1);
        if tail.torn.is_some() {
            buf.push(b'\n');
        }
        buf.extend_from_slice(line.as_bytes());
        let werr = |op: &'static str, source| AuditError::Write {
            op,
            path: self.path.clone(),
            source,
        };
        // Blocks are reserved ahead of the appends (the size, all that readers go by, stays
        // as it is): the fdatasync of a line then has no block allocation to commit, which
        // made each synced line about 0.08 ms faster here (ext4). Best effort: a file
        // system without fallocate, or a full one, leaves the write to allocate (or to fail,
        // with its own error).
        if tail.allocated < tail.size + RESERVE_LOW_BYTES {
            let _ = crate::sys::fs::reserve_blocks(self.file.as_fd(), tail.size, RESERVE_BYTES);
        }
        // One write(2) for the whole line (and the seal): under the lock nobody else writes,
        // and a short write is an error; its fragment is sealed by the next append.
        let n =
            crate::sys::fs::write_once(self.file.as_fd(), &buf).map_err(|e| werr("writing", e))?;
        if n != buf.len() {
            let why = format!("only {n} of {} bytes written (disk full?)", buf.len());
            return Err(werr(
                "writing",
                io::Error::new(io::ErrorKind::WriteZero, why),
            ));
        }
        if durability == Durability::Synced {
            self.sync()?;
        }
        let text = line.strip_suffix('\n').unwrap_or(&line);
        Ok(Step::Written(Appended {
            seq,
            hash: chain::line_hash(text.as_bytes()),
        }))
    }

    /// The chain position to continue from when the current file has no complete line: the
    /// last line of the newest rotated file, or the genesis of a new chain.
    fn previous_file_tail(&self) -> Result<(u64, String), AuditError> {
        let Some((_, newest)) = rotate::rotated_files(&self.path)?.pop() else {
            return Ok((1, GENESIS.to_owned()));
        };
        let file = File::open(&newest).map_err(|source| AuditError::Open {
            op: "opening the rotated",
            path: newest.clone(),
            source,
        })?;
        match chain::read_tail(&file, &newest)?.last {
            Some(last) => Ok((last.seq + 1, last.hash)),
            None => Err(AuditError::Tail {
                path: newest,
                why: "the newest rotated file holds no complete line".to_owned(),
            }),
        }
    }
}

/// Opens the log for appending, creating it (0600) when missing; says whether it created it.
fn open_log(path: &Path) -> Result<(File, bool), AuditError> {
    let open = |create: bool| {
        // Read too: the tail is read through the same descriptor that is locked.
        OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(create)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
    };
    let oerr = |source| AuditError::Open {
        op: "opening",
        path: path.to_owned(),
        source,
    };
    match open(false) {
        Ok(f) => Ok((f, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match open(true) {
            Ok(f) => Ok((f, true)),
            // Another process created it in between.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                open(false).map(|f| (f, false)).map_err(oerr)
            }
            Err(e) => Err(oerr(e)),
        },
        Err(e) => Err(oerr(e)),
    }
}

/// Builds one JSON line (with its newline). Pure, for tests.
pub fn encode_line(
    now: OffsetDateTime,
    host: &str,
    event: &str,
    ids: &RunIds,
    fields: Value,
    link: &Link,
) -> Result<String, AuditError> {
    let enc = |source| AuditError::Encode {
        event: event.to_owned(),
        source,
    };
    let mut obj = Map::new();
    obj.insert("seq".into(), Value::from(link.seq));
    obj.insert("prev".into(), Value::String(link.prev.clone()));
    if let Some(t) = link.torn {
        obj.insert(
            "torn_tail".into(),
            serde_json::json!({"offset": t.offset, "bytes": t.bytes}),
        );
    }
    obj.insert(
        "time".into(),
        Value::String(now.format(&Rfc3339).unwrap_or_default()),
    );
    obj.insert("host".into(), Value::String(host.to_owned()));
    obj.insert("event".into(), Value::String(event.to_owned()));
    obj.insert("run_id".into(), Value::String(ids.run_id.clone()));
    obj.insert(
        "lease_id".into(),
        ids.lease_id.clone().map_or(Value::Null, Value::String),
    );
    obj.insert(
        "intent_id".into(),
        ids.intent_id.clone().map_or(Value::Null, Value::String),
    );
    if let Value::Object(extra) = fields {
        for (k, v) in extra {
            // The common and chain keys above are authoritative; a field cannot overwrite them.
            obj.entry(k).or_insert(v);
        }
    }
    let mut line = serde_json::to_string(&Value::Object(obj)).map_err(enc)?;
    line.push('\n');
    Ok(line)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_single_json_objects_with_common_keys() {
        let ids = RunIds {
            run_id: "RUN-1".into(),
            lease_id: Some("LEASE-x".into()),
            intent_id: None,
        };
        let line = encode_line(
            OffsetDateTime::UNIX_EPOCH,
            "h",
            names::EXEC_STARTED,
            &ids,
            serde_json::json!({"argv": ["a\nb"], "event": "forged", "seq": 9}),
            &Link {
                seq: 1,
                prev: GENESIS.into(),
                torn: None,
            },
        )
        .unwrap();
        assert!(line.ends_with('\n'));
        assert_eq!(
            line.matches('\n').count(),
            1,
            "embedded newlines must be escaped"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], names::EXEC_STARTED);
        assert_eq!(v["lease_id"], "LEASE-x");
        assert_eq!(v["intent_id"], Value::Null);
        assert_eq!(v["time"], "1970-01-01T00:00:00Z");
        assert_eq!(v["argv"][0], "a\nb");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["prev"], GENESIS);
        assert!(v.get("torn_tail").is_none());
    }

    #[test]
    fn append_adds_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let mut log = AuditLog::open(&path, "h".into()).unwrap();
        let ids = RunIds::default();
        log.append(
            names::LEASE_REJECTED,
            &ids,
            serde_json::json!({"reason": "x"}),
            Durability::Synced,
        )
        .unwrap();
        log.append(
            names::EXEC_FINISHED,
            &ids,
            Value::Null,
            Durability::Buffered,
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
